"""The mutation test: every claim of every app can fail, and fails on the error it is meant to catch.

Each app splits its work into `measure` (training, Monte Carlo: slow) and a pure claim builder
`check(config, evidence) -> (claims, metrics)`, where `evidence` is a `results.Evidence` of what
the run measured and what theory says, saved by the app in evidence.npz. This test takes the
evidence of the app's smoke run (shared with apps_test through conftest's `smoke_run`), checks
that every claim holds on it, then feeds `check` the same evidence with one entry made wrong
(by 10% unless a case says otherwise: learned weights, a closed form, a Monte-Carlo estimate,
each in turn) and asserts that the claims meant to catch that error fail. A last test asserts
that every claim an app makes is named by at least one case, so a new claim must join here.

A case names its claims by a substring of the claim text. Every suite adds its cases below.
"""

import importlib
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest

from icl_jax import results


class Case(NamedTuple):
  app: str                    # 'paper/name'
  part: str                   # 'measured' or 'theory'
  key: str                    # entry of that part of the Evidence
  mutate: Callable[[Any], Any]
  fails: tuple                # substrings of the claims that must fail
  why: str = ''               # when the mutation is not a 10% scaling: what it models


def times(factor: float = 1.1) -> Callable[[Any], Any]:
  """The value wrong by (factor - 1): a 10% error by default."""
  return lambda v: np.asarray(v) * factor


# --- trained_lsa -------------------------------------------------------------------------------

GRADIENT_FLOW: list = []
PREDICTION_ERROR: list = []
DISTRIBUTION_SHIFT: list = []
RANDOM_COVARIANCE: list = []

CASES = GRADIENT_FLOW + PREDICTION_ERROR + DISTRIBUTION_SHIFT + RANDOM_COVARIANCE
APPS = ('trained_lsa/gradient_flow', 'trained_lsa/prediction_error',
        'trained_lsa/distribution_shift', 'trained_lsa/random_covariance')


def _check(app: str, evidence: results.Evidence):
  paper, name = app.split('/')
  module = importlib.import_module(f'experiments.{paper}.{name}')
  config = importlib.import_module(f'experiments.{paper}.configs.{name}').get_config('smoke')
  claims, _ = module.check(config, evidence)
  return claims


def _evidence(smoke_run, app: str) -> results.Evidence:
  proc, workdir = smoke_run(app)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return results.load_evidence(str(workdir))


def _matching(claims, text: str):
  found = [c for c in claims if text in c.claim]
  assert found, f'no claim contains {text!r}; claims: {[c.claim for c in claims]}'
  return found


@pytest.mark.parametrize('case', [
    pytest.param(c, marks=pytest.mark.xdist_group(c.app),
                 id=f'{c.app.split("/")[1]}-{c.part}-{c.key}-{i}') for i, c in enumerate(CASES)])
def test_claims_notice_a_wrong_input(case, smoke_run):
  evidence = _evidence(smoke_run, case.app)
  assert all(c.holds for c in _check(case.app, evidence)), 'the unmutated smoke run must pass'
  part = dict(getattr(evidence, case.part))
  assert case.key in part, f'{case.part} has no {case.key!r}; it has {sorted(part)}'
  part[case.key] = case.mutate(part[case.key])
  claims = _check(case.app, evidence._replace(**{case.part: part}))
  for text in case.fails:
    for c in _matching(claims, text):
      assert not c.holds, (f'{case.part}[{case.key!r}] mutated, yet "{c.claim}" holds: '
                           f'measured {c.measured}, expected {c.expected}, tol {c.tolerance}')


@pytest.mark.parametrize('app', [pytest.param(a, marks=pytest.mark.xdist_group(a)) for a in APPS])
def test_every_claim_is_covered_by_a_case(app, smoke_run):
  claims = _check(app, _evidence(smoke_run, app))
  named = [t for c in CASES if c.app == app for t in c.fails]
  uncovered = [c.claim for c in claims if not any(t in c.claim for t in named)]
  assert not uncovered, f'claims no mutation case names: {uncovered}'
