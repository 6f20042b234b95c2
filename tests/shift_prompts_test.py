"""Tests of the distribution-shift prompts of icl_jax.samplers.regression (Sec. 4.2).

`ReducedPrompt` must carry exactly what eq. (6) and OLS read from a prompt, so it is checked
against a materialised prompt reduced by a float64 QR (exact identities). `reduced_linear_prompt`
must draw it with the law of `linear_prompt`'s prompt: its moments are compared with exact
values (Gaussian / chi-square moments, Theorem 5, the OLS error s^2 (1 + d / (M - d - 1))) within
4 standard errors of the Monte-Carlo mean (two-sided false-alarm rate ~6e-5 per entry).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import estimators, population, prompts
from icl_jax.models import lsa
from icl_jax.samplers import regression
from icl_jax.theory import trained_lsa as th

D = 3
DIAG = np.array([0.5, 1.0, 2.0])
FULL = np.array([[1.0, 0.4, -0.3], [0.4, 0.8, 0.2], [-0.3, 0.2, 1.5]])
W = np.array([0.3, -0.2, 0.1])   # small: the noise dominates y, so its law is what is tested
NOISE = 1.5


def _random_params(seed, scale=0.4):
  """Weights with every block of (5) nonzero, so every entry of the Gram matrix is read."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  return lsa.Params(w_kq=scale * jax.random.normal(k1, (D + 1, D + 1)),
                    w_pv=scale * jax.random.normal(k2, (D + 1, D + 1)))


def _qr_reduce(p: prompts.Prompt) -> regression.ReducedPrompt:
  """The reduced prompt of a materialised one by a float64 QR: X = Q R, r = Q^T y."""
  x, y = np.asarray(p.x, np.float64), np.asarray(p.y, np.float64)
  q, r = np.linalg.qr(x)
  r_y = q.T @ y
  return regression.ReducedPrompt(
      x=jnp.asarray(r, jnp.float32), y=jnp.asarray(r_y, jnp.float32),
      y_residual_sq=jnp.asarray(y @ y - r_y @ r_y, jnp.float32), x_query=p.x_query,
      y_query=p.y_query, n=x.shape[0])


@pytest.mark.parametrize('seed', [0, 1])
def test_reduced_prompt_reads_like_the_full_prompt(seed):
  """gram() = prompts.gram of the n points, eq. (6) with any weights and OLS (on the d rows,
  and by least_squares) agree (float32 rounding). Fails if gram normalises by d instead of n,
  drops the query term or the residual label energy, or if OLS solves a different system."""
  p = regression.linear_prompt(jax.random.key(seed), n=40, cov=DIAG, w=jnp.asarray(W),
                               noise_std=NOISE)
  red = _qr_reduce(p)
  np.testing.assert_allclose(red.gram(), prompts.gram(p), rtol=1e-4, atol=1e-5)
  params = _random_params(seed)
  np.testing.assert_allclose(lsa.predict_from_gram(params, red.gram(), red.x_query),
                             lsa.predict(params, p), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(estimators.ols(red.prompt()), estimators.ols(p), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(red.x_query @ red.least_squares(), estimators.ols(p), rtol=1e-4,
                             atol=1e-5)


def _reduced_stats(rp, params):
  """Gram entries and their squares, y_query, and the LSA-optimum and OLS squared errors."""
  g = rp.gram()
  iu = jnp.triu_indices(D + 1)
  y_lsa = lsa.predict_from_gram(params, g, rp.x_query)
  return {'gram': g[iu], 'gram_sq': jnp.square(g[iu]), 'q2': jnp.square(rp.x_query),
          'lsa': jnp.square(y_lsa - rp.y_query),
          'ols': jnp.square(rp.x_query @ rp.least_squares() - rp.y_query)}


def _mc(sample, params, key, num=400_000):
  mean, se = population.mc_stats(_reduced_stats, sample, jax.random.key(key), (params,),
                                 num_samples=num, chunk=40_000)
  return jax.tree.map(lambda v: np.asarray(v, np.float64), (mean, se))


def _assert_z(mean, se, expected, k=4.0):
  z = np.abs(mean - np.asarray(expected, np.float64)) / se
  assert np.all(z <= k), f'max |z| = {z.max():.2f}: MC {mean} +- {se}, exact {expected}'


@pytest.mark.parametrize('cov', [DIAG, FULL], ids=['diag', 'full'])
def test_reduced_linear_prompt_has_the_law_of_the_full_prompt(cov):
  """M = 12, d = 3, fixed w, noise s = 1.5, 4e5 prompts. Exact truths: E gram =
  [[L (1 + 1/M), L w], [w^T L, sigma^2]] with sigma^2 = w^T L w + s^2; E (y^T y / M)^2 =
  sigma^4 (1 + 2 / M) (y^T y / sigma^2 ~ chi2(M)); the LSA optimum's error is Theorem 5
  (`test_error_linear`, derived independently of any sampler); OLS's is
  s^2 (1 + d / (M - d - 1)). Fails on a residual label energy of the wrong law (its variance is
  ~70% of Var y^T y here), noise of the wrong scale in r (the OLS error), or a wrong Wishart."""
  m, n_train = 12, 8
  lam = cov if cov.ndim == 2 else np.diag(cov)
  params = lsa.Params(*th.optimum(jnp.asarray(cov, jnp.float32), n_train))
  sample = functools.partial(regression.reduced_linear_prompt, n=m, cov=jnp.asarray(cov),
                             w=jnp.asarray(W), noise_std=NOISE)
  mean, se = _mc(sample, params, 1)
  sigma2 = W @ lam @ W + NOISE**2
  lw = (lam @ W)[:, None]
  gram = np.block([[lam * (1 + 1 / m), lw], [lw.T, np.full((1, 1), sigma2)]])
  iu = np.triu_indices(D + 1)
  _assert_z(mean['gram'], se['gram'], gram[iu])
  _assert_z(mean['gram_sq'][-1], se['gram_sq'][-1], sigma2**2 * (1 + 2 / m))
  _assert_z(mean['q2'], se['q2'], np.diag(lam))
  _assert_z(mean['lsa'], se['lsa'],
            th.test_error_linear(jnp.asarray(cov), n_train, m, jnp.asarray(W), NOISE))
  _assert_z(mean['ols'], se['ols'], NOISE**2 * (1 + D / (m - D - 1)))


def test_reduced_gaussian_query_and_random_task():
  """query='gaussian' draws x_query ~ N(0, Q) (E x_q x_q^T = Q, 4e5 draws), and w ~ N(0, I)
  gives E[y^T y / M] = tr(Lambda) (noiseless). Fails if the query ignores query_cov."""
  q_cov = np.array([2.0, 0.7, 0.3])
  sample = functools.partial(regression.reduced_linear_prompt, n=10, cov=jnp.asarray(DIAG),
                             query='gaussian', query_cov=jnp.asarray(q_cov))
  mean, se = _mc(sample, _random_params(0), 2)
  _assert_z(mean['q2'], se['q2'], q_cov)
  _assert_z(mean['gram'][-1], se['gram'][-1], DIAG.sum())


@pytest.mark.parametrize('cov', [DIAG, FULL], ids=['diag', 'full'])
def test_reduce_linear_stats_relabels_one_draw(cov):
  """Reductions of one Wishart draw share R, upper triangular (least_squares back-substitutes
  on it); noiseless labels are exactly r = R w and y_query = <w, x_query> (w = stats.w by
  default); a new query replaces x_query; the residual label energy is 0 without noise. Fails
  if w or x_query is not the one asked for, or if the Wishart factor stops being triangular."""
  st = regression.sample_linear_stats(jax.random.key(3), n=20, cov=jnp.asarray(cov))
  key = jax.random.key(4)
  same = regression.reduce_linear_stats(key, st)
  other = regression.reduce_linear_stats(key, st, w=jnp.asarray(W), x_query=jnp.ones(D))
  np.testing.assert_array_equal(same.x, other.x)
  np.testing.assert_array_equal(np.tril(same.x, -1), 0.0)
  np.testing.assert_allclose(same.x.T @ same.x, 20 * st.xx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(same.y, same.x @ st.w, rtol=1e-6)
  np.testing.assert_allclose(same.y_query, st.y_query, rtol=1e-6)
  np.testing.assert_allclose(other.y, other.x @ W, rtol=1e-6)
  np.testing.assert_allclose(other.y_query, W.sum(), rtol=1e-5)
  assert float(same.y_residual_sq) == 0.0


@pytest.mark.parametrize('reduced', [False, True], ids=['prompt', 'reduced'])
def test_scale_covariates(reduced):
  """Covariates times c with labels <w, c x>: the fields equal those of the prompt built from
  c x directly; the Thm 4 optimum's prediction scales by c^3 (the slope c^2 of Sec. 4.2 times
  the label's c); OLS by c (it recovers w exactly, M >= d). Fails if a label is not rescaled."""
  c, w = 2.5, jnp.asarray(W)
  key = jax.random.key(5)
  if reduced:
    p = regression.reduced_linear_prompt(key, n=30, cov=jnp.asarray(DIAG), w=w)
    predict = lambda prm, q: lsa.predict_from_gram(prm, q.gram(), q.x_query)  # noqa: E731
    ols = lambda q: estimators.ols(q.prompt())  # noqa: E731
  else:
    p = regression.linear_prompt(key, n=30, cov=jnp.asarray(DIAG), w=w)
    predict, ols = lsa.predict, estimators.ols
  s = regression.scale_covariates(p, c)
  np.testing.assert_allclose(s.x, c * p.x, rtol=1e-6)
  np.testing.assert_allclose(s.y, (c * p.x) @ w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(s.y_query, (c * p.x_query) @ w, rtol=1e-4, atol=1e-5)
  params = lsa.Params(*th.optimum(jnp.asarray(DIAG, jnp.float32), 20))
  np.testing.assert_allclose(predict(params, s), c**3 * predict(params, p), rtol=1e-4)
  np.testing.assert_allclose(ols(s), s.y_query, rtol=1e-3, atol=1e-4)


def test_reduced_prompt_refuses_an_orthogonal_query():
  """A reduced prompt has no points to be orthogonal to: ValueError, not a silent 'same'."""
  with pytest.raises(ValueError, match='orthogonal'):
    regression.reduced_linear_prompt(jax.random.key(0), n=5, cov=jnp.asarray(DIAG),
                                     query='orthogonal')
