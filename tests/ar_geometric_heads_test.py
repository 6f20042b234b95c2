"""The geometric-heads app (Props 3, 4, 6, Lemma 3, Fig 3 of Sander et al. 2024): a smoke run whose
claims hold, every claim caught by a mutation of its evidence, the orthogonal closed form, bad
input.

One smoke run (conftest's session fixture `smoke_run`, d = 4, T_max = 6); the mutation cases feed
the app's pure claim builder `check` its smoke evidence with one entry made wrong
(tests/mutation_test.py's Case / times / _check / _matching).

Runtime: ~14 s CPU on the shared 2-core CPU (the smoke run ~8.5 s of it, the bad-input
subprocess ~2 s, pytest and imports ~3.5 s).
"""

import functools
import json

import numpy as np
import pytest

from conftest import assert_bad_input_stops, assert_validate_names
from mutation_test import Case, _check, assert_covered, assert_notices, times
from experiments.autoregressive import geometric_heads as gh
from experiments.autoregressive.configs import geometric_heads as gh_config
from icl_jax import results
from icl_jax.models import ar_attention as ar

APP = 'autoregressive/geometric_heads'


def _evidence(smoke_run) -> results.Evidence:
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return results.load_evidence(str(workdir))


# --- smoke run -----------------------------------------------------------------------------------

def test_smoke_writes_results_whose_claims_hold(smoke_run):
  """Fails if the smoke run exits non-zero, a claim fails, or results/arrays/figures are missing;
  or if the printed Prop 4 (which double counts p_{T-1}^2 ||C||_F^2) is not told apart from the
  Monte-Carlo loss (it is ~28% high at d = 4, T_max = 6: |z| ~ 40)."""
  proc, workdir = smoke_run(APP)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((workdir / 'results.json').read_text())
  assert res['experiment'] == APP and res['claims'] and res['figures']
  failed = [c['claim'] for c in res['claims'] if not c['holds']]
  assert not failed, failed
  for name in res['figures']:
    assert (workdir / name).stat().st_size > 10_000, name
  assert (workdir / 'arrays.npz').exists() and (workdir / 'evidence.npz').exists()
  met = res['metrics']
  assert met['prop4_as_printed_min_abs_z'] > 10.0
  assert met['prop4_as_printed_mean_rel_excess'] > 0.05


# --- the closed forms and the structure measures --------------------------------------------------

def test_structure_is_exact_at_the_constructions():
  """At Prop 3's and Lemma 3's constructions every structure measure is 0 (rank d/2, ratio
  -1/2); fails on an off-by-one in the rows of P or the partner of a coordinate."""
  d, t_max = 6, 7
  u = gh.structure('unitary', *ar.prop3_params(d, t_max), t_max, 0.1)
  assert u['offP'] == 0.0 and u['offC'] == 0.0 and u['prod'] < 1e-12
  o = gh.structure('orthogonal', *ar.lemma3_params(d, t_max), t_max, 0.1)
  assert o['rank'] == d // 2 and o['ratio_median'] == -0.5
  for k in ('early', 'offblock', 'equal', 'ratio_dev', 'prod', 'sv_next_rel'):
    assert o[k] < 1e-12, k
  # Prop 3's point also zeroes the orthogonal loss but is not Lemma 3's (rank d, ratio 0).
  o3 = gh.structure('orthogonal', *ar.prop3_params(d, t_max), t_max, 0.1)
  assert o3['rank'] == d and abs(o3['ratio_dev'] - 0.5) < 1e-12


# --- mutation cases ------------------------------------------------------------------------------

U_LOSS = 'Fig 3 (unitary contexts'
U_ALL = 'random inits converges'
U_P = 'Prop 3 (unitary): row T-1 of P concentrates'
U_C = 'Prop 3 (unitary): B^T A is diagonal'
U_PROD = 'Prop 3 (unitary): P_{T-1,T} (B^T A)_ii = 1'
O_LOSS = 'Fig 3 (orthogonal contexts'
O_EARLY = 'P_{T-1,t} = 0 for t < T-1'
O_BLOCK = 'zero outside its 2x2 diagonal blocks'
O_EQUAL = 'have 4 equal entries'
O_RANK = 'has rank d/2'
O_RATIO = 'P_{T-1,T-1} / P_{T-1,T} = -1/2'
O_PROD = 'Prop 6 (orthogonal): P_{T-1,T} C_ii = 1'
MC_U = 'Prop 4 (corrected'
MC_O = 'Sec 5.2: loss (3) on orthogonal contexts'


def _plus(fraction):
  """Every entry shifted by fraction x max |entry| (P: mass off the selected columns; a: a
  rank-one term (B^T 1) 1^T fraction added to C, off its diagonal and off its blocks)."""
  return lambda v: np.asarray(v) + fraction * np.max(np.abs(v))


def _ratio_column(factor):
  """P_{T-1,T-1} (0-based P[r, r]) times factor on every row: the trigonometric ratio off."""
  def mutate(p):
    p = np.array(p)
    idx = np.arange(p.shape[-1])
    p[..., idx, idx] *= factor
    return p
  return mutate


def _odd_coordinates(factor):
  """a's odd coordinates times factor: C's odd columns scaled, so each block's entries differ."""
  def mutate(a):
    a = np.array(a)
    a[..., 1::2] *= factor
    return a
  return mutate


def _heads_equal(a):
  """Every head's a equal to the first's: C = (sum_h b_h) a_1^T has rank 1 < d/2."""
  a = np.array(a)
  a[..., :, :] = a[..., :1, :]
  return a


CASES = [
    Case(APP, 'measured', 'a_unitary', times(), (U_LOSS, U_ALL, U_PROD)),
    Case(APP, 'measured', 'p_unitary', _plus(0.1), (U_P, U_LOSS),
         why='P with mass 10% of its largest entry on every column: not a last-token selector'),
    Case(APP, 'measured', 'a_unitary', _plus(0.1), (U_C,),
         why='a shifted by 10% of its largest entry: C = B^T A gets off-diagonal entries'),
    Case(APP, 'measured', 'a_orthogonal', times(), (O_LOSS, O_PROD)),
    Case(APP, 'measured', 'p_orthogonal', _ratio_column(1.1), (O_RATIO, O_LOSS),
         why='P_{T-1,T-1} 10% off: the ratio is -0.55, not Lemma 3\'s -1/2'),
    Case(APP, 'measured', 'p_orthogonal', _plus(0.1), (O_EARLY,),
         why='P with mass on t < T - 1 (10% of its largest entry)'),
    Case(APP, 'measured', 'a_orthogonal', _plus(0.1), (O_BLOCK,),
         why='a shifted by 10% of its largest entry: C gets entries outside its 2x2 blocks'),
    Case(APP, 'measured', 'a_orthogonal', _odd_coordinates(1.1), (O_EQUAL, O_PROD),
         why='C\'s odd columns 10% larger: each block [[c, 1.1c], [c, 1.1c]], entries unequal'),
    Case(APP, 'measured', 'a_orthogonal', _heads_equal, (O_RANK,),
         why='all heads alike: C of rank 1 < d/2 (the smoke run has H = d/2, so rank <= d/2)'),
    Case(APP, 'measured', 'mc_mean_unitary', times(), (MC_U,)),
    Case(APP, 'theory', 'closed_unitary', times(), (MC_U,)),
    Case(APP, 'measured', 'mc_mean_orthogonal', times(), (MC_O,)),
    Case(APP, 'theory', 'closed_orthogonal', times(), (MC_O,)),
]


@pytest.mark.parametrize('case', [
    pytest.param(c, id=f'{c.part}-{c.key}-{i}') for i, c in enumerate(CASES)])
def test_claims_notice_a_wrong_input(case, smoke_run):
  """Fails if a claim meant to catch the mutated entry still holds (or the unmutated run fails)."""
  assert_notices(functools.partial(_check, APP), _evidence(smoke_run), case)


def test_every_claim_is_covered_by_a_case(smoke_run):
  """Fails if a claim of the smoke run is named by no mutation case above."""
  assert_covered(_check(APP, _evidence(smoke_run)), CASES)


# --- bad input -----------------------------------------------------------------------------------

BAD = [
    ({'d': 5}, 'config.d'),
    # batches are split over every device: conftest's 8
    ({'train.batch_size': 12}, 'config.train.batch_size=12: must be a multiple of the device'),
    ({'t_max': 1}, 'config.t_max'),
    ({'unitary.heads': 3}, 'config.unitary.heads'),
    ({'orthogonal.heads': 4}, 'config.orthogonal.heads'),
    ({'orthogonal.heads': 1}, 'config.orthogonal.heads'),
    ({'orthogonal.restarts': 0}, 'config.orthogonal.restarts'),
    ({'unitary.steps': 310}, 'config.unitary.steps'),
    ({'train.num_train': 8}, 'config.train.num_train'),
    ({'train.warmup_fraction': 1.0}, 'config.train.warmup_fraction'),
    ({'train.end_lr': 1.0}, 'config.train.end_lr'),
    ({'closed_form.num_sequences': 1000}, 'config.closed_form.num_sequences'),
    ({'claims.rank_threshold': 1.5}, 'config.claims.rank_threshold'),
    ({'claims.rank_threshold': 0.01}, 'config.claims.rank_threshold'),
    ({'claims.loss_tol': 0.0}, 'config.claims.loss_tol'),
]


@pytest.mark.parametrize('overrides,field', BAD)
def test_validate_names_the_field(overrides, field):
  """Fails if a bad value passes validate or its message does not name the field."""
  assert_validate_names(gh.validate, gh_config.get_config('smoke'), overrides, field)


def test_presets_validate():
  """Fails if a preset (the paper's, which no test runs, included) no longer passes validate."""
  for preset in ('smoke', 'quick', 'paper'):
    gh.validate(gh_config.get_config(preset))


def test_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path):
  """Fails if the app starts work on bad input, exits with another code, prints other than one
  error line naming the field, or touches an earlier results.json."""
  assert_bad_input_stops(APP, tmp_path, 'config.orthogonal.heads', '--config.orthogonal.heads=10')
