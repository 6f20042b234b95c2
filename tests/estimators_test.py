"""Tests of icl_jax.estimators: OLS (full rank and min-norm), zero, and the LSA limit (eq. 12)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import estimators
from icl_jax.prompts import Prompt
from icl_jax.models import lsa
from icl_jax.samplers import regression
from icl_jax.theory import trained_lsa as th

D = 4
COV = jnp.array([0.5, 1.0, 1.5, 2.0])
W = jnp.array([1.0, -2.0, 0.5, 0.3])
_BATCHED_OLS = jax.jit(jax.vmap(estimators.ols))   # one compilation per shape across tests


@pytest.mark.parametrize('n', [D, 3 * D])
def test_ols_recovers_w_exactly_noiseless(n):
  """Noiseless prompts with n >= d: OLS predicts <w, x_query> (rtol 1e-3: float32 normal
  equations of a possibly ill-conditioned X at n = d). Fails if the pseudo-inverse is applied to
  the wrong side or the query is ignored."""
  keys = jax.random.split(jax.random.key(0), 16)
  batch = jax.vmap(lambda k: regression.linear_prompt(k, n=n, cov=COV, w=W))(keys)
  pred = jax.jit(jax.vmap(estimators.ols))(batch)
  assert pred.shape == (16,) and pred.dtype == jnp.float32
  np.testing.assert_allclose(pred, batch.y_query, rtol=1e-3, atol=1e-3)


def test_ols_min_norm_for_n_less_than_d():
  """n < d: OLS is the minimum-norm interpolator x_q^T X^T (X X^T)^-1 y (numpy float64 here);
  rtol 1e-4 (float32 normal equations of a 2 x 2 system). A query orthogonal to span{x_i}
  therefore gets prediction 0 (atol 1e-5: rounding of the projection)."""
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


def _gaussian_prompts(key, num, n, d, spread):
  """num prompts, x and x_query ~ N(0, Lambda), Lambda log-spaced with cond(Lambda) = spread,
  labels N(0, 1) independent of x (so no w makes the fit exact: a generic least-squares problem)."""
  k_x, k_y, k_q = jax.random.split(key, 3)
  sd = jnp.sqrt(jnp.logspace(-0.5, 0.5, d) ** np.log10(spread))
  return Prompt(x=jax.random.normal(k_x, (num, n, d)) * sd[None, None, :],
                y=jax.random.normal(k_y, (num, n)),
                x_query=jax.random.normal(k_q, (num, d)) * sd[None, :], y_query=jnp.zeros((num,)))


@pytest.mark.parametrize('n,d', [(20, 5), (8, 5), (3, 5), (2, 5), (60, 20), (10, 20)])
@pytest.mark.parametrize('spread', [1.0, 100.0])
def test_ols_matches_numpy_lstsq_and_pinv(n, d, spread):
  """x_q^T X^+ y against float64 numpy: lstsq for n >= d, pinv for n < d (the min-norm branch),
  on 64 random full-rank prompts, with cond(Lambda) = 1 and 100 (cond(X) up to ~40).

  Tolerance: the forward error of the float32 normal equations, |x_q| |X^+ y| cond(X)^2 eps32,
  times 4 (measured at most ~0.9 of that bound at these sizes) plus 1e-6 x |x_q| |X^+ y| for
  the float32 sums. Also requires that bound to be below 1e-2 of the scale, so the check has
  power: an OLS on the wrong side, or a pinv with a wrong rank, misses by O(1)."""
  batch = _gaussian_prompts(jax.random.key(10 + n + d), 64, n, d, spread)
  pred = np.asarray(_BATCHED_OLS(batch), np.float64)
  assert pred.shape == (64,) and np.all(np.isfinite(pred))
  x, y, q = (np.asarray(a, np.float64) for a in (batch.x, batch.y, batch.x_query))
  for i in range(64):
    w_ref = (np.linalg.lstsq(x[i], y[i], rcond=None)[0] if n >= d
             else np.linalg.pinv(x[i]) @ y[i])
    scale = np.linalg.norm(q[i]) * np.linalg.norm(w_ref)
    bound = np.linalg.cond(x[i])**2 * np.finfo(np.float32).eps
    assert bound < 1e-2, 'too ill-conditioned for the check to have power'
    assert abs(pred[i] - q[i] @ w_ref) <= (4 * bound + 1e-6) * scale, (i, pred[i], q[i] @ w_ref)


@pytest.mark.parametrize('n', [3, 8])
def test_ols_small_systems_have_no_lapack_custom_call(n):
  """At d = 5 both branches solve by Gauss-Jordan (min(n, d) <= _GAUSS_JORDAN_MAX_DIM, where
  it measured faster than LAPACK): no custom_call in the jitted, vmapped program, before or
  after compilation. Fails if small systems go to LAPACK (jnp.linalg.solve would fail this)."""
  batch = _gaussian_prompts(jax.random.key(0), 4, n, 5, 1.0)
  lowered = jax.jit(jax.vmap(estimators.ols)).lower(batch)
  assert 'custom_call' not in lowered.as_text()
  assert 'custom-call' not in lowered.compile().as_text()
  assert 'custom_call' in jax.jit(jax.vmap(
      lambda p: jnp.linalg.solve(p.x.T @ p.x, p.x.T @ p.y))).lower(batch).as_text()


@pytest.mark.parametrize('n', [10, 60])
def test_ols_large_systems_use_deadlock_free_lapack_batches(n):
  """At d = 20 (m = min(n, d) = 10 or 20 > _GAUSS_JORDAN_MAX_DIM) OLS solves by LAPACK Cholesky
  through icl_jax.linalg: vmapped over 1024 prompts, every potrf call has batch x m^3/3 below
  jaxlib 0.10.2's 2e5-FLOP parallel threshold, so it runs inline and cannot deadlock (see
  icl_jax/linalg.py). Fails if OLS calls jnp.linalg directly (one potrf/getrf of batch 1024)."""
  batch = _gaussian_prompts(jax.random.key(0), 1024, n, 20, 1.0)
  text = jax.jit(jax.vmap(estimators.ols)).lower(batch).as_text()
  shapes = re.findall(r'custom_call @lapack_spotrf_ffi\(.*: \(tensor<(\d+)x(\d+)x\d+xf32>\)', text)
  assert shapes and 'getrf' not in text
  for b, m in shapes:
    assert int(m) == min(n, 20) and int(b) * int(m)**3 // 3 < 200_000, (b, m)


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


@pytest.mark.parametrize('d', [3, 5])
def test_ols_prefixes_match_numpy_lstsq_at_every_length(d):
  """Minimum-norm OLS from the first M pairs, every M below, at and above d, in float64, against
  NumPy's SVD-based lstsq on noisy labels (so M > d is a real fit, not an interpolation).
  Fails if the masked Gram keeps a null direction (M < d) or reads a pair past M."""
  rng = np.random.default_rng(d)
  x = rng.normal(size=(12, d))
  y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=12)
  ms = (1, 2, d - 1, d, d + 1, 11)
  with jax.enable_x64(True):
    got = np.asarray(jax.jit(lambda a, b: estimators.ols_prefixes(a, b, ms))(x, y))
  want = [x[m] @ np.linalg.lstsq(x[:m], y[:m], rcond=None)[0] for m in ms]
  np.testing.assert_allclose(got, want, atol=1e-10)
