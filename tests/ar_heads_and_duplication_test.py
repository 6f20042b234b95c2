"""The heads-and-duplication app (Sander et al. 2024, Sec. 6, Figs 7 and 8).

The app's own pieces: a duplicated-token model of eq. (6) is exactly a plain-token one (`as_plain`),
Fig 8's near-equal initialisation, the head Gram matrix and its off-diagonal mass (for eq. (6) and
for the authors' script's model, `ar_script`). The app: one smoke run (conftest's `smoke_run`)
training both architectures, every claim of each architecture caught by a mutation of its
evidence (the pattern of tests/fgd_construction_multihead_test.py), bad input.

The paper's claims do not hold at the smoke (or quick) sizes for either architecture (the app's
docstring says why), so, as tests/mutation_test.py's TRAINED_LIKE does for runs too short for
their claims, the claim builder is checked on the smoke run's evidence with numbers shaped like
the paper's figures put in: on them every claim holds, and each mutation must make its claims
fail (and only its own architecture's).
"""

import json

import jax
import numpy as np
import pytest

from conftest import assert_bad_input_stops, assert_validate_names
from mutation_test import Case, assert_covered, assert_notices
from experiments.autoregressive import heads_and_duplication as app
from experiments.autoregressive.configs import heads_and_duplication as app_config
from icl_jax import results
from icl_jax.models import ar_attention as ar
from icl_jax.models import ar_script
from icl_jax.samplers import autoregressive as ar_sampler

APP = 'autoregressive/heads_and_duplication'


def _config(preset='smoke'):
  return app_config.get_config(preset)


def _smoke(smoke_run):
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


# --- the model pieces ----------------------------------------------------------------------------

def test_duplicated_tokens_are_a_plain_model():
  """eq. (6) on e_t = (s_t, s_t) equals eq. (6) on e_t = s_t with W' = W J, W_O' = W_O[:d], for
  every prefix (float32 rounding: outputs O(10), 1e-5 relative). Fails if `as_plain` folds the
  wrong halves or keeps the wrong output rows; a perturbed W_Q breaks it (the check can fail)."""
  d, t_max = 3, 8

  @jax.jit   # one program: eager op-by-op dispatch took seconds
  def predictions(key_p, key_s):
    params = ar.init_standard(key_p, 2 * d, 3, t_max, scale=0.5, positional='softmax')
    s = ar_sampler.sequence(key_s, 'orthogonal', d, t_max)
    other = params._replace(w_q=params.w_q.at[:, :, 0].add(0.1))
    return (ar.predict_all(params, s, encoding='duplicated'),
            ar.predict_all(app.as_plain(params, d), s, encoding='plain'),
            ar.predict_all(other, s, encoding='duplicated'))

  dup, plain, other = map(np.asarray, predictions(jax.random.key(1), jax.random.key(2)))
  scale = np.abs(dup).max()
  assert scale > 1.0
  assert np.abs(dup - plain).max() <= 1e-5 * scale
  assert np.abs(other - plain).max() > 1e-2 * scale


def test_near_equal_init_and_head_gram():
  """Fig 8's init: every head is the shared draw plus noise x N(0, 1) (the spread about the head
  mean has std noise sqrt(3/4) for 4 heads; 256 entries estimate it to ~5%, tolerance 20%), P is
  the shared draw's (one P in eq. (6)); head_gram is sum_h B_h^T B_h; offdiag_ratio is 0 on a
  diagonal M and sqrt(1/2) on [[1, 1], [1, 1]]. Fails on a noise drawn once for all heads (no
  spread), a perturbed P or a wrong Gram."""
  config = _config()
  config.fig8.d, config.fig8.heads, config.fig8.noise = 4, 4, 0.05
  params = jax.jit(lambda k: app.init_near_equal(k, config))(jax.random.key(0))
  for w in (params.w_q, params.w_k, params.w_v, params.w_o):
    assert w.shape == (4, 8, 8)
    spread = np.asarray(w - w.mean(axis=0, keepdims=True))
    # deviations from the head mean of H iid N(0, noise^2): variance noise^2 (H - 1) / H.
    assert abs(spread.std() / (0.05 * np.sqrt(3 / 4)) - 1) < 0.2
  one = jax.jit(lambda k: ar.init_standard(jax.random.split(k)[0], 8, 1, config.data.t_max,
                                           scale=config.fig8.init_scale,
                                           positional='softmax'))(jax.random.key(0))
  np.testing.assert_array_equal(params.p.pos, one.p.pos)
  b = np.einsum('hik,hkj->hij', params.w_o, params.w_v)
  np.testing.assert_allclose(app.head_gram(params), np.einsum('hki,hkj->ij', b, b), rtol=1e-5)
  np.testing.assert_allclose(app.head_gram(params, 4),
                             np.einsum('hki,hkj->ij', b[:, :4], b[:, :4]), rtol=1e-5)
  assert app.offdiag_ratio(np.diag([1.0, 2.0, 3.0])) == 0.0
  assert abs(app.offdiag_ratio(np.ones((2, 2))) - np.sqrt(0.5)) < 1e-12


def test_offcoord_ratio_leaves_out_the_duplicate_stripes():
  """Fig 8's statistic: 0 on [[D, D], [D, D]] (a diagonal D: each coordinate of s with its own
  duplicate, the pattern W_V's equal column-half gradients lead to) where the plain off-diagonal
  mass is sqrt(1/2); on a 4 x 4 M (d = 2) with ones everywhere it is sqrt(8/16) (the 8 entries
  (i, j) with i != j mod 2). Fails on a mask that drops the stripes' neighbours or keeps them."""
  dd = np.diag([1.0, 2.0, 3.0])
  tiled = np.block([[dd, dd], [dd, dd]])
  assert app.offcoord_ratio(tiled, 3) == 0.0
  assert abs(app.offdiag_ratio(tiled) - np.sqrt(0.5)) < 1e-12
  assert abs(app.offcoord_ratio(np.ones((4, 4)), 2) - np.sqrt(0.5)) < 1e-12
  m = np.eye(4)
  m[0, 1] = m[1, 0] = 1.0            # coordinates 0 and 1 of s: counted
  m[0, 2] = m[2, 0] = 5.0            # coordinate 0 and its duplicate: left out
  assert abs(app.offcoord_ratio(m, 2) - np.sqrt(2.0 / (4 + 2 + 50))) < 1e-12


def test_script_near_equal_init_and_head_gram():
  """The script architecture's Fig 8 pieces: init_near_equal(arch='script') is
  `ar_script.init_near_equal` at fig8.d, fig8.heads, fig8.noise (token width 2d), and head_gram
  uses its B_h = W_O W_V^h (one shared W_O). Fails if the app draws the script's Fig 8 model
  from the eq. (6) init or at the wrong sizes, or takes B_h from another map."""
  config = _config()
  config.fig8.d, config.fig8.heads = 3, 5

  @jax.jit
  def draws(key):
    params = app.init_near_equal(key, config, 'script')
    return params, app.head_gram(params)

  params, m = draws(jax.random.key(0))
  assert isinstance(params, ar_script.ScriptParams)
  assert params.w_v.shape == (5, 6, 6) and params.w_o.shape == (6, 6)
  want = jax.jit(lambda k: ar_script.init_near_equal(k, 3, 5, config.data.t_max,
                                                     noise=config.fig8.noise))(jax.random.key(0))
  for got, ref in zip(params, want):
    np.testing.assert_array_equal(got, ref)
  b = np.einsum('ik,hkj->hij', np.asarray(params.w_o), np.asarray(params.w_v))
  np.testing.assert_allclose(m, np.einsum('hki,hkj->ij', b, b), rtol=1e-5, atol=1e-6)


# --- smoke run -----------------------------------------------------------------------------------

def test_smoke_writes_results(smoke_run):
  """Fails if the smoke run exits non-zero, misses a claim (three per architecture, each naming
  its architecture), a figure or the arrays of either architecture (eq. (6) under the names the
  app had before, the script's under 'script_'), if a trained duplicated eq. (6) model is not its
  plain equivalent (float32 rounding), or if a model did not move off its initialisation."""
  workdir = _smoke(smoke_run)
  res = json.loads((workdir / 'results.json').read_text())
  assert res['experiment'] == APP and len(res['claims']) == 6
  for c in res['claims']:
    assert np.isfinite([c['measured'], c['expected'], c['tolerance']]).all(), c
  for arch in app.ARCHS:
    assert sum(f', {app.ARCH_LABELS[arch]}: ' in c['claim'] for c in res['claims']) == 3, arch
  for name in res['figures']:
    assert (workdir / name).stat().st_size > 10_000, name
  assert sorted(res['figures']) == ['figure7.png', 'figure8.png', 'script_figure8.png',
                                    'train_loss.png']
  met = res['metrics']
  assert met['dup_as_plain_max_abs_diff'] < 1e-5
  config = _config()
  with np.load(workdir / 'arrays.npz') as arrays:
    for p in ('', 'script_'):
      assert arrays[f'{p}mse'].shape == (2 * len(config.heads), config.data.num_test)
      assert arrays[f'{p}fig8_m'].shape == (2 * config.fig8.d,) * 2
    assert arrays['fig8_m_readout'].shape == (2 * config.fig8.d,) * 2
    assert arrays[f'script_params_duplicated_H{config.heads[-1]}_P'].shape == (
        config.heads[-1], config.data.t_max, config.data.t_max)
  # Training moved every model off its initialisation (init: ~1, the zero predictor's MSE, for
  # eq. (6); 1.1-1.4 for the script's read-out).
  for p in ('', 'script_'):
    for enc in app.ENCODINGS:
      for h in config.heads:
        assert met[f'{p}mse_{enc}_H{h}'] < met[f'{p}mse_init_{enc}_H{h}'], (p, enc, h)


# --- mutation cases ------------------------------------------------------------------------------

def _claim(arch: str, text: str) -> str:
  """The substring naming one architecture's claim: 'Fig N, <label>: <text>' in the claim."""
  return f'{app.ARCH_LABELS[arch]}: {text}'


_C_FALLS = 'with duplicated tokens the test MSE falls'
_C_BEATS = 'duplicated tokens beat plain ones'
_C_ORTH = 'heads become orthogonal'


def _paper_like(evidence: results.Evidence) -> results.Evidence:
  """The smoke evidence with numbers shaped like Figs 7 and 8 put in, for each architecture:
  plain MSE flat at ~0.9 in H, duplicated MSE falling as H^-0.5 from 0.9 (x 0.71 at the smoke
  preset's H = 2), paired per-sequence noise of 0.05; Fig 8's trained M diagonal up to 10% of the
  initial off-diagonal entries."""
  config = _config()
  heads = np.asarray(config.heads, float)
  n = config.data.num_test
  rng = np.random.default_rng(0)
  measured = dict(evidence.measured)
  for arch in app.ARCHS:
    p = app.prefix(arch)
    base = 0.9 + 0.1 * rng.standard_normal(n)
    plain = base[None] + 0.05 * rng.standard_normal((len(heads), n))
    dup = base[None] * heads[:, None] ** -0.5 + 0.05 * rng.standard_normal((len(heads), n))
    m_init = np.asarray(evidence.measured[f'{p}fig8_m_init'])
    off = m_init - np.diag(np.diag(m_init))
    measured.update({f'{p}mse': np.concatenate([plain, dup]),
                     f'{p}fig8_m': np.diag(np.diag(m_init)) + 0.1 * off})
  return evidence._replace(measured=measured)


def _check(evidence):
  claims, _ = app.check(_config(), evidence)
  return claims


def _dup_row(fn):
  """The duplicated model at H_max replaced by fn(mse, rows) (rows: index of (encoding, H))."""
  config = _config()
  rows = {m: i for i, m in enumerate(app.grid(config))}

  def mutate(mse):
    mse = np.array(mse)
    mse[rows[('duplicated', config.heads[-1])]] = fn(mse, rows, config.heads)
    return mse
  return mutate


def _with_duplicate_stripes(m):
  """M with each (i, i +- d) entry set to M_ii: a trained M tiled like [[N, N], [N, N]]."""
  m = np.array(m)
  d = m.shape[0] // 2
  for i in range(d):
    m[i, i + d] = m[i + d, i] = m[i, i]
  return m


def _undiagonalise(m):
  """diag(M) + 10 offdiag(M): the paper-shaped trained M's off-diagonal part back at init."""
  m = np.asarray(m)
  diag = np.diag(np.diag(m))
  return diag + 10.0 * (m - diag)


def _cases(arch: str) -> list:
  """The mutation cases of one architecture's evidence (names with `app.prefix(arch)`)."""
  p = app.prefix(arch)
  return [
      Case(APP, 'measured', f'{p}mse',
           _dup_row(lambda m, r, h: 0.9 * m[r[('duplicated', h[0])]]),
           (_claim(arch, _C_FALLS),),
           why='duplicated MSE at H_max only 10% below H = 1 (no "significant" fall)'),
      Case(APP, 'measured', f'{p}mse',
           _dup_row(lambda m, r, h: m[r[('plain', h[-1])]]), (_claim(arch, _C_BEATS),),
           why='duplicated tokens exactly as good as plain ones at H_max'),
      Case(APP, 'measured', f'{p}mse',
           _dup_row(lambda m, r, h: m[r[('duplicated', h[-1])]]
                    + np.mean(m[r[('plain', h[-1])]] - m[r[('duplicated', h[-1])]])),
           (_claim(arch, _C_BEATS),),
           why='duplicated tokens as good as plain ones on average, the per-sequence noise of '
               'their difference unchanged (z = 0)'),
      Case(APP, 'measured', f'{p}fig8_m', lambda m: np.asarray(m) * 1.1, (),
           why='a 10% larger trained M: the off-diagonal mass is scale-free, nothing must fail'),
      Case(APP, 'measured', f'{p}fig8_m', _with_duplicate_stripes, (),
           why='stripes as large as the diagonal (a coordinate and its duplicate, the pattern '
               'equal column-half gradients lead to) are not a failure of orthogonality'),
      Case(APP, 'measured', f'{p}fig8_m', _undiagonalise, (_claim(arch, _C_ORTH),),
           why="the trained M's off-diagonal entries as large as at init (heads that did not "
               'become orthogonal)'),
      Case(APP, 'measured', f'{p}fig8_m_init', lambda m: np.diag(np.diag(np.asarray(m))),
           (_claim(arch, _C_ORTH),),
           why='an initial M already diagonal: no drop of the off-diagonal mass'),
  ]


CASES = [c for arch in app.ARCHS for c in _cases(arch)]


@pytest.mark.parametrize('case', [pytest.param(c, id=f'{c.key}-{i}') for i, c in enumerate(CASES)])
def test_claims_notice_a_wrong_input(case, smoke_run):
  """Fails if a claim meant to catch the mutated entry still holds, if a claim of the other
  architecture fails (its evidence is untouched: the claims must read their own architecture's
  entries), if a scale-only change fails a claim, or if the paper-shaped evidence fails one."""
  evidence = _paper_like(results.load_evidence(str(_smoke(smoke_run))))
  claims = assert_notices(_check, evidence, case)
  arch = 'script' if case.key.startswith(app.prefix('script')) else 'eq6'
  for c in claims:
    if not case.fails or f', {app.ARCH_LABELS[arch]}: ' not in c.claim:
      assert c.holds, (case.key, c.claim)


def test_every_claim_is_covered_by_a_case(smoke_run):
  """Fails if a claim of the smoke run is named by no mutation case above."""
  assert_covered(_check(results.load_evidence(str(_smoke(smoke_run)))), CASES)


# --- bad input -----------------------------------------------------------------------------------

BAD = [
    ({'data.d': 0}, 'config.data.d'),
    # batches are split over every device: conftest's 8
    ({'train.batch_size': 12}, 'config.train.batch_size=12: must be a multiple of the device'),
    ({'data.t_max': 2}, 'config.data.t_max'),
    ({'data.context': 'unitary'}, 'config.data.context'),
    ({'data.context': 'orthogonal_commuting', 'data.d': 5}, 'config.data.d'),
    ({'data.context': 'orthogonal_commuting', 'data.d': 4, 'fig8.d': 3}, 'config.fig8.d'),
    ({'heads': (2, 4)}, 'config.heads'),
    ({'heads': (1, 4, 2)}, 'config.heads'),
    ({'heads': (1,)}, 'config.heads'),
    ({'model.pos_dim': -1}, 'config.model.pos_dim'),
    ({'fig8.noise': -0.05}, 'config.fig8.noise'),
    ({'train.batch_size': 512}, 'config.train.batch_size'),
    ({'train.epochs': 3}, 'config.train.epochs'),
    ({'eval.chunk': 48}, 'config.data.num_test'),
    ({'claims.dup_fraction': 1.5}, 'config.claims.dup_fraction'),
    ({'model.archs': ('eq6', 'eq7')}, 'config.model.archs'),
    ({'model.archs': ()}, 'config.model.archs'),
    ({'model.archs': ('script', 'script')}, 'config.model.archs'),
]


@pytest.mark.parametrize('overrides,field', BAD)
def test_validate_names_the_field(overrides, field):
  """Fails if a bad value passes validate or its message does not name the field."""
  assert_validate_names(app.validate, _config(), overrides, field)


def test_presets_validate():
  """Fails if a preset (the paper's, which no test runs, included) no longer passes validate."""
  for preset in ('smoke', 'quick', 'paper'):
    app.validate(_config(preset))


@pytest.mark.parametrize('field,override', [
    ('config.heads', '--config.heads=(2, 4)'),
    ('config.model.archs', "--config.model.archs=('eq6', 'transformer')"),
])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path, field, override):
  """Fails if the app starts work on bad input, exits with another code, prints other than one
  error line naming the field, or touches an earlier results.json."""
  assert_bad_input_stops(APP, tmp_path, field, override)
