"""Two JAX processes on this machine, as on a pod: jax.distributed on localhost, CPU collectives.

Each process gets JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo and JAX_NUM_CPU_DEVICES=2 (4 global
devices) and conftest's COMPILE_FLAGS as its only XLA_FLAGS (conftest forces 8 devices on the
test process itself). Checks:
an app's smoke preset run as two processes into one workdir matches the one-process run, and
`training.fit` checkpoints and resumes through orbax's multi-process path.

Run as a script (`python tests/multiprocess_test.py fit WORKDIR OUT`), this file is the worker
of the fit test.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES = 2
TIMEOUT_S = 300   # a normal run takes ~100 s here under load 10; a hang fails sooner
APP = 'trained_lsa/gradient_flow'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env() -> dict:
  from conftest import COMPILE_FLAGS  # noqa: PLC0415  (the test process's; not in the worker)
  env = dict(os.environ)
  env['XLA_FLAGS'] = COMPILE_FLAGS   # as the test process compiles: results compared bitwise
  env.update(PYTHONPATH=ROOT, JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo', JAX_NUM_CPU_DEVICES='2',
             JAX_PLATFORMS='cpu')
  return env


def _run_processes(cmd_for, log_dir) -> list:
  """Starts cmd_for(port, i) for i < NUM_PROCESSES at once; (returncode, log) of each.

  Each process logs to a file in log_dir, not a pipe: a pipe read only after the other process
  ends fills up (64 KiB) and blocks its writer, and the peer then waits in a collective forever.
  A process still running after TIMEOUT_S is killed (each by its own pid) and fails the test.
  """
  port = _free_port()
  paths = [os.path.join(log_dir, f'process_{i}.log') for i in range(NUM_PROCESSES)]
  procs = []
  for i, path in enumerate(paths):
    with open(path, 'w') as log:
      procs.append(subprocess.Popen(cmd_for(port, i), cwd=ROOT, env=_env(), stdout=log,
                                    stderr=subprocess.STDOUT))
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
      p.wait()
    pytest.fail(f'{NUM_PROCESSES} processes did not finish in {TIMEOUT_S} s; logs: {paths}')
  out = []
  for p, path in zip(procs, paths):
    with open(path) as f:
      out.append((p.returncode, f.read()))
  return out


def _distributed_flags(port: int, i: int) -> list:
  return [f'--config.distributed.coordinator_address=localhost:{port}',
          f'--config.distributed.num_processes={NUM_PROCESSES}',
          f'--config.distributed.process_id={i}']


def test_app_as_two_processes_matches_one_process(smoke_run, tmp_path):
  """The gradient_flow smoke preset as 2 processes x 2 CPU devices, into one shared workdir:
  both exit 0, process 0 alone writes (the workdir holds exactly the files of a one-process
  run, one results.json, whose config records the 2 processes), and every claim measures what
  the one-process run measured and holds likewise, as does every entry of evidence.npz.

  Tolerance rtol 1e-4, atol 1e-6: identical numbers where the run is deterministic (exact-loss
  gradient flow), but a Monte-Carlo stage sharded over 4 devices instead of 1 sums its prompts
  in another order; float32 reordering moves a mean of O(1) terms by ~1e-7 relative, which an
  SGD path contracts rather than amplifies, and measured errors of ~1e-4 move by <= 1e-6
  absolutely. Fails if a process crashes or hangs (e.g. orbax refusing host-local arrays, a
  collective mismatch), if process 1 writes, or if the 4-device run computes anything else.
  """
  one_proc, one_dir = smoke_run(APP)
  assert one_proc.returncode == 0, one_proc.stderr[-3000:]
  workdir = tmp_path / 'two_processes'
  paper, name = APP.split('/')
  runs = _run_processes(lambda port, i: [
      sys.executable, '-m', f'experiments.{paper}.{name}',
      f'--config=experiments/{paper}/configs/{name}.py:smoke', f'--workdir={workdir}',
      *_distributed_flags(port, i)], tmp_path)
  for i, (rc, log) in enumerate(runs):
    assert rc == 0, f'process {i}:\n{log[-3000:]}'
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(one_dir))
  with open(workdir / 'results.json') as f:
    two = json.load(f)
  with open(one_dir / 'results.json') as f:
    one = json.load(f)
  assert two['config']['distributed']['num_processes'] == NUM_PROCESSES
  assert [c['claim'] for c in two['claims']] == [c['claim'] for c in one['claims']]
  for c2, c1 in zip(two['claims'], one['claims']):
    np.testing.assert_allclose(c2['measured'], c1['measured'], rtol=1e-4, atol=1e-6,
                               err_msg=c1['claim'])
    assert c2['holds'] == c1['holds'], c1['claim']
  if os.path.exists(one_dir / 'evidence.npz'):   # what the claims are built from, entry by entry
    with np.load(workdir / 'evidence.npz') as ev2, np.load(one_dir / 'evidence.npz') as ev1:
      assert sorted(ev2.files) == sorted(ev1.files)
      for k in ev1.files:
        np.testing.assert_allclose(ev2[k], ev1[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize('overrides,field', [
    (['--config.distributed.num_processes=2', '--config.distributed.process_id=2'],
     'config.distributed.process_id=2'),
    (['--config.distributed.coordinator_address=localhost'],
     'config.distributed.coordinator_address'),
    # Valid fields, but nothing to join: jax.distributed finds no coordinator to auto-detect.
    (['--config.distributed.num_processes=2', '--config.distributed.process_id=0'],
     'cannot join the multi-process run')])
def test_bad_distributed_config_is_one_line_exit_2(tmp_path, overrides, field):
  """Bad config.distributed values stop the app before any work: exit 2, one line on stderr
  naming the field, nothing written in the workdir."""
  paper, name = APP.split('/')
  env = _env()
  env.pop('JAX_NUM_CPU_DEVICES')
  proc = subprocess.run(
      [sys.executable, '-m', f'experiments.{paper}.{name}',
       f'--config=experiments/{paper}/configs/{name}.py:smoke', f'--workdir={tmp_path / "w"}',
       *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('error: ')]
  assert len(errors) == 1 and field in errors[0], proc.stderr[-2000:]
  assert not (tmp_path / 'w').exists()


# --- training.fit: checkpoint and resume through orbax's multi-process path -----------------------

FIT_DIM = 4096    # enough bytes that where orbax wrote the arrays is plain in the checkpoint
FIT_KW = dict(log_every=5, ckpt_every=10)
FIT_OPT_LR = 0.05


def _fit_problem():
  import jax
  import jax.numpy as jnp
  import optax
  target = jnp.sin(jnp.arange(FIT_DIM, dtype=jnp.float32))

  def loss(params, key):   # depends on the step's key: a resume must restore the step
    noise = 0.3 * jax.random.normal(key, (FIT_DIM,))
    return jnp.mean(jnp.square(params - target - noise))
  return loss, jnp.zeros(FIT_DIM), optax.adam(FIT_OPT_LR), jax.random.key(3)


def _fit_worker(port: int, process_id: int, workdir: str, out: str) -> None:
  """One of two processes: fit 20 steps into workdir, then resume to 40; process 0 saves."""
  import jax
  sys.path.insert(0, ROOT)
  from icl_jax import distributed, training
  distributed.initialize(coordinator_address=f'localhost:{port}',
                         num_processes=NUM_PROCESSES, process_id=process_id)
  loss, p0, opt, key = _fit_problem()
  training.fit(loss, p0, opt, key=key, max_steps=20, workdir=workdir, **FIT_KW)
  params, hist = training.fit(loss, p0, opt, key=key, max_steps=40, workdir=workdir, **FIT_KW)
  if distributed.is_writer():
    np.savez(out, params=np.asarray(params), loss=hist.loss, trajectory=hist.trajectory,
             resumed_from=hist.resumed_from, devices=jax.device_count(),
             sharding=str(params.sharding))


def _dir_bytes(path) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_fit_checkpoints_and_resumes_across_two_processes(tmp_path):
  """2 processes fit 20 steps with checkpoints, then resume to 40 in the same workdir; the
  result equals an unbroken 40-step run in this one process, bit for bit (the same steps on the
  same float32 numbers; replication only repeats them on each device).

  Also checks how orbax saved: the state is one global array replicated over the 4 devices,
  and its bytes were written once in all, not once per process: orbax's replica-parallel save
  splits each replicated array between the processes holding replicas, so the two processes'
  OCDBT stores together are the size of a one-process checkpoint of the same state (within 25%:
  slices compress separately), not twice it, and each holds a share. Fails if fit hands orbax
  host-local arrays (orbax raises in a multi-process run), if the resume loses the step, key or
  Adam state, or if every process writes the whole state.
  """
  from icl_jax import training
  workdir, out = tmp_path / 'fit', tmp_path / 'fit.npz'
  runs = _run_processes(lambda port, i: [sys.executable, os.path.abspath(__file__), 'fit',
                                         str(port), str(i), str(workdir), str(out)],
                        tmp_path)
  for i, (rc, log) in enumerate(runs):
    assert rc == 0, f'process {i}:\n{log[-3000:]}'
  with np.load(out) as got:
    assert int(got['devices']) == 4 and int(got['resumed_from']) == 20
    assert 'NamedSharding' in str(got['sharding']) and 'spec=P()' in str(got['sharding'])
    loss, p0, opt, key = _fit_problem()
    one_dir = tmp_path / 'one_process'
    params, hist = training.fit(loss, p0, opt, key=key, max_steps=40, workdir=str(one_dir),
                                **FIT_KW)
    np.testing.assert_array_equal(got['params'], params)
    np.testing.assert_array_equal(got['loss'], hist.loss)
    np.testing.assert_array_equal(got['trajectory'], hist.trajectory)
  one = _dir_bytes(os.path.join(one_dir, 'checkpoints', '40', 'default', 'ocdbt.process_0'))
  step = os.path.join(workdir, 'checkpoints', '40', 'default')
  shares = [_dir_bytes(os.path.join(step, f'ocdbt.process_{i}')) for i in range(NUM_PROCESSES)]
  assert one > 32 * 1024, one    # the state's arrays, not just manifests
  assert 0.75 * one < sum(shares) < 1.25 * one, (shares, one)
  assert min(shares) > 0.25 * one, (shares, one)


if __name__ == '__main__':
  if sys.argv[1:2] == ['fit']:
    _fit_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
  else:
    raise SystemExit(f'usage: {sys.argv[0]} fit PORT PROCESS_ID WORKDIR OUT')
