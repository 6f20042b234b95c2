"""Tests of the random-covariance closed forms of theory.trained_lsa (Thm 8, eq. (20), (23)) and
regression.random_covariance_stats, against exact moments and Monte Carlo."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import population, theory
from icl_jax.samplers import regression

th = theory.trained_lsa


@pytest.mark.parametrize('law', regression.COVARIANCE_LAWS)
@pytest.mark.parametrize('d', [1, 3, 5])
def test_sparse_rule_matches_tensor_rule_on_degree_3_polynomials(law, d):
  """sparse_rule: E p over i.i.d. lambda for every monomial of total degree <= 3, against the
  exact moments (products of E lambda^k over distinct coordinates). A rule exact only to degree
  2, or with the wrong 1 - d centre weight, misses lambda_i^3 or lambda_i lambda_j by O(1)."""
  moments = regression.law_moments(law, 1.5)
  points, weights = map(np.asarray, th.sparse_rule(moments, d))
  mom = {0: 1.0, 1: moments[0], 2: moments[1], 3: moments[2]}
  for powers in itertools.product(range(4), repeat=d):
    if sum(powers) > 3:
      continue
    exact = np.prod([mom[a] for a in powers])
    np.testing.assert_allclose(weights @ np.prod(points ** np.asarray(powers), axis=1), exact,
                               rtol=1e-12, atol=1e-12, err_msg=str(powers))


def test_sparse_loss_equals_tensor_loss():
  """random_covariance_loss_sparse = random_covariance_population_loss (2^d points) for random
  weights, d = 4; rtol 1e-5 because the 2^d rule's nodes are float32."""
  moments = regression.law_moments('exponential')
  k1, k2 = jax.random.split(jax.random.key(0))
  w_kq, w_pv = jax.random.normal(k1, (5, 5)), jax.random.normal(k2, (5, 5))
  np.testing.assert_allclose(th.random_covariance_loss_sparse(w_kq, w_pv, moments, 4, 7),
                             th.random_covariance_population_loss(w_kq, w_pv, moments, 4, 7),
                             rtol=1e-5)


def _stat(prompt, diag):
  y = prompt.y_query
  yh = prompt.x_query @ (diag * (prompt.x.T @ prompt.y)) / prompt.n
  return jnp.stack([yh * y, jnp.square(yh - y)])


def _stat_stats(stats, diag):
  y = stats.y_query
  yh = stats.x_query @ (diag * (stats.xx @ stats.w))
  return jnp.stack([yh * y, jnp.square(yh - y)])


@pytest.mark.parametrize('query', ['same', 'independent'])
def test_error_and_slopes_match_mc_direct_and_wishart(query):
  """random_covariance_error and random_covariance_product_slopes for a non-constant diagonal
  (d = 4, M = 9) against MC of whole prompts and of random_covariance_stats (2^18 each): within
  4 stderr (~0.4-0.6% of the values; at 2^16 the heavy-tailed error statistic gave |z| = 4.5
  once, so the stderr needs this many draws); a wrong 1/M term moves the error by ~10%."""
  moments, d, m = regression.law_moments('exponential'), 4, 9
  diag = jnp.array([0.3, 0.36, 0.24, 0.33])
  slope = th.random_covariance_product_slopes(diag, moments)[0 if query == 'independent' else 1]
  expected = np.array([slope, th.random_covariance_error(diag, moments, m, query)])
  for stat, sample in ((_stat, regression.random_covariance_prompt),
                       (_stat_stats, regression.random_covariance_stats)):
    mean, se = population.mc_stats(stat, functools.partial(sample, n=m, d=d, query=query),
                                   jax.random.key(3), (diag,), num_samples=1 << 18, chunk=1 << 13)
    z = (np.asarray(mean) / d - expected) / (np.asarray(se) / d)
    assert np.all(np.abs(z) < 4), (stat.__name__, z)
