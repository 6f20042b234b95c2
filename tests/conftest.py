"""Test setup: 8 simulated CPU devices and strict rank promotion (STYLE.md section 5).

XLA_FLAGS must be set before jax is first imported, which is why it happens at the top of
conftest (pytest imports conftest before any test module).

Tests, their app subprocesses and the notebook kernel compile with LLVM's optimisation level 0
(COMPILE_FLAGS): the same HLO programs, machine code that is built faster and runs slower. Test
sizes are small, so compilation dominates: it cut a functional_gd smoke run from 23 to 14 s of
CPU. Speed is measured by the benchmarks, which run as users run them (no such flag).
"""

import os

COMPILE_FLAGS = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), COMPILE_FLAGS,
                                    '--xla_force_host_platform_device_count=8']).strip()

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import pytest  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')
# The persistent compilation cache the apps use (experiments.common.CACHE_DIR): programs compiled
# by one test process or app subprocess are loaded by the next.
jax.config.update('jax_compilation_cache_dir', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.jax_cache'))


# --- one smoke run per app and test process, shared by the app-level tests -------------

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from experiments.common import ConfigError  # noqa: E402
from icl_jax import distributed, training  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def app_env() -> dict:
  """The environment of an app run as a user runs it: one CPU device, the repo importable
  (and COMPILE_FLAGS, see above)."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = COMPILE_FLAGS
  env['PYTHONPATH'] = ROOT
  return env


def app_cmd(app: str, workdir, *overrides, preset: str = 'smoke') -> list:
  paper, name = app.split('/')
  return [sys.executable, '-m', f'experiments.{paper}.{name}',
          f'--config=experiments/{paper}/configs/{name}.py:{preset}', f'--workdir={workdir}',
          *overrides]


def assert_bad_input_stops(app: str, tmp_path, field: str, *overrides: str) -> None:
  """The app, run on bad overrides into a workdir that holds an earlier results.json, exits 2
  with one `error:` line naming `field`, before any work and leaving that result untouched."""
  earlier = tmp_path / 'results.json'
  earlier.write_text(json.dumps({'experiment': app, 'marker': 'earlier'}))
  before = earlier.read_bytes()
  proc = subprocess.run(app_cmd(app, tmp_path, *overrides), cwd=ROOT, env=app_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(lines) == 1 and field in lines[0], proc.stderr[-2000:]
  assert earlier.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['results.json']


def assert_validate_names(validate, config, overrides: dict, field: str) -> None:
  """validate(config with the dotted overrides set) raises ConfigError whose message contains
  `field` word for word (no regex: a field such as 'config.models[1]' is matched as written)."""
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ConfigError, match=re.escape(field)):
    validate(config)


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory):
  """smoke_run('trained_lsa/gradient_flow') -> (CompletedProcess, workdir) of its smoke preset.

  Run once per test process and shared by the tests it runs (apps_test, mutation_test and
  multiprocess_test). make test runs pytest with --dist loadfile: each file's tests on one
  worker, so module fixtures (the notebook, the theory module's Monte Carlo) run once.
  (--dist loadgroup with xdist_group marks did not group anything with pytest-xdist 3.8.0.)
  """
  cache = {}

  def get(app: str):
    if app not in cache:
      workdir = tmp_path_factory.mktemp(app.replace('/', '_'))
      proc = subprocess.run(app_cmd(app, workdir), cwd=ROOT, env=app_env(), capture_output=True,
                            text=True, timeout=600)
      cache[app] = (proc, workdir)
    return cache[app]

  return get


# --- data parallelism: what an app hands to training.fit and distributed.shard_batch ------------

class FitRecorder:
  """Stands in for training.fit (monkeypatch it): records the mesh and traces one step's loss,
  calling sample_fn as fit does, with nothing compiled or run; then raises FitRecorder.Stop, so
  the caller's code after fit does not run on a training that never happened."""

  class Stop(Exception):
    pass

  def __init__(self):
    self.mesh = 'not called'

  def __call__(self, loss_fn, params, optimizer, *, key, mesh=None, pass_step=False,
               sample_fn=None, **_):
    self.mesh = mesh

    def step(p):
      batch = sample_fn(key) if sample_fn is not None else key
      return loss_fn(p, batch, 0) if pass_step else loss_fn(p, batch)

    jax.eval_shape(step, params)
    raise FitRecorder.Stop


def record_shard_batch(monkeypatch) -> list:
  """Wraps distributed.shard_batch for the test: returns the list of the meshes it is called
  with (at trace time)."""
  meshes, shard = [], distributed.shard_batch

  def record(batch, mesh, axis=0):
    meshes.append(mesh)
    return shard(batch, mesh, axis)

  monkeypatch.setattr(distributed, 'shard_batch', record)
  return meshes


def assert_trains_on_mesh(train, tmp_path, monkeypatch) -> None:
  """train(workdir, mesh), with training.fit recorded (`FitRecorder`), hands the mesh to fit and
  passes every batch its loss reads through distributed.shard_batch with that mesh."""
  meshes, fit = record_shard_batch(monkeypatch), FitRecorder()
  monkeypatch.setattr(training, 'fit', fit)
  mesh = distributed.data_mesh()
  with pytest.raises(FitRecorder.Stop):
    train(tmp_path, mesh)
  assert fit.mesh is mesh, 'training.fit did not get the mesh'
  assert meshes and all(m is mesh for m in meshes), 'the batches are not split over the mesh'
