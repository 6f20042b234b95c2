"""Tests of icl_jax.estimators: OLS (full rank and min-norm), zero, and the LSA limit (eq. 12)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import estimators
from icl_jax.models import lsa
from icl_jax.samplers import regression
from icl_jax.theory import trained_lsa as th

D = 4
COV = jnp.array([0.5, 1.0, 1.5, 2.0])
W = jnp.array([1.0, -2.0, 0.5, 0.3])


@pytest.mark.parametrize('n', [D, 3 * D])
def test_ols_recovers_w_exactly_noiseless(n):
  """Noiseless prompts with n >= d: OLS predicts <w, x_query> (rtol 1e-3: float32 pinv of a
  possibly ill-conditioned X at n = d). Fails if the pseudo-inverse is applied to the wrong side
  or the query is ignored."""
  keys = jax.random.split(jax.random.key(0), 16)
  batch = jax.vmap(lambda k: regression.linear_prompt(k, n=n, cov=COV, w=W))(keys)
  pred = jax.jit(jax.vmap(estimators.ols))(batch)
  assert pred.shape == (16,) and pred.dtype == jnp.float32
  np.testing.assert_allclose(pred, batch.y_query, rtol=1e-3, atol=1e-3)


def test_ols_min_norm_for_n_less_than_d():
  """n < d: OLS is the minimum-norm interpolator x_q^T X^T (X X^T)^-1 y (numpy float64 here);
  rtol 1e-4 (float32 pinv). A query orthogonal to span{x_i} therefore gets prediction 0
  (atol 1e-5: rounding of the projection)."""
  n = 2
  p = regression.linear_prompt(jax.random.key(1), n=n, cov=COV)
  x, y, q = (np.asarray(a, np.float64) for a in (p.x, p.y, p.x_query))
  w_min = x.T @ np.linalg.solve(x @ x.T, y)
  np.testing.assert_allclose(estimators.ols(p), q @ w_min, rtol=1e-4, atol=1e-5)
  # and it interpolates: the same estimator at a context point returns its label
  p_ctx = p.replace(x_query=p.x[0])
  np.testing.assert_allclose(estimators.ols(p_ctx), p.y[0], rtol=1e-4, atol=1e-5)
  p_orth = regression.linear_prompt(jax.random.key(2), n=n, cov=COV, query='orthogonal')
  np.testing.assert_allclose(estimators.ols(p_orth), 0.0, atol=1e-5)


def test_zero_estimator():
  """The zero predictor returns a float32 scalar 0."""
  p = regression.linear_prompt(jax.random.key(3), n=3, cov=COV)
  z = estimators.zero(p)
  assert z.shape == () and z.dtype == jnp.float32 and float(z) == 0.0


@pytest.mark.parametrize('m', [3, 11])
def test_lsa_limit_equals_lsa_predict_at_optimum(m):
  """estimators.lsa_limit(P, Gamma^-1) == lsa.predict at the Theorem 4 optimum (eq. (12)), for
  test prompts of any length M (noisy labels, so eq. (13)). Both are x_q^T G^-1 (1/M) sum y_i x_i;
  rtol 1e-4 (float32, different summation order). Fails if either side normalises by N in
  place of M or uses the Gram's q q^T / M term."""
  n = 7
  params = lsa.Params(*th.optimum(COV, n))
  g_inv = jnp.linalg.inv(th.gamma(COV, n))
  keys = jax.random.split(jax.random.key(4), 8)
  batch = jax.vmap(lambda k: regression.linear_prompt(k, n=m, cov=COV, noise_std=0.5))(keys)
  a = jax.vmap(lambda p: estimators.lsa_limit(p, g_inv))(batch)
  b = jax.vmap(lambda p: lsa.predict(params, p))(batch)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(lsa.product(params), g_inv, rtol=1e-4, atol=1e-6)
