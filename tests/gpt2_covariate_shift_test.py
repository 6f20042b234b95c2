"""The GPT2 covariate-shift app (Zhang et al. Fig 1): its outputs, baselines, presets, bad input.

The smoke preset trains for seconds, so its claims are not expected to hold (the mutation test
checks the claim builder on evidence shaped like the smoke run's); the numbers checked here are
the ones that do not depend on training: the OLS and zero baselines and the eq. (23) line.
"""

import importlib
import json
import subprocess

import numpy as np
import pytest

from conftest import ROOT, app_cmd, app_env

APP = 'trained_lsa/gpt2_covariate_shift'
gcs = importlib.import_module('experiments.trained_lsa.gpt2_covariate_shift')
configs = importlib.import_module('experiments.trained_lsa.configs.gpt2_covariate_shift')


def test_smoke_writes_curves_bands_and_baselines(smoke_run):
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((workdir / 'results.json').read_text())
  assert res['config']['d'] == 3 and res['claims']
  arrays = np.load(workdir / 'arrays.npz')
  m = arrays['m_values']
  np.testing.assert_array_equal(m, [1, 3, 6, 9, 12])
  assert arrays['ols_error_identity'].shape == m.shape
  for name in ('fixed_N6_learned', 'random_N6_learned', 'fixed_N6_nope', 'random_N6_nope'):
    for dist in ('identity', 'random_c1', 'random_c4', 'random_c9'):
      curve, ci = arrays[f'error_{name}_{dist}'], arrays[f'error_{name}_{dist}_ci']
      assert curve.shape == m.shape and ci.shape == (m.size, 2)
      assert np.all(np.isfinite(curve)) and np.all(ci[:, 0] <= ci[:, 1])
  # Noiseless prompts: min-norm OLS is exact once M >= d = 3 (float64 solve of float32 labels:
  # ~1e-7 relative rounding amplified by cond(X) at M = d, 4e-11 seen), and for
  # M < d errs by E|(I - P)w|^2 / d = 1 - M/d on identity covariates; 64 prompts, so the M = 1
  # value is within ~5 stderr (stderr of a mean of 64 chi2_2/3-like terms ~0.1) of 2/3.
  ols = arrays['ols_error_identity']
  assert np.all(ols[m >= 3] < 1e-8)
  assert abs(ols[0] - 2.0 / 3.0) < 0.5
  for f in ('figure1.png', 'train_loss.png'):
    assert (workdir / f).stat().st_size > 10_000


def test_lsa_limit_line_equals_monte_carlo():
  """eq. (23)'s line: the LSA layer trained on Exp(1) covariances predicts, at N, M -> infinity,
  y_hat = x_q^T D Lambda w with D = (E L^2 / E L^3) I = I/3. Its normalised error on each test law
  by direct Monte Carlo (2^18 draws of Lambda, w, x_q) must equal the closed form within 5
  stderr. Fails on a wrong D (e.g. the fixed-covariance Gamma^-1 -> I), a test law without c or
  a normaliser other than E y^2 = c d."""
  config = configs.get_config('smoke')
  limits = gcs._lsa_limits(config)
  d, num = config.d, 1 << 18
  rng = np.random.default_rng(0)
  for name, c in gcs._dists(config).items():
    lam = np.ones((num, d)) if c is None else c * rng.exponential(size=(num, d))
    w = rng.normal(size=(num, d))
    xq = np.sqrt(lam) * rng.normal(size=(num, d))
    y = np.sum(xq * w, -1)
    err = np.square(np.sum(xq * lam * w, -1) / 3.0 - y) / (d * (1.0 if c is None else c))
    assert abs(err.mean() - limits[name]) < 5 * err.std() / np.sqrt(num), name


def test_paper_preset_runs_two_steps(tmp_path):
  """Appendix E's model (12 layers, width 256, 8 heads, d = 20, learned positions) and recipe
  (Adam 1e-4, curriculum) for 2 steps, so the paper preset never rots. For time: batch 8 (not
  64), one training length, NoPE left out, the evaluation 1 covariance x 2 prompts."""
  proc = subprocess.run(app_cmd(APP, tmp_path, '--config.train.max_steps=2',
                                '--config.train.log_every=1', '--config.train.ckpt_every=2',
                                '--config.n_train=(40,)', "--config.positions=('learned',)",
                                '--config.eval.m_values=(10, 40, 41)',
                                '--config.eval.num_covariances=1',
                                '--config.eval.prompts_per_covariance=2',
                                '--config.eval.bootstrap=10', '--config.train.batch_size=8',
                                preset='paper'),
                        cwd=ROOT, env=app_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((tmp_path / 'results.json').read_text())
  assert res['config']['model']['depth'] == 12 and res['config']['train']['curriculum']
  assert 'step 2/2' in proc.stderr


@pytest.mark.parametrize('overrides,field', [
    (["--config.positions=('rope',)"], 'config.positions'),
    (["--config.train_covariances=('fixed', 'fixed')"], 'config.train_covariances'),
    (['--config.model.heads=3'], 'config.model.width'),
    (['--config.eval.m_values=(1, 2)'], 'config.eval.m_values'),
    (['--config.eval.scales=(4.0,)'], 'config.eval.scales'),
])
def test_bad_input_is_one_line_exit_2(tmp_path, overrides, field):
  proc = subprocess.run(app_cmd(APP, tmp_path, *overrides), cwd=ROOT, env=app_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(lines) == 1 and field in lines[0], proc.stderr[-2000:]
  assert not (tmp_path / 'results.json').exists()
