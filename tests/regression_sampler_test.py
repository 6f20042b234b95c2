"""Tests of icl_jax.samplers.regression: shapes, determinism and moments.

Moment checks are Monte Carlo with fixed keys. Each compares an empirical mean with its exact
value and fails when they differ by more than 4 standard errors (two-sided false-alarm rate
~6e-5 per entry for a near-Gaussian mean). Standard errors come from exact fourth moments where
those are simple (Var(x_i x_j) = L_ii L_jj + L_ij^2 for Gaussian x), otherwise from the sample.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax.samplers import regression

D = 3
DIAG = jnp.array([0.5, 1.0, 2.0])
FULL = jnp.array([[1.0, 0.4, -0.3], [0.4, 0.8, 0.2], [-0.3, 0.2, 1.5]])


def _batch(sampler, key, num, **kwargs):
  """num prompts (or stats) from num split keys, jitted once."""
  fn = jax.jit(jax.vmap(functools.partial(sampler, **kwargs)))
  return jax.tree.map(np.asarray, fn(jax.random.split(key, num)))


def _matrix(cov):
  cov = np.asarray(cov)
  return np.diag(cov) if cov.ndim == 1 else cov


def _assert_within(measured, expected, stderr, k=4.0):
  measured, expected, stderr = (np.asarray(a, np.float64) for a in (measured, expected, stderr))
  z = np.abs(measured - expected) / stderr
  assert np.all(z <= k), (f'max |z| = {z.max():.2f} > {k}\nmeasured {measured}\n'
                          f'expected {expected}\nstderr {stderr}')


def _assert_mean_within(samples, expected, k=4.0):
  """Sample mean (axis 0) vs expected within k sample standard errors."""
  samples = np.asarray(samples, np.float64)
  _assert_within(samples.mean(0), expected, samples.std(0) / np.sqrt(samples.shape[0]), k)


def test_shapes_dtypes_finite():
  """Fails if a field has the wrong shape/dtype or a draw is not finite."""
  p = regression.linear_prompt(jax.random.key(0), n=5, cov=DIAG)
  assert p.x.shape == (5, D) and p.y.shape == (5,) and p.x_query.shape == (D,)
  assert p.y_query.shape == ()
  s = regression.sample_linear_stats(jax.random.key(0), n=5, cov=FULL)
  assert s.x_factor.shape == (D, D) and s.xx.shape == (D, D) and s.w.shape == (D,) and s.x_query.shape == (D,)
  assert s.y_query.shape == () and s.n == 5
  for leaf in jax.tree.leaves(p) + jax.tree.leaves(s):
    assert leaf.dtype == jnp.float32
    assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize('sampler', ['linear', 'stats', 'random_cov', 'orthogonal'])
def test_same_key_same_prompt_different_key_differs(sampler):
  """One prompt per key: fails if a sampler uses hidden state or ignores (part of) its key."""
  fn = jax.jit({
      'linear': lambda k: regression.linear_prompt(k, n=4, cov=FULL, noise_std=0.1),
      'stats': lambda k: regression.sample_linear_stats(k, n=4, cov=FULL),
      'random_cov': lambda k: regression.random_covariance_prompt(k, n=4, d=D),
      'orthogonal': lambda k: regression.linear_prompt(k, n=2, cov=DIAG, query='orthogonal'),
  }[sampler])
  a, b, c = fn(jax.random.key(1)), fn(jax.random.key(1)), fn(jax.random.key(2))
  for la, lb, lc in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(la, lc)


@pytest.mark.parametrize('cov', [DIAG, FULL], ids=['diag', 'full'])
def test_covariate_moments(cov):
  """Pooled x_i, and x_query, have mean 0 and covariance Lambda (4 exact standard errors).

  Fails on a wrong square root of Lambda (R^T in place of R for a full covariance, or Lambda
  in place of its square root on the diagonal) or a query drawn from another law.
  """
  p = _batch(regression.linear_prompt, jax.random.key(3), 20000, n=4, cov=cov)
  lam = _matrix(cov)
  d_l = np.diag(lam)
  for x in (p.x.reshape(-1, D), p.x_query):
    m = x.shape[0]
    x = x.astype(np.float64)
    _assert_within(x.mean(0), 0.0, np.sqrt(d_l / m))
    _assert_within(x.T @ x / m, lam, np.sqrt((np.outer(d_l, d_l) + lam**2) / m))


def test_noiseless_labels_are_linear_in_fixed_w():
  """y_i = <w, x_i> and y_query = <w, x_query> exactly (float32 rounding, rtol 1e-5)."""
  w = jnp.array([1.0, -2.0, 0.5])
  p = _batch(regression.linear_prompt, jax.random.key(4), 8, n=6, cov=FULL, w=w)
  np.testing.assert_allclose(p.y, p.x @ np.asarray(w), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(p.y_query, p.x_query @ np.asarray(w), rtol=1e-5, atol=1e-5)


def test_task_vector_is_standard_normal():
  """With w=None, w ~ N(0, I): recovered exactly from n = d noiseless points, its mean is 0 and
  its second moment I within 4 exact standard errors (Var(w_i w_j) = 1 + delta_ij)."""
  p = _batch(regression.linear_prompt, jax.random.key(5), 20000, n=D, cov=DIAG)
  w = np.linalg.solve(p.x.astype(np.float64), p.y.astype(np.float64)[:, :, None])[..., 0]
  m = w.shape[0]
  _assert_within(w.mean(0), 0.0, np.full(D, 1 / np.sqrt(m)))
  _assert_within(w.T @ w / m, np.eye(D), np.sqrt((1 + np.eye(D)) / m))


def test_noise_variance():
  """Noisy labels: residuals y - <w, x> (context and query) have mean 0 and variance
  noise_std^2 (4 exact standard errors; Var(eps^2) = 2 s^4). Fails if the noise is missing,
  mis-scaled (variance vs std), or left off the query label."""
  w, s = jnp.array([1.0, 0.0, -1.0]), 0.3
  p = _batch(regression.linear_prompt, jax.random.key(6), 20000, n=3, cov=DIAG, w=w,
             noise_std=s)
  for r in ((p.y - p.x @ np.asarray(w)).reshape(-1), p.y_query - p.x_query @ np.asarray(w)):
    r = r.astype(np.float64)
    m = r.size
    _assert_within(r.mean(), 0.0, s / np.sqrt(m))
    _assert_within(np.mean(r**2), s**2, np.sqrt(2 * s**4 / m))


def test_orthogonal_query_is_orthogonal_to_context_span():
  """query='orthogonal' with n < d: X x_query = 0 and x_query is not zero.

  Fails if the projection keeps a component in span{x_i} (the dot would be O(|x| |v|)).
  Tolerance 1e-5 |x_i| sqrt(tr Lambda): float32 rounding of the projection is ~1e-7 of the
  unprojected draw v, whose norm is about sqrt(tr Lambda).
  """
  p = _batch(regression.linear_prompt, jax.random.key(7), 64, n=2, cov=FULL, query='orthogonal')
  dots = np.einsum('bnd,bd->bn', p.x, p.x_query)
  scale = np.linalg.norm(p.x, axis=-1) * np.sqrt(np.trace(_matrix(FULL)))
  assert np.all(np.abs(dots) <= 1e-5 * scale)
  assert np.all(np.linalg.norm(p.x_query, axis=-1) > 1e-3)


@pytest.mark.parametrize('n,d', [(2, 3), (5, 20), (19, 20), (25, 20)])
def test_orthogonal_to_span_matches_float64_projection(n, d):
  """orthogonal_to_span (Gram-Schmidt twice) vs the float64 projector I - X^T (X X^T)^-1 X
  (numpy pinv), 32 random Gaussian (X, v); n >= d must give 0. Tolerance 1e-4 |v|: float32
  Gram-Schmidt loses up to ~cond(X) eps = 1.3e-5 here (cond(X) <= 220 at n = 19, d = 20; the
  error measured is <= 3e-7). Fails on a projection onto the span instead of its complement, a
  basis vector left unnormalised, or n >= d rows fed past the d-th (a non-projector). The
  jitted vmapped program must have no custom call: Gram-Schmidt was kept over LAPACK QR
  because it measured faster (its docstring), and a QR would need `icl_jax.linalg`."""
  kx, kv = jax.random.split(jax.random.key(21))
  x = jax.random.normal(kx, (32, n, d))
  v = jax.random.normal(kv, (32, d))
  fn = jax.jit(jax.vmap(regression.orthogonal_to_span))
  assert 'custom_call' not in fn.lower(x, v).as_text()
  got = np.asarray(fn(x, v), np.float64)
  x64, v64 = np.asarray(x, np.float64), np.asarray(v, np.float64)
  want = v64 - np.einsum('bij,bj->bi', np.linalg.pinv(x64) @ x64, v64)
  err = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(v64, axis=-1)
  assert np.all(err <= 1e-4), err.max()
  if n >= d:
    assert np.all(np.linalg.norm(got, axis=-1) <= 1e-4 * np.linalg.norm(v64, axis=-1))


def test_gaussian_with_batched_full_covariances_matches_numpy_cholesky():
  """`gaussian` vmapped over 300 [d, d] covariances at d = 20 (so `_times_cov_sqrt`'s Cholesky
  goes through icl_jax.linalg in serial batches of 74, with a tail): each draw is L z with L
  numpy's float64 Cholesky factor of its covariance and z the same standard normals.
  Tolerance 1e-4 |L z| (float32 potrf of cond ~10). Fails if factors and draws are paired with
  the wrong covariance when the batches are reassembled."""
  d, num = 20, 300
  k_a, k_z = jax.random.split(jax.random.key(31))
  a = jax.random.normal(k_a, (num, 2 * d, d))
  covs = jnp.swapaxes(a, -1, -2) @ a / (2 * d) + jnp.broadcast_to(0.1 * jnp.eye(d), (num, d, d))
  keys = jax.random.split(k_z, num)
  x = np.asarray(jax.jit(jax.vmap(lambda k, c: regression.gaussian(k, 1, c)[0]))(keys, covs))
  z = np.asarray(jax.vmap(lambda k: jax.random.normal(k, (1, d))[0])(keys), np.float64)
  want = np.einsum('bij,bj->bi', np.linalg.cholesky(np.asarray(covs, np.float64)), z)
  np.testing.assert_allclose(x, want, atol=1e-4 * np.abs(want).max())


def test_gaussian_query_covariance():
  """query='gaussian' draws x_query ~ N(0, query_cov) (4 exact standard errors); fails if the
  training covariance is used for the query."""
  q_cov = jnp.array([4.0, 0.25, 1.0])
  p = _batch(regression.linear_prompt, jax.random.key(8), 20000, n=2, cov=DIAG,
             query='gaussian', query_cov=q_cov)
  x, m, lam = p.x_query.astype(np.float64), p.x_query.shape[0], _matrix(q_cov)
  d_l = np.diag(lam)
  _assert_within(x.T @ x / m, lam, np.sqrt((np.outer(d_l, d_l) + lam**2) / m))


def test_labelled_prompt_applies_label_fn():
  """labelled_prompt labels are label_fn(x) (+ no noise here); the ReLU task is a fixed
  function of x. Fails if labels are computed on the wrong covariates."""
  f = regression.relu_network(jax.random.key(9), D, width=16)
  p = regression.labelled_prompt(jax.random.key(10), n=5, cov=DIAG, label_fn=f)
  np.testing.assert_allclose(p.y, jax.vmap(f)(p.x), rtol=1e-6)
  np.testing.assert_allclose(p.y_query, f(p.x_query), rtol=1e-6)
  g = regression.relu_network(jax.random.key(9), D, width=16)
  np.testing.assert_array_equal(f(p.x_query), g(p.x_query))


@pytest.mark.parametrize('law', regression.COVARIANCE_LAWS)
def test_random_diagonal_moments(law):
  """E lambda^k of random_diagonal equals law_moments (k = 1, 2, 3; scale 2 so the scaling is
  checked too) within 4 sample standard errors of 100k draws; entries are positive."""
  scale = 2.0
  lam = np.asarray(jax.jit(lambda k: regression.random_diagonal(k, 100_000, law, scale))(
      jax.random.key(11)), np.float64)
  assert np.all(lam > 0)
  _assert_mean_within(np.stack([lam, lam**2, lam**3], -1), regression.law_moments(law, scale))


def test_limit_factor_moments_exponential():
  """Exp(1) has moments (1, 2, 6): the source of the paper's 1/3."""
  assert regression.law_moments('exponential') == (1.0, 2.0, 6.0)


def test_bad_arguments_raise():
  """Unknown laws/queries and n < d for the Wishart draw raise ValueError naming the field."""
  with pytest.raises(ValueError, match='law'):
    regression.random_diagonal(jax.random.key(0), D, 'cauchy')
  with pytest.raises(ValueError, match='law'):
    regression.law_moments('cauchy')
  with pytest.raises(ValueError, match='query'):
    regression.random_covariance_prompt(jax.random.key(0), n=4, d=D, query='orthogonal')
  with pytest.raises(ValueError, match='query'):
    regression.linear_prompt(jax.random.key(0), n=4, cov=DIAG, query='sideways')
  with pytest.raises(ValueError, match='n >= d'):
    regression.sample_linear_stats(jax.random.key(0), n=2, cov=DIAG)


def _s_moments(s, lam, n):
  """Checks E S = Lambda and Var(S_ij) = (L_ij^2 + L_ii L_jj) / n (Wishart) within 4 sample
  standard errors; (S - L)^2 has a known mean, so no variance-estimator bias enters."""
  s = s.astype(np.float64)
  _assert_mean_within(s, lam)
  _assert_mean_within((s - lam)**2, (lam**2 + np.outer(np.diag(lam), np.diag(lam))) / n)


@pytest.mark.parametrize('df', [1, 2, 3, 10, 97])
def test_chi2_moments_and_law(df):
  """chi2 (Marsaglia-Tsang) vs the chi-square law: mean k, variance 2k, third central moment
  8k, each within 4 sample standard errors of 10^5 draws; and a two-sample Kolmogorov-Smirnov
  distance to numpy's chi-square generator below the 1e-4-level critical value
  sqrt(ln(2e4) / 2) sqrt(2 / m) ~ 0.01. df = 1 takes the alpha < 1 boost branch, df = 2 is
  alpha = 1 (the exponential). Fails on a wrong shape or scale (Gamma(k) for chi2(k), or
  Gamma(k / 2) without the factor 2) or a missing U^(1/alpha) boost (df = 1 then gives
  chi2(3)). Not on a slightly wrong acceptance test: the proposal d (1 + c x)^3 is itself within
  a few percent of Gamma(alpha) in law, below what 10^5 draws resolve (checked: rejecting ~5%
  more proposals passes), so this guards the method's structure, not its last digits."""
  m, dfs = 100_000, np.array([df], np.float64)
  x = _batch(lambda k: regression.chi2(k, dfs), jax.random.key(20), m).astype(np.float64)
  x = x[:, 0]
  _assert_mean_within(x, df)
  _assert_mean_within((x - df)**2, 2 * df)
  _assert_mean_within((x - df)**3, 8 * df)
  ref = np.sort(np.random.default_rng(df).chisquare(df, m))
  grid = np.sort(x)
  ks = np.max(np.abs(np.searchsorted(grid, ref, side='right') / m - np.arange(1, m + 1) / m))
  assert ks < np.sqrt(np.log(2e4) / 2) * np.sqrt(2 / m), ks


def test_chi2_rejects_small_df():
  """df < 1 would need another boost; fails if chi2 silently draws from a wrong law."""
  with pytest.raises(ValueError, match='df'):
    regression.chi2(jax.random.key(0), np.array([0.5, 2.0]))


@pytest.mark.parametrize('cov', [DIAG, FULL], ids=['diag', 'full'])
@pytest.mark.parametrize('n', [3, 7])
def test_wishart_stats_match_direct_sampler_in_distribution(n, cov):
  """sample_linear_stats (Bartlett) vs the direct sampler: both have E S = Lambda and the
  Wishart variance (L_ij^2 + L_ii L_jj)/n; the query and task have the same laws, and
  y_query = <w, x_query>. n = d exercises the chi2(1) corner of the Bartlett diagonal.
  Fails on an off-by-one in the chi-square degrees of freedom (shifts E S_dd by L/n) or a
  wrong factor order R B vs B R."""
  num, lam = 40000, _matrix(cov)
  st = _batch(regression.sample_linear_stats, jax.random.key(12), num, n=n, cov=cov)
  _s_moments(np.einsum('bik,bjk->bij', st.x_factor, st.x_factor), lam, n)
  direct = _batch(regression.linear_prompt, jax.random.key(13), num, n=n, cov=cov)
  _s_moments(np.einsum('bni,bnj->bij', direct.x, direct.x) / n, lam, n)
  np.testing.assert_allclose(st.y_query, np.einsum('bd,bd->b', st.w, st.x_query), rtol=1e-5,
                             atol=1e-5)
  q = st.x_query.astype(np.float64)
  d_l = np.diag(lam)
  _assert_within(q.T @ q / num, lam, np.sqrt((np.outer(d_l, d_l) + lam**2) / num))
  w = st.w.astype(np.float64)
  _assert_within(w.T @ w / num, np.eye(D), np.sqrt((1 + np.eye(D)) / num))


@pytest.mark.parametrize('query', ['same', 'independent'])
def test_random_covariance_prompt_query_law(query):
  """random_covariance_prompt: the query's second moment is E lambda = 1 either way, but
  E[x_query,i^2 x_1i^2] is E lambda^2 = 2 when the query shares Lambda_tau ('same') and
  (E lambda)^2 = 1 when it is independent. 4 sample standard errors of 40k prompts."""
  p = _batch(regression.random_covariance_prompt, jax.random.key(14), 40000, n=2, d=D,
             query=query)
  m1, m2, _ = regression.law_moments('exponential')
  q2 = p.x_query.astype(np.float64)**2
  _assert_mean_within(q2, np.full(D, m1))
  _assert_mean_within(q2 * p.x[:, 0, :].astype(np.float64)**2,
                      np.full(D, m2 if query == 'same' else m1**2))
