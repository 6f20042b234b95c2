"""The loss-vs-context (Fig 1) and loss-vs-layers (Fig 2) apps of the functional-GD suite.

Each app's smoke preset runs once (conftest's smoke_run) and must write results whose claims
hold, its figures and the arrays other checks rely on. Every claim of each app must be
catchable: mutation cases feed `check` the smoke run's evidence with one entry made wrong and
assert the claims meant to notice fail. The smoke presets train a reduced grid (the quick
claims about K_relu labels and softmax need all activations and kernels: four programs, too
slow for a test), so the full claim set is also checked on evidence shaped like a quick run
(`_quick_like`: numbers of the kind a trained quick run gives). Bad input stops before any
work: one line, exit 2, an earlier results.json untouched.
"""

import importlib
import json

import numpy as np
import pytest

from conftest import assert_bad_input_stops, assert_validate_names
from icl_jax import results
from mutation_test import Case, _check, assert_covered, assert_notices, times

LVC = 'functional_gd/loss_vs_context'
LVL = 'functional_gd/loss_vs_layers'
lvc = importlib.import_module('experiments.functional_gd.loss_vs_context')
lvl = importlib.import_module('experiments.functional_gd.loss_vs_layers')
lvc_configs = importlib.import_module('experiments.functional_gd.configs.loss_vs_context')
lvl_configs = importlib.import_module('experiments.functional_gd.configs.loss_vs_layers')
MODULES = {LVC: (lvc, lvc_configs), LVL: (lvl, lvl_configs)}


def _evidence(smoke_run, app: str) -> results.Evidence:
  proc, workdir = smoke_run(app)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return results.load_evidence(str(workdir))


# --- smoke runs ---------------------------------------------------------------------------------

def test_context_smoke_writes_figure1_arrays_and_claims_that_hold(smoke_run):
  """Fails if the smoke run errors, a claim fails on it (a wrong model, Bayes estimator or closed
  form), a figure is missing, or a name outside checks rely on is absent or mis-shaped."""
  proc, workdir = smoke_run(LVC)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((workdir / 'results.json').read_text())
  assert res['experiment'] == LVC and res['claims']
  assert not [c for c in res['claims'] if not c['holds']], res['claims']
  config = res['config']
  assert config['d'] == 5
  for fig in ('figure1.png', 'train_loss.png'):
    assert fig in res['figures'] and (workdir / fig).stat().st_size > 10_000
  with np.load(workdir / 'arrays.npz') as arrays:
    n = arrays['n_values']
    np.testing.assert_array_equal(n, config['n_values'])
    for kern in config['kernels']:
      assert arrays[f'bayes_loss_{kern}'].shape == n.shape
      for act in config['activations']:
        curve = arrays[f'loss_{kern}_{act}']
        assert curve.shape == n.shape and np.all(np.isfinite(curve)) and np.all(curve > 0)


def test_layers_smoke_writes_figure2_and_claims_that_hold(smoke_run):
  """Fails if the smoke run errors, a claim fails on it, or its figure and curves are missing."""
  proc, workdir = smoke_run(LVL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((workdir / 'results.json').read_text())
  assert res['experiment'] == LVL and res['claims']
  assert not [c for c in res['claims'] if not c['holds']], res['claims']
  config = res['config']
  for fig in ('figure2.png', 'train_loss.png'):
    assert (workdir / fig).stat().st_size > 10_000
  with np.load(workdir / 'arrays.npz') as arrays:
    layers = arrays['layers_values']
    np.testing.assert_array_equal(layers, config['layers_values'])
    for kern in config['kernels']:
      for n in config['n_values']:
        assert arrays[f'bayes_loss_{kern}_n{n}'].shape == layers.shape
        for act in config['activations']:
          assert np.all(np.isfinite(arrays[f'loss_{kern}_n{n}_{act}']))
  assert any(k.startswith('relu_gap_') for k in res['metrics'])


# --- evidence shaped like a quick run -----------------------------------------------------------

def _quick_like(app: str) -> results.Evidence:
  """Evidence of the quick config's shape with trained-like numbers: the Bayes losses of the
  quick run (K_linear's closed form), each activation a margin above Bayes (the matching one
  closest; softmax ahead of exp on K_exp labels from n = 6, behind at n < 6), stderrs of the
  size the quick evaluation gives (loss 1%, paired differences 0.5% of the loss)."""
  module, configs = MODULES[app]
  config = configs.get_config('quick')
  acts, kerns = list(config.activations), list(config.kernels)
  n = np.asarray(config.n_values, float)
  bayes_of = {'linear': np.maximum(1.0 - n / config.d, 0.0), 'relu': 0.8 * (n / 2.0) ** -0.8,
              'exp': 1.9 * (n / 2.0) ** -0.6}
  margin = {('linear', 'linear'): 0.03, ('linear', 'relu'): 0.2, ('linear', 'exp'): 0.3,
            ('linear', 'softmax'): 0.4, ('relu', 'relu'): 0.1, ('relu', 'linear'): 0.25,
            ('relu', 'exp'): 0.3, ('relu', 'softmax'): 0.35, ('exp', 'linear'): 0.8,
            ('exp', 'relu'): 0.6}
  if app == LVC:
    bayes = np.stack([bayes_of[k] for k in kerns])
    loss = np.zeros((len(acts), len(kerns), n.size))
    for a, act in enumerate(acts):
      for k, kern in enumerate(kerns):
        if kern == 'exp' and act in ('exp', 'softmax'):
          gap = np.where(n >= 6, 0.5 if act == 'exp' else 0.3, 0.1 if act == 'exp' else 0.2)
        else:
          gap = margin[kern, act]
        loss[a, k] = bayes[k] + gap
    measured = {'loss': loss, 'loss_se': 0.01 * loss, 'bayes': bayes,
                'bayes_se': 0.005 * bayes, 'excess_se': 0.005 * loss, 'bayes_sqerr': bayes,
                'bayes_check_se': 0.01 * bayes,
                'gap': loss[:, None] - loss[None], 'gap_se': np.full((len(acts),) + loss.shape, 0.01),
                'diverged': np.zeros(len(acts)), 'lr_used': np.full(len(acts), 0.01),
                'tries': np.ones(len(acts))}
    return results.Evidence(measured, {'bayes_linear': bayes_of['linear']})
  ls = np.asarray(config.layers_values, float)
  bayes = np.stack([np.repeat(bayes_of[k][:, None], ls.size, 1) for k in kerns])
  scale = {'relu': 0.2 + 0.1 / ls, 'exp': 0.5 / ls, 'softmax': 0.3 / ls}
  loss = np.stack([bayes + scale[a][None, None] for a in acts])
  measured = {'loss': loss, 'loss_se': 0.01 * loss, 'bayes': bayes, 'bayes_se': 0.005 * bayes,
              'excess_se': 0.005 * loss, 'diverged': np.zeros(len(acts)), 'bayes_sqerr': bayes,
              'lr_used': np.full(len(acts), 0.01), 'tries': np.ones(len(acts)),
              'bayes_check_se': 0.01 * bayes, 'gap': loss[:, None] - loss[None],
              'gap_se': np.full((len(acts),) + loss.shape, 0.01)}
  return results.Evidence(measured, {})


def _quick_check(app: str, evidence: results.Evidence):
  module, configs = MODULES[app]
  return module.check(configs.get_config('quick'), evidence)[0]


# --- mutation cases -----------------------------------------------------------------------------

def _swap(app, preset, a: str, b: str, kern: str):
  """The paired gaps with activations a and b exchanged on kern labels (names mixed up)."""
  config = MODULES[app][1].get_config(preset)
  acts, k = list(config.activations), list(config.kernels).index(kern)

  def mutate(gap):
    gap = np.array(gap)
    order = list(range(len(acts)))
    ia, ib = acts.index(a), acts.index(b)
    order[ia], order[ib] = ib, ia
    gap[:, :, k] = gap[:, :, k][order][:, order]
    return gap
  return mutate


def _leak(loss):
  """The first activation's loss at the smallest n (and L) set to 0 on every label kernel: a
  model that sees y_query (the query's label leaking into its token) beats the Bayes floor."""
  loss = np.array(loss)
  loss[(0, slice(None)) + (0,) * (loss.ndim - 2)] = 0.0
  return loss


def _zero_bayes_plus(amount: float, app=LVC, preset='smoke'):
  """amount added to the K_linear Bayes risk where n >= d."""
  config = MODULES[app][1].get_config(preset)

  def mutate(bayes):
    bayes = np.array(bayes)
    k = list(config.kernels).index('linear')
    bayes[k, np.asarray(config.n_values) >= config.d] += amount
    return bayes
  return mutate


def _no_depth(app=LVL, preset='quick'):
  """Every depth's h~_exp loss set to its L = 1 loss (layer masks that leave one layer)."""
  config = MODULES[app][1].get_config(preset)

  def mutate(loss):
    loss = np.array(loss)
    a = list(config.activations).index('exp')
    loss[a] = loss[a, ..., :1]
    return loss
  return mutate


_FLOOR = 'every trained loss >= the Bayes loss'
_BEST_LIN = 'K_linear labels, n in'
_BEST_RELU = 'K_relu labels, n in'
_SOFTMAX = 'h~_softmax beats h~_exp'
_CLOSED = 'Bayes risk = 1 - n/d'
_ZERO = 'Bayes risk = 0'
_EXP_DEPTH = 'h~_exp excess over Bayes at L ='
_FINITE = 'training stayed finite'


def _diverged(flags):
  """The first activation's grid marked as diverged (a non-finite training loss)."""
  flags = np.array(flags)
  flags[0] = 1
  return flags

_BAYES_CHECK = 'the Bayes estimator (13) errs on the test labels by its predicted risk'
_LEAK = 'y_query leaking into some models\' prompts: they beat the Bayes floor'
_SWAP = 'the activations mixed up: the curves of two activations exchanged'
_UNRESOLVED = '100x fewer test prompts: the gaps are no longer resolved'
_OVERFLOW = 'a grid whose training loss overflowed'

# (preset whose evidence the case mutates, Case)
CASES = [
    ('smoke', Case(LVC, 'measured', 'diverged', _diverged, (_FINITE,), why=_OVERFLOW)),
    ('smoke', Case(LVC, 'measured', 'loss', _leak, (_FLOOR,), why=_LEAK)),
    ('smoke', Case(LVC, 'measured', 'bayes', times(), (_BAYES_CHECK, _CLOSED))),
    ('smoke', Case(LVC, 'measured', 'bayes_sqerr', times(), (_BAYES_CHECK,))),
    ('smoke', Case(LVC, 'theory', 'bayes_linear', times(), (_CLOSED,))),
    ('smoke', Case(LVC, 'measured', 'bayes', _zero_bayes_plus(1e-3), (_ZERO,),
                   why='a Bayes solve that leaves 1e-3 of the query unexplained where n >= d '
                       '(e.g. a ridge 1e-3 in place of the pseudo-inverse)')),
    ('smoke', Case(LVC, 'measured', 'gap', _swap(LVC, 'smoke', 'linear', 'relu', 'linear'),
                   (_BEST_LIN,), why=_SWAP)),
    ('smoke', Case(LVC, 'measured', 'gap_se', times(10.0), (_BEST_LIN,), why=_UNRESOLVED)),
    ('quick', Case(LVC, 'measured', 'diverged', _diverged, (_FINITE,), why=_OVERFLOW)),
    ('quick', Case(LVC, 'measured', 'loss', _leak, (_FLOOR,), why=_LEAK)),
    ('quick', Case(LVC, 'measured', 'bayes', times(), (_BAYES_CHECK, _CLOSED))),
    ('quick', Case(LVC, 'measured', 'bayes_sqerr', times(), (_BAYES_CHECK,))),
    ('quick', Case(LVC, 'theory', 'bayes_linear', times(), (_CLOSED,))),
    ('quick', Case(LVC, 'measured', 'bayes', _zero_bayes_plus(1e-3, LVC, 'quick'), (_ZERO,),
                   why='1e-3 of the query unexplained where n >= d')),
    ('quick', Case(LVC, 'measured', 'gap', _swap(LVC, 'quick', 'linear', 'relu', 'linear'),
                   (_BEST_LIN,), why=_SWAP)),
    ('quick', Case(LVC, 'measured', 'gap', _swap(LVC, 'quick', 'relu', 'linear', 'relu'),
                   (_BEST_RELU,), why=_SWAP)),
    ('quick', Case(LVC, 'measured', 'gap', _swap(LVC, 'quick', 'exp', 'relu', 'relu'),
                   (_BEST_RELU,), why=_SWAP)),
    ('quick', Case(LVC, 'measured', 'gap', _swap(LVC, 'quick', 'exp', 'softmax', 'exp'),
                   (_SOFTMAX,), why=_SWAP)),
    ('quick', Case(LVC, 'measured', 'gap_se', times(10.0), (_BEST_LIN, _BEST_RELU, _SOFTMAX),
                   why=_UNRESOLVED)),
    ('smoke', Case(LVL, 'measured', 'diverged', _diverged, (_FINITE,), why=_OVERFLOW)),
    ('smoke', Case(LVL, 'measured', 'loss', _leak, (_FLOOR,), why=_LEAK)),
    ('smoke', Case(LVL, 'measured', 'bayes', times(), (_BAYES_CHECK,))),
    ('smoke', Case(LVL, 'measured', 'bayes_sqerr', times(), (_BAYES_CHECK,))),
    ('quick', Case(LVL, 'measured', 'diverged', _diverged, (_FINITE,), why=_OVERFLOW)),
    ('quick', Case(LVL, 'measured', 'loss', _leak, (_FLOOR,), why=_LEAK)),
    ('quick', Case(LVL, 'measured', 'bayes', times(), (_BAYES_CHECK,))),
    ('quick', Case(LVL, 'measured', 'bayes_sqerr', times(), (_BAYES_CHECK,))),
    ('quick', Case(LVL, 'measured', 'loss', _no_depth(LVL, 'quick'), (_EXP_DEPTH,),
                   why='depth that does not help: every L scores as L = 1 (layer masks that '
                       'leave one layer)')),
]


def _claims_of(smoke_run, preset, app, evidence=None):
  if preset == 'smoke':
    evidence = evidence or _evidence(smoke_run, app)
    return _check(app, evidence)
  return _quick_check(app, evidence or _quick_like(app))


@pytest.mark.parametrize('preset,case', [
    pytest.param(p, c, id=f'{c.app.split("/")[1]}-{p}-{c.part}-{c.key}-{i}')
    for i, (p, c) in enumerate(CASES)])
def test_claims_notice_a_wrong_input(preset, case, smoke_run):
  """Fails if the unmutated evidence does not pass, or a claim meant to catch the mutation
  still holds."""
  evidence = _evidence(smoke_run, case.app) if preset == 'smoke' else _quick_like(case.app)
  assert_notices(lambda e: _claims_of(smoke_run, preset, case.app, e), evidence, case)


@pytest.mark.parametrize('preset', ['smoke', 'quick'])
@pytest.mark.parametrize('app', [LVC, LVL])
def test_every_claim_is_covered_by_a_case(app, preset, smoke_run):
  """Fails if a claim of the app (smoke run, or the quick config's full set) has no case."""
  assert_covered(_claims_of(smoke_run, preset, app),
                 [c for p, c in CASES if c.app == app and p == preset])


# --- bad input ----------------------------------------------------------------------------------

BAD = [
    (LVC, {'kernels': ('linear', 'gauss')}, 'config.kernels'),
    # batches are split over every device: conftest's 8
    (LVC, {'by_activation.linear.batch_size': 12},
     'config.by_activation.linear.batch_size=12: must be a multiple of the device count 8'),
    (LVC, {'activations': ('linear', 'tanh')}, 'config.activations'),
    (LVC, {'activations': ('linear', 'linear')}, 'config.activations'),
    (LVC, {'d': 0}, 'config.d'),
    (LVC, {'by_activation.relu.batch_size': 0}, 'config.by_activation.relu.batch_size'),
    (LVC, {'by_activation.linear.steps': -10}, 'config.by_activation.linear.steps'),
    (LVC, {'train.resample_every': 0}, 'config.train.resample_every'),
    (LVC, {'n_values': (2, 0, 6)}, 'config.n_values'),
    (LVC, {'n_values': (6, 2)}, 'config.n_values'),
    (LVC, {'claims.best_n': (3,)}, 'config.claims.best_n'),
    (LVC, {'by_activation.exp.lr': 0.0}, 'config.by_activation.exp.lr'),
    (LVC, {'eval.num_prompts': 1000, 'eval.chunk': 300}, 'config.eval.num_prompts'),
    (LVL, {'kernels': ('relu', 'rbf')}, 'config.kernels'),
    (LVL, {'activations': ('sigmoid',)}, 'config.activations'),
    (LVL, {'layers_values': (2, 8)}, 'config.layers_values'),
    (LVL, {'layers_values': (1, 2)}, 'config.train.layers'),
    (LVL, {'n_values': (0,)}, 'config.n_values'),
    (LVL, {'by_activation.exp.free_a': None}, 'config.by_activation.exp.free_a'),
]


@pytest.mark.parametrize('app,overrides,field', BAD)
def test_validate_names_the_field(app, overrides, field):
  """Fails if validate accepts the bad value or its message does not name the field."""
  module, configs = MODULES[app]
  assert_validate_names(module.validate, configs.get_config('quick'), overrides, field)


@pytest.mark.parametrize('app', [LVC, LVL])
def test_every_preset_passes_validate(app):
  """Fails if a preset (paper included: for an accelerator, never run here) stopped validating."""
  module, configs = MODULES[app]
  for preset in ('smoke', 'quick', 'paper'):
    module.validate(configs.get_config(preset))


@pytest.mark.parametrize('app,override,field', [
    (LVC, "--config.activations=('linear','tanh')", 'config.activations'),
    (LVL, '--config.by_activation.exp.batch_size=0', 'config.by_activation.exp.batch_size')])
def test_bad_input_is_one_line_exit_2_results_untouched(app, override, field, tmp_path):
  """Fails if bad input does work, exits other than 2, says more or less than one error line,
  or touches an earlier results.json."""
  assert_bad_input_stops(app, tmp_path, field, override)
