"""End-to-end checks of the trained-LSA apps and the main job, each in its own process.

Each app's smoke preset must write a complete results.json whose claims all hold (a smoke run
is small, but every claim's tolerance is fixed in its config, so a wrong model, closed form or
sampler fails here); bad input must stop before any work with one line, exit 2, and leave
earlier results untouched; a training app killed with SIGKILL must resume to the same numbers.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, app_cmd, app_env

APPS = ('gradient_flow', 'prediction_error', 'distribution_shift', 'random_covariance')
RESULT_KEYS = {'experiment', 'paper', 'reproduces', 'config', 'metrics', 'claims', 'figures',
               'runtime_s', 'versions'}
# Names outside checks rely on (the interface list).
ARRAYS = {
    'gradient_flow': {'w_kq', 'w_pv', 'loss'},
    'random_covariance': {'w_kq', 'w_pv', 'loss'},
    'prediction_error': {'m_values', 'error_theory', 'error_mc', 'error_mc_stderr'},
    'distribution_shift': set(),
}


def _cmd(app, workdir, *overrides, preset='smoke'):
  return app_cmd(f'trained_lsa/{app}', workdir, *overrides, preset=preset)


def _run(app, workdir, *overrides, preset='smoke', timeout=600):
  return subprocess.run(_cmd(app, workdir, *overrides, preset=preset), cwd=ROOT, env=app_env(),
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('app', APPS)
def test_smoke_preset_writes_results_whose_claims_hold(app, smoke_run):
  proc, tmp_path = smoke_run(f'trained_lsa/{app}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'results.json') as f:
    res = json.load(f)
  assert RESULT_KEYS <= set(res)
  assert res['experiment'] == f'trained_lsa/{app}'
  assert res['claims'], 'an experiment must check at least one claim'
  failing = [c for c in res['claims'] if not c['holds']]
  assert not failing, failing
  for c in res['claims']:
    assert {'claim', 'measured', 'expected', 'tolerance', 'holds'} <= set(c)
  for fig in res['figures']:
    assert (tmp_path / fig).stat().st_size > 1000
  with np.load(tmp_path / 'arrays.npz') as arrays:
    assert ARRAYS[app] <= set(arrays.files)
    for name in arrays.files:
      if np.issubdtype(arrays[name].dtype, np.number):
        assert np.all(np.isfinite(arrays[name])), name
    if app in ('gradient_flow', 'random_covariance'):
      d = res['config']['d']
      assert arrays['w_kq'].shape == arrays['w_pv'].shape == (d + 1, d + 1)
    if app == 'prediction_error':
      m = len(res['config']['m_values'])
      for name in ('m_values', 'error_theory', 'error_mc', 'error_mc_stderr'):
        assert arrays[name].shape == (m,)


BAD_INPUTS = [
    ('gradient_flow', ['--config.d=0'], 'config.d'),
    ('gradient_flow', ['--config.n_context=-3'], 'config.n_context'),
    ('gradient_flow', ['--config.covariance_diag=(1.0, 2.0)'], 'config.covariance_diag'),
    ('gradient_flow', ['--config.covariance_diag=(1.0, -2.0, 1.0)'], 'config.covariance_diag'),
    ('gradient_flow', ['--config.train.loss=adam'], 'config.train.loss'),
    ('gradient_flow', ['--config.nonexistent=1'], 'nonexistent'),
    ('prediction_error', ['--config.m_values=(10, 0)'], 'config.m_values'),
    ('random_covariance', ['--config.covariance_law=cauchy'], 'config.covariance_law'),
    ('random_covariance', ['--config.covariance_scale=0.0'], 'config.covariance_scale'),
    ('distribution_shift', ['--config.task.m_nonlinear=0'], 'config.task.m_nonlinear'),
]


@pytest.mark.parametrize('app,overrides,field', BAD_INPUTS)
def test_bad_input_stops_with_one_line_and_touches_nothing(app, overrides, field, tmp_path):
  earlier = tmp_path / 'results.json'
  earlier.write_text(json.dumps({'experiment': f'trained_lsa/{app}', 'marker': 'earlier'}))
  before = earlier.read_bytes()
  proc = _run(app, tmp_path, *overrides, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(lines) == 1 and field in lines[0], proc.stderr[-2000:]
  assert earlier.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ['results.json']


def test_unknown_preset_is_one_line(tmp_path):
  proc = _run('gradient_flow', tmp_path, preset='bogus', timeout=120)
  assert proc.returncode == 2
  assert 'unknown preset' in proc.stderr and 'smoke, quick, paper' in proc.stderr
  assert not os.listdir(tmp_path)


def test_workdir_of_another_experiment_is_refused(tmp_path):
  earlier = tmp_path / 'results.json'
  earlier.write_text(json.dumps({'experiment': 'trained_lsa/prediction_error'}))
  before = earlier.read_bytes()
  proc = _run('gradient_flow', tmp_path, timeout=120)
  assert proc.returncode == 2
  assert 'trained_lsa/prediction_error' in proc.stderr
  assert earlier.read_bytes() == before


# A run that cannot converge early (grad_tol below float32 rounding) so it goes to the step cap
# through many checkpoints; killed with SIGKILL once a checkpoint exists, then rerun.
_LONG = ['--config.train.grad_tol=1e-12', '--config.train.max_steps=12000',
         '--config.train.log_every=500', '--config.train.ckpt_every=1000']


def test_sigkill_then_rerun_gives_the_same_numbers(tmp_path):
  whole, killed = tmp_path / 'whole', tmp_path / 'killed'
  proc = subprocess.Popen(_cmd('gradient_flow', killed, *_LONG), cwd=ROOT, env=app_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = killed / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
      break
    time.sleep(0.2)
  if proc.poll() is not None:
    pytest.fail('the run ended before it could be killed; make it longer')
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'results.json').exists()
  resumed = _run('gradient_flow', killed, *_LONG)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from checkpoint' in resumed.stderr
  full = _run('gradient_flow', whole, *_LONG)
  assert full.returncode == 0, full.stderr[-3000:]
  with np.load(whole / 'arrays.npz') as a, np.load(killed / 'arrays.npz') as b:
    for name in ('w_kq', 'w_pv', 'loss'):
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_reproduce_runs_a_subset_and_writes_the_report(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.reproduce', '--only=trained_lsa/gradient_flow',
       '--preset=smoke', f'--out={tmp_path}'], cwd=ROOT, env=app_env(), capture_output=True,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = (tmp_path / 'REPORT.md').read_text()
  assert 'gradient_flow' in report and '| claim | expected | measured |' in report
  assert 'prediction_error' not in report
  assert (tmp_path / 'trained_lsa' / 'gradient_flow' / 'results.json').exists()


def test_reproduce_rejects_unknown_names(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'experiments.reproduce', '--only=nope',
                         f'--out={tmp_path}'], cwd=ROOT, env=app_env(), capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  assert "unknown 'nope'" in proc.stderr
