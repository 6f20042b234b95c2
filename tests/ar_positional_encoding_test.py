"""The positional-encoding-only app (Sander et al. 2024, Prop 7, Fig 6): a smoke run whose claims
hold, its scores on matrices whose answer is known, every claim caught by a mutation of its
evidence, bad input.

One smoke run (conftest's session fixture `smoke_run`); the mutation cases feed the app's pure
claim builder `check` the smoke evidence with one entry made wrong (tests/mutation_test.py's
Case / times / _check / _matching).
"""

import functools
import importlib
import json

import numpy as np
import pytest

from conftest import assert_bad_input_stops, assert_validate_names
from mutation_test import Case, _check, assert_covered, assert_notices, times
from icl_jax import results

APP = 'autoregressive/positional_encoding'


def _module():
  return importlib.import_module('experiments.autoregressive.positional_encoding')


def _config(preset='smoke'):
  return importlib.import_module(
      'experiments.autoregressive.configs.positional_encoding').get_config(preset)


def _evidence(smoke_run) -> results.Evidence:
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return results.load_evidence(str(workdir))


# --- smoke run -----------------------------------------------------------------------------------

def test_smoke_writes_results_whose_claims_hold(smoke_run):
  """Fails if the smoke run exits non-zero, a claim fails, or results/arrays/figures are missing;
  or if arrays.npz `hessian` is not H of Prop 7, [len(mus), T, T] (the names outside checks
  read)."""
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((workdir / 'results.json').read_text())
  assert res['experiment'] == APP and res['claims'] and res['figures']
  failed = [c['claim'] for c in res['claims'] if not c['holds']]
  assert not failed, failed
  for name in res['figures']:
    assert (workdir / name).stat().st_size > 10_000, name
  config = _config()
  assert res['config']['t'] == config.t and tuple(res['config']['mus']) == tuple(config.mus)
  with np.load(workdir / 'arrays.npz') as arrays:
    hessian = arrays['hessian']
    assert hessian.shape == (len(config.mus), config.t, config.t)
    t = np.arange(config.t)
    for h, mu in zip(hessian, config.mus):   # Prop 7 as printed, H_tt = 1 (float64 NumPy)
      k = t[None, :] - t[:, None]
      with np.errstate(invalid='ignore', divide='ignore'):
        printed = np.where(k == 0, 1.0, mu / (4 * np.pi * k) * np.sin(4 * k * np.pi / mu))
      np.testing.assert_allclose(h, printed, atol=1e-13)
  assert (workdir / 'evidence.npz').exists() and (workdir / 'checkpoints').is_dir()


def test_each_mu_stays_where_it_first_went_below_the_threshold(smoke_run):
  """The per-mu early stop: from its stop step on, a mu's loss curve is flat (its P gets no
  gradient), and before it every point is above the threshold. Fails if a stopped mu keeps
  training (the masked gradient leaks) or the stop step is read off the wrong point."""
  config = _config()
  ev = _evidence(smoke_run)
  curve, steps = ev.measured['loss_curve'], ev.measured['curve_steps']
  thr = config.train.loss_threshold
  for i, stop in enumerate(ev.measured['stop_step']):
    after = curve[steps >= stop, i]
    assert after.size and np.all(after < thr) and np.ptp(after) == 0.0, i
    assert np.all(curve[steps < stop, i] >= thr), i
    assert after[0] == pytest.approx(ev.measured['train_loss'][i], rel=1e-5)


# --- scores on known matrices --------------------------------------------------------------------

def test_scores_on_known_matrices():
  """Toeplitz score 1 for a Toeplitz matrix and ~(#diagonals - 1) / (#entries - 1) for noise;
  a row-reversed Toeplitz P (absolute position) scores low; roughness 0 for linear rows, ~6 for
  white noise; the population loss is 0 at P* (P_{T-1,T} = 1) and equals theory.pe_total_loss
  averaged over T. Fails on a score that reads the wrong entries (e.g. the masked P_{T-1,T})."""
  import jax
  from icl_jax.theory import autoregressive as theory
  pe = _module()
  t = 30
  rng = np.random.default_rng(0)
  r, c = np.indices((t, t))
  toe = np.cos(0.3 * (r - c)) + 0.1 * (r - c)
  toe_masked_off = toe + 5.0 * np.eye(t, k=1) * rng.normal(size=(t, t))   # masked: no effect
  assert pe.toeplitz_score(toe) == pytest.approx(1.0, abs=1e-12)
  assert pe.toeplitz_score(toe_masked_off) == pytest.approx(1.0, abs=1e-12)
  mask = pe.used_mask(t)
  expected = (t - 2) / (mask.sum() - 1)
  noise = [pe.toeplitz_score(rng.normal(size=(t, t))) for _ in range(200)]
  assert np.mean(noise) == pytest.approx(expected, rel=0.1)
  reversed_ = np.where(mask, toe[r, np.clip(r - c, 0, t - 1)], 0.0)   # row r read backwards
  assert pe.toeplitz_score(reversed_) < 0.5
  assert pe.roughness(2.0 * c + r, 8) == pytest.approx(0.0, abs=1e-20)
  assert pe.roughness(rng.normal(size=(t, t)), 8) == pytest.approx(6.0, rel=0.15)
  k = r - c
  for mu in (5.0, 50.0):
    h = np.sinc(4.0 * k / mu)                      # Prop 7's H (theory.prop7_hessian's form)
    p_star = np.eye(t, k=1)                        # P_{T-1,T} = 1: p* = e_T for every T
    assert pe.population_loss(p_star, h) == pytest.approx(0.0, abs=1e-12)
  p = 0.3 * rng.normal(size=(t, t))
  with jax.enable_x64():
    want = float(jax.jit(theory.pe_total_loss, static_argnums=2)(jax.numpy.asarray(p), 50.0, t))
  assert pe.population_loss(p, h) == pytest.approx(want / (t - 1), rel=1e-10)


# --- mutation cases ------------------------------------------------------------------------------

_H = 'Prop 7: the Hessian of loss (7)'
_S1 = 'Prop 7: sigma_1 / T -> 1'
_S2 = 'Prop 7: sigma_{t>1} -> 0'
_TREND = 'Prop 7: sigma_1 / T increases'
_STOP = 'GD from P = 0 stopped'
_POP = 'population loss (7) of the trained P'
_TOE = 'invariance across diagonals'
_SMOOTH = 'smooth rows'
_ROUGH = 'gives rough rows'


def _last_mu_as_first(h):
  h = np.array(h)
  h[-1] = h[0]
  return h


def _rows_reversed(p):
  """Each used row P_{T-1, 1:T-1} read backwards: tokens weighed by absolute position."""
  p = np.array(p)
  t = p.shape[-1]
  for r in range(t - 1):
    p[:, r, :r + 1] = p[:, r, r::-1]
  return p


def _sawtooth(p, fraction=0.2):
  """Adds (-1)^t' x fraction x (the row's std over its used entries) along every used row."""
  p = np.array(p)
  t = p.shape[-1]
  sign = (-1.0) ** np.arange(t)
  for r in range(1, t - 1):
    std = np.std(p[:, r, :r + 1], axis=1, keepdims=True)
    p[:, r, :r + 1] += fraction * std * sign[None, :r + 1]
  return p


def _reference_as_first(p):
  p = np.array(p)
  p[-1] = p[0]
  return p


CASES = [
    Case(APP, 'measured', 'hessian_autodiff', times(), (_H, _S1)),
    Case(APP, 'theory', 'hessian', times(), (_H,)),
    Case(APP, 'measured', 'hessian_autodiff', _last_mu_as_first, (_S1, _S2, _TREND),
         why="the largest mu's Hessian computed at the smallest mu (a mu lost on the way)"),
    Case(APP, 'measured', 'hessian_autodiff', lambda h: np.asarray(h)[::-1], (_TREND,),
         why='the Hessians in reversed mu order: the spectrum moves the wrong way'),
    Case(APP, 'measured', 'train_loss', times(2.0), (_STOP,),
         why='runs stopped by the step cap at twice the threshold (the stop sits just below '
             'the threshold, so a 10% change need not cross it)'),
    Case(APP, 'measured', 'p_trained', times(), (_POP,)),
    Case(APP, 'measured', 'p_trained', _rows_reversed, (_TOE,),
         why='a P that weighs tokens by absolute position (each row reversed), not by t - T'),
    Case(APP, 'measured', 'p_trained', _sawtooth, (_SMOOTH,),
         why='rows with a +-20% (of their spread) alternating pattern: the sawtooth of a '
             'well-conditioned (small mu) solution'),
    Case(APP, 'measured', 'p_trained', _reference_as_first, (_ROUGH,),
         why='the reference trained like a large mu: the roughness claim must be able to fail'),
]


@pytest.mark.parametrize('case', [pytest.param(c, id=f'{c.part}-{c.key}-{i}')
                                  for i, c in enumerate(CASES)])
def test_claims_notice_a_wrong_input(case, smoke_run):
  """Fails if a claim meant to catch the mutated entry still holds (or the unmutated run fails)."""
  assert_notices(functools.partial(_check, APP), _evidence(smoke_run), case)


def test_every_claim_is_covered_by_a_case(smoke_run):
  """Fails if a claim of the smoke run is named by no mutation case above."""
  assert_covered(_check(APP, _evidence(smoke_run)), CASES)


# --- bad input -----------------------------------------------------------------------------------

BAD = [
    ({'t': 2}, 'config.t'),
    ({'mus': (50,)}, 'config.mus'),
    ({'mus': (300, 50)}, 'config.mus'),
    ({'mus': (0.5, 50)}, 'config.mus'),
    ({'reference_mu': 0.5}, 'config.reference_mu'),
    ({'num_sequences': 0}, 'config.num_sequences'),
    # the sequences are split over every device: conftest's 8
    ({'num_sequences': 12}, 'config.num_sequences=12: must be a multiple of the device'),
    ({'quad_nodes': -1}, 'config.quad_nodes'),
    ({'train.lr': 1.0}, 'config.train.lr'),
    ({'train.max_steps': 1001}, 'config.train.max_steps'),
    ({'train.loss_threshold': 0.0}, 'config.train.loss_threshold'),
    ({'cosine.dim': 63}, 'config.cosine.dim'),
    ({'claims.toeplitz_min': 1.5}, 'config.claims.toeplitz_min'),
    ({'claims.min_row_len': 40}, 'config.claims.min_row_len'),
    ({'claims.hessian_tol': 0.0}, 'config.claims.hessian_tol'),
]


@pytest.mark.parametrize('overrides,field', BAD)
def test_validate_names_the_field(overrides, field):
  """Fails if a bad value passes validate or its message does not name the field."""
  assert_validate_names(_module().validate, _config(), overrides, field)


def test_presets_validate():
  """Fails if a preset (the paper's, which no test runs, included) no longer passes validate."""
  for preset in ('smoke', 'quick', 'paper'):
    _module().validate(_config(preset))


def test_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path):
  """Fails if the app starts work on bad input, exits with another code, prints other than one
  error line naming the field, or touches an earlier results.json."""
  assert_bad_input_stops(APP, tmp_path, 'config.mus', '--config.mus=(300, 50)')
