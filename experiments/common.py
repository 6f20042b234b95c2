"""What every experiment app shares: config checks, the absl entry point, quiet orbax logs.

An app module defines `validate(config)` (raises `ConfigError`) and
`run(config, workdir) -> results.Run` (metrics, claims, arrays, figures), and ends with

  if __name__ == '__main__':
    common.run_app('trained_lsa/gradient_flow', validate, run, paper=..., reproduces='Thm 4')

`run_app` defines the `--config` and `--workdir` flags, and its main rejects extra argv, checks
the config before any work (one line on stderr, exit 2), joins a multi-process run when
`config.distributed` asks for one, claims the workdir, times `run`, writes the results from
process 0 only (`distributed.is_writer`), and logs the claims.
"""

import logging as py_logging
import math
import os
import sys
import time
from typing import Callable, Iterable

import jax
from absl import flags, logging
from ml_collections import config_dict, config_flags

from icl_jax import distributed, results

PRESETS = ('smoke', 'quick', 'paper')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(REPO, '.jax_cache')   # git-ignored


def enable_compilation_cache() -> None:
  """JAX's persistent compilation cache in <repo>/.jax_cache, unless the environment names one.

  XLA compilation is most of a smoke or quick run's time on a CPU; reruns (a resumed run, the
  tests, `reproduce` after a smoke run) then load their programs instead of compiling them.
  """
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  if os.access(REPO, os.W_OK):
    jax.config.update('jax_compilation_cache_dir', CACHE_DIR)


class ConfigError(ValueError):
  """A config field has a value the experiment cannot run with."""


def get_preset(arg, base: Callable[[], config_dict.ConfigDict], overrides: dict):
  """The preset named arg ('smoke' | 'quick' | 'paper'; None means quick) as a ConfigDict."""
  preset = 'quick' if arg in (None, '') else arg
  if preset not in overrides:
    raise ValueError(f'unknown preset {preset!r}; allowed: {", ".join(overrides)}')
  config = base()
  config.preset = preset
  config.update_from_flattened_dict(overrides[preset])
  return config


# --- field checks: each raises ConfigError naming the field and the allowed values -----------

def positive_int(config, field: str) -> None:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f'config.{field}={value!r}: must be a positive integer')


def positive_float(config, field: str) -> None:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
      or not math.isfinite(value):
    raise ConfigError(f'config.{field}={value!r}: must be a positive number')


def positive_ints(config, field: str, min_len: int = 1) -> None:
  values = _get(config, field)
  if (not isinstance(values, (tuple, list)) or len(values) < min_len
      or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values)):
    raise ConfigError(f'config.{field}={values!r}: must be a tuple of at least {min_len} '
                      'positive integers')


def positive_floats(config, field: str, min_len: int = 1) -> None:
  values = _get(config, field)
  if (not isinstance(values, (tuple, list)) or len(values) < min_len
      or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
             or not math.isfinite(v) for v in values)):
    raise ConfigError(f'config.{field}={values!r}: must be a tuple of at least {min_len} '
                      'positive numbers')


def covariance_diag(config, field: str, d: int) -> None:
  values = _get(config, field)
  if (not isinstance(values, (tuple, list)) or len(values) != d
      or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
             or not math.isfinite(v) for v in values)):
    raise ConfigError(f'config.{field}={values!r}: must be a tuple of d={d} positive numbers '
                      '(the diagonal of Lambda)')


def one_of(config, field: str, allowed: Iterable[str]) -> None:
  allowed = tuple(allowed)
  value = _get(config, field)
  if value not in allowed:
    raise ConfigError(f'config.{field}={value!r}: must be one of {", ".join(map(str, allowed))}')


def multiple_of(config, field: str, of_field: str) -> None:
  value, of = _get(config, field), _get(config, of_field)
  if value % of:
    raise ConfigError(f'config.{field}={value}: must be a multiple of config.{of_field}={of}')


def multiple_of_devices(config, field: str) -> None:
  """A batch sharded over every device (`distributed.shard_batch`) must split evenly."""
  value, devices = _get(config, field), jax.device_count()
  if value % devices:
    raise ConfigError(f'config.{field}={value}: must be a multiple of the device count {devices}')


def _get(config, field: str):
  node = config
  for part in field.split('.'):
    node = node[part]
  return node


# --- app entry point ---------------------------------------------------------------------------

class _DropOrbaxInfo(py_logging.Filter):
  """Orbax logs several INFO lines per save; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or 'orbax' not in record.pathname


def quiet_orbax() -> None:
  for handler in py_logging.getLogger().handlers + py_logging.getLogger('absl').handlers:
    handler.addFilter(_DropOrbaxInfo())
  py_logging.getLogger('absl').addFilter(_DropOrbaxInfo())


def validate_distributed(config) -> None:
  """config.distributed: num_processes >= 1, 0 <= process_id < num_processes, 'host:port'."""
  dist = config.distributed
  if dist.num_processes is not None and (isinstance(dist.num_processes, bool)
                                         or dist.num_processes < 1):
    raise ConfigError(f'config.distributed.num_processes={dist.num_processes!r}: must be a '
                      'positive integer (or unset: auto-detect)')
  if dist.process_id is not None:
    limit = dist.num_processes
    if dist.process_id < 0 or (limit is not None and dist.process_id >= limit):
      raise ConfigError(f'config.distributed.process_id={dist.process_id!r}: must be in '
                        f'0..num_processes-1' + (f' = 0..{limit - 1}' if limit else ''))
  address = dist.coordinator_address
  if address is not None:
    host, _, port = address.rpartition(':')   # rpartition: an IPv6 host '[::1]' has colons
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ConfigError(f'config.distributed.coordinator_address={address!r}: must be host:port '
                        '(port 1..65535), e.g. 10.0.0.1:8476')


def _log_claims(experiment: str, claims, runtime_s: float, workdir: str) -> None:
  failed = [c for c in claims if not c.holds]
  for c in claims:
    logging.info('[%s] %s: measured %.6g, expected %.6g (tol %.3g, %s)',
                 'holds' if c.holds else 'FAILS', c.claim, c.measured, c.expected, c.tolerance,
                 c.mode)
  logging.info('%s done in %.1f s: %d/%d claims hold; results in %s', experiment, runtime_s,
               len(claims) - len(failed), len(claims), workdir)


def main_for(experiment: str, validate: Callable, run: Callable, config_flag, workdir_flag, *,
             paper: str, reproduces: str):
  """Builds the absl main of an app (see the module docstring)."""

  def main(argv):
    if len(argv) > 1:
      raise SystemExit(f'unexpected arguments: {" ".join(argv[1:])}')
    config, workdir = config_flag.value, workdir_flag.value
    try:
      validate_distributed(config)
    except ConfigError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    # Before any JAX computation (validate may run some), as jax.distributed requires.
    try:
      distributed.initialize(**config.distributed)
    except ValueError as e:   # e.g. no coordinator_address and nothing to auto-detect it from
      print(f'error: config.distributed={config.distributed.to_dict()}: cannot join the '
            f'multi-process run: {e}', file=sys.stderr)
      sys.exit(2)
    enable_compilation_cache()
    try:
      validate(config)
      results.check_workdir(workdir, experiment)
    except (ConfigError, results.WorkdirError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    writer = distributed.is_writer()
    if writer:
      results.mark_workdir(workdir, experiment)
    quiet_orbax()
    start = time.time()
    out = run(config, workdir)
    runtime_s = time.time() - start
    if writer:
      results.write_run(workdir, experiment=experiment, paper=paper, reproduces=reproduces,
                        config=config.to_dict(), run=out, runtime_s=runtime_s)
    else:
      results.close_figures(out.figures)
    _log_claims(experiment, out.claims, runtime_s, workdir)

  return main


def run_app(experiment: str, validate: Callable, run: Callable, *, paper: str,
            reproduces: str) -> None:
  """Defines --config (default: the quick preset) and --workdir, then runs the app's main.

  Flags are defined here, when the app runs as __main__, not at import: tests and notebooks
  import several apps into one process.
  """
  group, name = experiment.split('/')
  config_flag = config_flags.DEFINE_config_file(
      'config', f'experiments/{group}/configs/{name}.py:quick', lock_config=True)
  workdir_flag = flags.DEFINE_string('workdir', None, 'output directory', required=True)
  main = main_for(experiment, validate, run, config_flag, workdir_flag, paper=paper,
                  reproduces=reproduces)
  from absl import app
  app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv):
  """absl flag parsing, with config-file and override errors reduced to one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:
    # lock_config: an override of a field the config does not have.
    field = str(e.args[0]).strip('"\'') if e.args else '?'
    print(f'error: unknown config field {field!r}; the config file lists the fields',
          file=sys.stderr)
  except Exception as e:  # noqa: BLE001 - any parse failure is a bad-input exit, reported
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    print(f'error: {lines[-1] if lines else type(e).__name__}', file=sys.stderr)
  sys.exit(2)


def base_config() -> config_dict.ConfigDict:
  """Fields every experiment has."""
  config = config_dict.ConfigDict()
  config.preset = 'quick'
  config.seed = 0
  # Multi-process runs (TPU pods, several GPU hosts): see distributed.initialize. Unset fields
  # are auto-detected by jax.distributed when multihost is True.
  config.distributed = config_dict.ConfigDict({
      'multihost': False,                                   # join a multi-process run
      'coordinator_address': config_dict.placeholder(str),  # 'host:port' of process 0
      'num_processes': config_dict.placeholder(int),        # processes in the run
      'process_id': config_dict.placeholder(int),           # this process, 0..num_processes-1
  })
  return config


def jax_key(config) -> jax.Array:
  return jax.random.key(config.seed)
