"""What every experiment app shares: config checks, the absl entry point, quiet orbax logs.

An app defines `run(config, workdir) -> results dict` and `validate(config)`; `main_for`
builds its absl main: reject extra argv, validate the config before any work (one line on
stderr, exit 2), claim the workdir, log devices, run, log the claims.
"""

import logging as py_logging
import math
import sys
import time
from typing import Callable, Iterable

import jax
from absl import logging
from ml_collections import config_dict

from icl_jax import distributed, results

PRESETS = ('smoke', 'quick', 'paper')


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


def main_for(experiment: str, validate: Callable, run: Callable, config_flag, workdir_flag):
  """Builds the absl main of an app."""

  def main(argv):
    if len(argv) > 1:
      raise SystemExit(f'unexpected arguments: {" ".join(argv[1:])}')
    config, workdir = config_flag.value, workdir_flag.value
    try:
      validate(config)
      results.prepare_workdir(workdir, experiment)
    except (ConfigError, results.WorkdirError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    quiet_orbax()
    distributed.maybe_initialize_multihost(config.distributed.multihost)
    start = time.time()
    out = run(config, workdir)
    failed = [c for c in out['claims'] if not c['holds']]
    for c in out['claims']:
      logging.info('[%s] %s: measured %.6g, expected %.6g (tol %.3g, %s)',
                   'holds' if c['holds'] else 'FAILS', c['claim'], c['measured'], c['expected'],
                   c['tolerance'], c['mode'])
    logging.info('%s done in %.1f s: %d/%d claims hold; results in %s', experiment,
                 time.time() - start, len(out['claims']) - len(failed), len(out['claims']),
                 workdir)

  return main


def _parse_flags(argv):
  """absl flag parsing, with config-file and override errors reduced to one line, exit 2."""
  from absl import flags
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


def run_app(main) -> None:
  """absl's app.run with one-line errors for bad flags and config overrides."""
  from absl import app
  app.run(main, flags_parser=_parse_flags)


def timer():
  start = time.time()
  return lambda: time.time() - start


def base_config() -> config_dict.ConfigDict:
  """Fields every experiment has."""
  config = config_dict.ConfigDict()
  config.preset = 'quick'
  config.seed = 0
  config.distributed = config_dict.ConfigDict({'multihost': False})
  return config


def jax_key(config) -> jax.Array:
  return jax.random.key(config.seed)
