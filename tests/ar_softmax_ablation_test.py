"""The softmax / MLP ablation app (Sander et al. 2024, Sec. 5.1 and App. B, Fig. 9).

The models: the app's batched linear attention is eq. (6) of `ar_attention` (StandardParams), its
softmax attention equals a per-sequence T x T reference for both positional forms, both are
causal, and the real-form construction has zero loss. The app: one smoke run (conftest's
`smoke_run`), every claim caught by a mutation of its evidence (the pattern of
tests/fgd_construction_multihead_test.py), bad input.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_bad_input_stops, assert_validate_names
from mutation_test import Case, _check, assert_covered, assert_notices
from experiments.autoregressive import softmax_ablation as app
from experiments.autoregressive.configs import softmax_ablation as app_config
from icl_jax import results
from icl_jax.models import ar_attention as ar

APP = 'autoregressive/softmax_ablation'


def _config(preset='smoke'):
  return app_config.get_config(preset)


def _evidence(smoke_run) -> results.Evidence:
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return results.load_evidence(str(workdir))


@pytest.fixture(scope='module')
def sequences():
  """[6, 11, 2] real-form d = 1 sequences (T_max = 10) and random models (scale 0.5, so the
  softmax is far from uniform)."""
  config = _config()
  s, model = jax.jit(lambda k: (app.sequences(jax.random.fold_in(k, 0), config, 6), app.init(
      jax.random.fold_in(k, 1), dim=2, heads=2, t_max=config.t_max, width=8, scale=0.5)))(
          jax.random.key(0))
  return np.asarray(s), model


def _reference(attn: ar.StandardParams, s: np.ndarray, positional: str) -> np.ndarray:
  """Per sequence, float64 T x T: row T - 1 = sum_h sum_{t<=T} w_t B^h e_t with scores
  e_{T-1}^T A^h e_t and w = P_{T-1,t} softmax_t(scores) ('times') or softmax_t(scores + P_{T-1,
  .}) ('plus'); rows T = 2..t_max."""
  a = np.einsum('hkj,hkl->hjl', attn.w_q, attn.w_k).astype(np.float64)
  b = np.einsum('hmk,hkl->hml', attn.w_o, attn.w_v).astype(np.float64)
  p = np.asarray(attn.p, np.float64)
  e = s[:-1].astype(np.float64)
  out = np.zeros((e.shape[0] - 1, e.shape[1]))
  for row, t in enumerate(range(2, e.shape[0] + 1)):          # prefix e_1..e_t
    for h in range(a.shape[0]):
      scores = np.asarray([e[t - 2] @ a[h] @ e[c] for c in range(t)])
      if positional == 'times':
        w = np.exp(scores - scores.max())
        w = w / w.sum() * p[t - 2, :t]
      else:
        w = np.exp(scores + p[t - 2, :t])
        w = w / w.sum()
      out[row] += sum(w[c] * (b[h] @ e[c]) for c in range(t))
  return out


# --- the models ----------------------------------------------------------------------------------

def test_linear_attention_is_eq6_of_the_library(sequences):
  """The app's batched, unrolled linear attention equals `ar_attention.predict_all` on
  StandardParams (eq. (6), free P). Fails on a transposed A^h or B^h, a wrong P row or query
  shift, or a lost head."""
  s, model = sequences
  got, want = jax.jit(lambda m, x: (
      app.predict(m, x, softmax=False, use_mlp=False),                        # [T-1, D, B]
      jax.vmap(lambda y: ar.predict_all(m.attn, y))(x)))(model, jnp.asarray(s))   # [B, T-1, D]
  # float32 sums of ~10 products of O(1) terms.
  np.testing.assert_allclose(np.transpose(got, (2, 0, 1)), want, atol=1e-5)


@pytest.mark.parametrize('positional', app.POSITIONAL)
def test_softmax_attention_matches_the_reference(sequences, positional):
  """The softmax attention equals the per-sequence float64 reference. Fails on a softmax over
  the wrong axis, an acausal mask, or P applied outside / inside the softmax the wrong way."""
  s, model = sequences
  got = jax.jit(lambda m, x: app.predict(m, x, softmax=True, use_mlp=False,
                                         positional=positional))(model, jnp.asarray(s))
  got = np.transpose(got, (2, 0, 1))
  want = np.stack([_reference(model.attn, x, positional) for x in s])
  np.testing.assert_allclose(got, want, atol=1e-5)   # float32 vs float64, O(1) outputs


@pytest.mark.parametrize('softmax', [False, True])
def test_attention_is_causal(sequences, softmax):
  """Row i (prefix T = i + 1) has exactly zero gradient with respect to tokens t > i + 1."""
  s, model = sequences
  e = jnp.transpose(jnp.asarray(s[:2, :-1]), (1, 2, 0))          # [T, D, B]
  jac = jax.jit(jax.jacobian(lambda x: app.attention(model.attn, x, softmax=softmax)))(e)
  jac = np.abs(np.asarray(jac)).sum(axis=(1, 2, 4, 5))           # [T_out, T_in]
  t = jac.shape[0]
  assert np.all(jac[np.triu_indices(t, k=1)] == 0.0)
  assert np.all(np.diagonal(jac)[1:] > 0.0)


@pytest.mark.parametrize('d,heads', [(1, 3), (2, 4)])
def test_construction_has_zero_loss(d, heads):
  """The real-form Prop 3 construction (cos and sin heads per complex coordinate, extra heads 0,
  P = last-token selector, MLP 0) predicts s_{T+1} to float32 rounding, with and without the
  (zero) MLP; the library's eq. (6) agrees. Fails on a sin head of the wrong sign (a rotation by
  -theta: loss ~2 L_0) or a P selecting e_{T-1}."""
  config = _config()
  config.d, config.model.heads = d, heads
  model = app.construction(d=d, heads=heads, t_max=config.t_max, width=8)
  losses = jax.jit(lambda k, m: [f(m, app.sequences(k, config, 64)) for f in (
      lambda m, s: app.batch_loss(m, s, softmax=False, use_mlp=False),
      lambda m, s: app.batch_loss(m, s, softmax=False, use_mlp=True),
      lambda m, s: ar.mean_loss(m.attn, s))])(jax.random.key(2), model)
  # float32 rounding: ~1e-13 of L_0 (the app's claim allows 1e-6).
  assert max(float(v) for v in losses) / app.zero_predictor_loss(config) < 1e-9, losses


def test_extrapolated_factor():
  """Power law 0.4 / epoch over 40 epochs ends at 0.01, 10x the bound 1e-3 at slope -1: 10x the
  epochs; a geometric decay below the bound: 1; a flat loss: the cap."""
  epochs = np.arange(41, dtype=np.float64)
  power = np.concatenate([[1.0], 0.4 / epochs[1:]])
  assert app.extrapolated_factor(power, 1e-3) == pytest.approx(10.0, rel=1e-9)
  assert app.extrapolated_factor(0.5 ** epochs, 1e-3) == 1.0
  assert app.extrapolated_factor(np.full(41, 0.2), 1e-3) == app.FACTOR_CAP


# --- the smoke run -------------------------------------------------------------------------------

def test_smoke_writes_results_whose_claims_hold(smoke_run):
  """Fails if the smoke run exits non-zero, a claim fails, or results/arrays/figures are missing;
  or if a model without an MLP moved its (unused) MLP weights, or the four models did not start
  from one initialisation."""
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((workdir / 'results.json').read_text())
  assert res['experiment'] == APP and res['claims'] and res['figures']
  failed = [c['claim'] for c in res['claims'] if not c['holds']]
  assert not failed, failed
  for name in res['figures']:
    assert (workdir / name).stat().st_size > 10_000, name
  assert (workdir / 'evidence.npz').exists()
  with np.load(workdir / 'arrays.npz') as arrays:
    config = _config()
    assert arrays['train_loss_per_epoch'].shape == (config.train.epochs + 1, 4)
    w1 = arrays['params_mlp_w1']                    # [4, W, D]: linear, +MLP, SM, SM+MLP
    np.testing.assert_array_equal(w1[0], w1[2])      # untouched: the same initial weights
    assert np.abs(w1[1] - w1[0]).max() > 1e-3       # trained
    # At initialisation (weights ~0.1, so attention outputs ~1e-2) every model is close to the
    # zero predictor.
    np.testing.assert_allclose(arrays['train_loss_per_epoch'][0], _L0, rtol=0.05)


# --- mutation cases ------------------------------------------------------------------------------

_CONS = 'zero loss is reachable'
_NEAR = {'linear': 'linear attention reaches near-zero', 'linear+MLP':
         'linear+MLP attention reaches near-zero'}
_ABOVE = {'SM': 'SM stays far above linear:', 'SM+MLP': 'SM+MLP stays far above'}
_FLAT = {'SM': 'SM has plateaued', 'SM+MLP': 'SM+MLP has plateaued'}
_L0 = app.zero_predictor_loss(_config())


def _column(name: str, fn):
  """The curve with column `name` replaced by fn(curve, column index)."""

  def mutate(curve):
    curve = np.array(curve, np.float64)
    i = app.NAMES.index(name)
    curve[:, i] = fn(curve, i)
    return curve
  return mutate


_UNTRAINED = lambda c, i: np.full(c.shape[0], c[0, i])


def _last_times(factor):
  def fn(c, i):
    col = c[:, i].copy()
    col[-1] *= factor
    return col
  return fn


CASES = [
    Case(APP, 'measured', 'construction_loss', lambda v: np.asarray(v) + 0.01 * _L0, (_CONS,),
         why='a construction 1% of L_0 off zero (one head missing gives ~50%): a model or data '
             'bug that makes Prop 3 unreachable'),
]
for _lin, _sm in (('linear', 'SM'), ('linear+MLP', 'SM+MLP')):
  CASES += [
      Case(APP, 'measured', 'curve', _column(_lin, _UNTRAINED), (_NEAR[_lin], _ABOVE[_sm]),
           why=f'an untrained {_lin} model (its loss stays at the initial one)'),
      Case(APP, 'measured', 'curve', _column(_sm, lambda c, i, j=app.NAMES.index(_lin): c[:, j]),
           (_ABOVE[_sm], _FLAT[_sm]),
           why=f'a {_sm} model that learned the mapping (the {_lin} curve)'),
      Case(APP, 'measured', 'curve', _column(_sm, _last_times(0.01)), (_FLAT[_sm],),
           why=f'a {_sm} model still falling fast: its last loss 100x below the run\'s'),
  ]


@pytest.mark.parametrize('case', [pytest.param(c, id=f'{c.key}-{i}') for i, c in enumerate(CASES)])
def test_claims_notice_a_wrong_input(case, smoke_run):
  """Fails if a claim meant to catch the mutated entry still holds (or the unmutated run fails)."""
  assert_notices(functools.partial(_check, APP), _evidence(smoke_run), case)


def test_every_claim_is_covered_by_a_case(smoke_run):
  """Fails if a claim of the smoke run is named by no mutation case above."""
  assert_covered(_check(APP, _evidence(smoke_run)), CASES)


# --- bad input -----------------------------------------------------------------------------------

BAD = [
    ({'model.positional': 'cosine'}, 'config.model.positional'),
    ({'train.lr_schedule': 'linear'}, 'config.train.lr_schedule'),
    ({'model.heads': 1}, 'config.model.heads'),
    ({'d': 0}, 'config.d'),
    ({'t_max': 1}, 'config.t_max'),
    ({'data.num_train': 1000}, 'config.data.num_train'),
    ({'data.num_test': 100}, 'config.data.num_test'),
    ({'train.batch_size': 4096}, 'config.train.batch_size'),
    ({'train.epochs': 1}, 'config.train.epochs'),
    ({'train.lr': -1e-2}, 'config.train.lr'),
    ({'claims.extrapolation_min': 0.0}, 'config.claims.extrapolation_min'),
]


@pytest.mark.parametrize('overrides,field', BAD)
def test_validate_names_the_field(overrides, field):
  """Fails if a bad value passes validate or its message does not name the field."""
  assert_validate_names(app.validate, _config(), overrides, field)


def test_presets_validate():
  """Fails if a preset (the paper's, which no test runs, included) no longer passes validate."""
  for preset in ('smoke', 'quick', 'paper'):
    app.validate(_config(preset))


def test_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path):
  """Fails if the app starts work on bad input, exits with another code, prints other than one
  error line naming the field, or touches an earlier results.json."""
  assert_bad_input_stops(APP, tmp_path, 'config.model.positional',
                         '--config.model.positional=cosine')
