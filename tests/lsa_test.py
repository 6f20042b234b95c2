"""Tests of icl_jax.models.lsa: eq. (3) vs eq. (6), invariances, Assumption 3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import prompts
from icl_jax.models import lsa
from icl_jax.samplers import regression

D, N = 3, 6
FULL = jnp.array([[1.0, 0.4, -0.3], [0.4, 0.8, 0.2], [-0.3, 0.2, 1.5]])


def _full_params(seed=0):
  """Random params with every block of (5) nonzero, so no block can be silently ignored."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  return lsa.Params(w_kq=jax.random.normal(k1, (D + 1, D + 1)),
                    w_pv=jax.random.normal(k2, (D + 1, D + 1)))


def _prompt(seed=1, n=N):
  return regression.linear_prompt(jax.random.key(seed), n=n, cov=FULL, noise_std=0.3)


def test_apply_shape_and_residual():
  """f_LSA returns [d+1, n+1], equals E when W_PV = 0 (the residual of eq. (3))."""
  e = prompts.embed(_prompt())
  params = _full_params()
  out = lsa.apply(params, e)
  assert out.shape == e.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  zero_pv = params._replace(w_pv=jnp.zeros_like(params.w_pv))
  np.testing.assert_array_equal(lsa.apply(zero_pv, e), e)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_predict_eq6_equals_bottom_right_of_eq3(seed):
  """eq. (6) prediction == [f_LSA(E)]_{d+1, n+1} computed directly from eq. (3).

  Fails if predict_from_gram drops a block (w_12^KQ... last row of W_KQ, w_21^PV) or uses the
  wrong normalisation rho. rtol 1e-4: the two paths sum O(d n) float32 products in different
  orders, and random full weights make the result an O(10) difference of O(10) terms.
  """
  params, p = _full_params(seed), _prompt(seed + 10)
  direct = lsa.apply(params, prompts.embed(p))[D, N]
  np.testing.assert_allclose(lsa.predict(params, p), direct, rtol=1e-4, atol=1e-4)


def test_predict_stats_equals_predict():
  """predict_stats on the sufficient statistics of a noiseless prompt == predict on the prompt
  (rtol 1e-4: float32 reassociation, as above). Fails if the stats path mis-builds the Gram."""
  params = _full_params(3)
  w = jnp.array([0.5, -1.0, 2.0])
  p = regression.linear_prompt(jax.random.key(4), n=N, cov=FULL, w=w)
  stats = prompts.LinearPromptStats(x_factor=p.x.T / np.sqrt(N), w=w, x_query=p.x_query,
                                    y_query=p.y_query, n=N)
  np.testing.assert_allclose(lsa.predict_stats(params, stats), lsa.predict(params, p),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(lsa.squared_error_stats(params, stats),
                             lsa.squared_error(params, p), rtol=1e-3, atol=1e-4)


def test_predict_stats_factorised_equals_gram_path():
  """predict_stats applies S = F F^T through F (a d x d Wishart factor here) and equals
  eq. (6) on the full Gram of gram_from_stats (rtol 1e-5: float32 reassociation). Fails if the
  identity (v_1 + v_2 w)^T S (u_1 + u_2 w) + (v_1.q)(q.u_1)/n drops a cross term or the
  q q^T / n term; random full weights make every block count."""
  params = _full_params(9)
  stats = regression.sample_linear_stats(jax.random.key(11), n=N, cov=FULL)
  via_gram = lsa.predict_from_gram(params, prompts.gram_from_stats(stats), stats.x_query)
  np.testing.assert_allclose(lsa.predict_stats(params, stats), via_gram, rtol=1e-5, atol=1e-5)


def test_predictions_invariant_to_permuting_context_pairs():
  """LSA reads the context only through sums over i: permuting (x_i, y_i) pairs leaves the
  prediction unchanged (rtol 1e-5: float32 summation order). Fails if x and y are permuted
  separately or the query is mixed into the context."""
  params, p = _full_params(5), _prompt(6)
  perm = jax.random.permutation(jax.random.key(7), N)
  p_perm = p.replace(x=p.x[perm], y=p.y[perm])
  np.testing.assert_allclose(lsa.predict(params, p_perm), lsa.predict(params, p), rtol=1e-5,
                             atol=1e-5)
  p_bad = p.replace(y=p.y[perm])
  assert not np.allclose(lsa.predict(params, p_bad), lsa.predict(params, p), rtol=1e-3)


def test_predict_jit_vmap_matches_eager():
  """jit(vmap(predict)) equals per-prompt predict (rtol 1e-5: XLA fusion reorders sums)."""
  params = _full_params(8)
  keys = jax.random.split(jax.random.key(9), 4)
  batch = jax.vmap(lambda k: regression.linear_prompt(k, n=N, cov=FULL))(keys)
  batched = jax.jit(jax.vmap(lsa.predict, in_axes=(None, 0)))(params, batch)
  assert batched.shape == (4,)
  for i in range(4):
    one = lsa.predict(params, jax.tree.map(lambda a: a[i], batch))
    np.testing.assert_allclose(batched[i], one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('sigma', [0.1, 1.0])
def test_init_assumption3(sigma):
  """W_KQ(0) = sigma [[Theta Theta^T, 0], [0, 0]] with ||Theta Theta^T||_F = 1, Theta Theta^T
  symmetric PSD; W_PV(0) = sigma e_{d+1} e_{d+1}^T. Norm rtol 1e-5 (float32)."""
  params = lsa.init(jax.random.key(10), D, sigma)
  w_kq, w_pv = np.asarray(params.w_kq), np.asarray(params.w_pv)
  assert w_kq.shape == w_pv.shape == (D + 1, D + 1)
  top = w_kq[:D, :D] / sigma
  np.testing.assert_allclose(np.linalg.norm(top), 1.0, rtol=1e-5)
  np.testing.assert_allclose(top, top.T, atol=1e-7)
  assert np.linalg.eigvalsh(top).min() >= -1e-6
  np.testing.assert_array_equal(w_kq[D, :], 0.0)
  np.testing.assert_array_equal(w_kq[:, D], 0.0)
  expected_pv = np.zeros((D + 1, D + 1), np.float32)
  expected_pv[D, D] = sigma
  np.testing.assert_array_equal(w_pv, expected_pv)


def test_init_same_key_same_params():
  """Same key -> same params; another key -> different Theta."""
  a, b = lsa.init(jax.random.key(0), D, 0.5), lsa.init(jax.random.key(0), D, 0.5)
  c = lsa.init(jax.random.key(1), D, 0.5)
  np.testing.assert_array_equal(a.w_kq, b.w_kq)
  assert not np.array_equal(a.w_kq, c.w_kq)


def test_product_is_the_matrix_the_prediction_applies():
  """With every block but W_11^KQ and w_22^PV zero, the prediction of eq. (3) (lsa.apply, the
  bottom-right output token) is v^T P x_query with v = (1/n) sum_i y_i x_i, as eq. (12) reads
  it with P = product(params); v^T P x_query is formed here in float64 NumPy from the prompt.

  W_11^KQ is random and not symmetric, so a transposed product fails, as does one read from
  another block (zero here) or scaled by another w^PV entry; rtol 1e-4: float32 sums of O(d n)
  terms in eq. (3) against float64.
  """
  k1, k2 = jax.random.split(jax.random.key(11))
  w_11 = jax.random.normal(k1, (D, D))
  params = lsa.Params(w_kq=jnp.zeros((D + 1, D + 1)).at[:D, :D].set(w_11),
                      w_pv=jnp.zeros((D + 1, D + 1)).at[D, D].set(1.7))
  assert not np.allclose(w_11, w_11.T, atol=0.1)
  p = _prompt(12)
  x, y, x_query = (np.asarray(a, np.float64) for a in (p.x, p.y, p.x_query))
  v = (y[:, None] * x).mean(0)
  direct = lsa.apply(params, prompts.embed(p))[D, N]
  np.testing.assert_allclose(v @ np.asarray(lsa.product(params), np.float64) @ x_query, direct,
                             rtol=1e-4, atol=1e-6)
