"""Tests of icl_jax.samplers.kernel_gp: Haar U, Sigma = U^T D U and its roots, sphere covariates,
K_+ of Definition 3.3, K-GP labels, Example 8's ReLU-network labels and pad_context.

Truth is NumPy float64 from the paper's formulas or a closed-form moment; Monte-Carlo checks state
their tolerance as a multiple of the sample's own standard error (z = 5: a false failure has
probability ~1e-6 per check, while the bugs named in each docstring move the mean by many SE).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import kernels
from icl_jax.prompts import Prompt
from icl_jax.samplers import kernel_gp

D = 5
Z = 5.0   # Monte-Carlo tolerance in standard errors


def _mc_close(samples, expected, what):
  """Mean of samples (axis 0) within Z standard errors of expected, entrywise."""
  samples = np.asarray(samples, np.float64)
  mean = samples.mean(axis=0)
  se = samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])
  err = np.abs(mean - expected)
  # An exact zero-variance entry (e.g. ||xi||^2) must match to rounding.
  bound = Z * se + 1e-6
  assert np.all(err <= bound), (what, mean, expected, se)


OTHER_DIAG = (3.0, 0.5, 0.1, 1.0, 2.0)


@pytest.fixture(scope='module')
def basics():
  """One program (each jitted sampler costs a compilation): 20,000 Haar matrices, 20,000
  sphere points, Sigma for Appendix H.1's D (keys 1 and 4) and for OTHER_DIAG (key 2)."""

  @jax.jit
  def draw():
    return dict(
        haar=jax.vmap(lambda k: kernel_gp.haar_orthogonal(k, D))(
            jax.random.split(jax.random.key(0), 20000)),
        sphere=kernel_gp.sphere(jax.random.key(3), 20000, D),
        paper=kernel_gp.covariance(jax.random.key(1)),
        other=kernel_gp.covariance(jax.random.key(2), OTHER_DIAG),
        cov=kernel_gp.covariance(jax.random.key(4)))

  return draw()


@pytest.fixture(scope='module')
def haar_batch(basics):
  return np.asarray(basics['haar'], np.float64)


def test_haar_orthogonal_is_orthogonal(haar_batch):
  """U U^T = U^T U = I for every draw (atol 1e-5: float32 Householder QR). Fails if the sign fix
  scales columns by anything but +-1."""
  eye = np.broadcast_to(np.eye(D), haar_batch.shape)
  np.testing.assert_allclose(haar_batch @ np.swapaxes(haar_batch, 1, 2), eye, atol=1e-5)
  np.testing.assert_allclose(np.swapaxes(haar_batch, 1, 2) @ haar_batch, eye, atol=1e-5)


def test_haar_orthogonal_moments(haar_batch):
  """Haar measure on O(d), 20,000 keys: E U_ij = 0, E U_ij^2 = 1/d for every entry (each
  column is uniform on the sphere), E tr U = 0 and E (tr U)^2 = 1 (the number of fixed points
  of a Haar rotation's character: int |tr|^2 = 1 for d >= 2). Without the diag-R sign fix
  (Mezzadri 2007), LAPACK's QR makes diag Q biased (Q_11 = -|g_11| / ||g_1|| < 0 always), so
  E U_11 ~ -0.4: 100 SE off. Tolerance Z = 5 SE."""
  u = haar_batch
  _mc_close(u.reshape(len(u), -1), np.zeros(D * D), 'E U_ij')
  _mc_close(np.square(u).reshape(len(u), -1), np.full(D * D, 1.0 / D), 'E U_ij^2')
  tr = np.trace(u, axis1=1, axis2=2)
  _mc_close(tr, 0.0, 'E tr U')
  _mc_close(np.square(tr), 1.0, 'E (tr U)^2')


def test_covariance_roots_and_spectrum(basics):
  """Sigma = U^T D U with D = Appendix H.1's diag(1, 1, 0.25, 2.25, 1): Sigma symmetric,
  sqrt^2 = Sigma, inv_sqrt Sigma inv_sqrt = I, eigenvalues = D (float64 eigvalsh; atol 1e-5:
  float32 products of O(1) matrices). Also for another D. Fails on sqrt built from D instead
  of sqrt(D), U and U^T swapped in one of the three (then they do not commute), or a D
  permuted against the roots."""
  for diag, cov in ((kernel_gp.PAPER_DIAG, basics['paper']), (OTHER_DIAG, basics['other'])):
    s, r, ir = (np.asarray(a, np.float64) for a in cov)
    np.testing.assert_allclose(s, s.T, atol=1e-6)
    np.testing.assert_allclose(r @ r, s, atol=1e-5)
    np.testing.assert_allclose(ir @ s @ ir, np.eye(D), atol=1e-5)
    np.testing.assert_allclose(r @ ir, np.eye(D), atol=1e-5)
    np.testing.assert_allclose(np.linalg.eigvalsh(s), np.sort(diag), atol=1e-5)
    np.testing.assert_allclose(np.linalg.eigvalsh(r), np.sort(np.sqrt(diag)), atol=1e-5)
    assert not np.allclose(s, np.diag(np.diag(s)), atol=1e-2)   # U really rotates


def test_sphere_points_have_unit_norm_and_isotropic_second_moment(basics):
  """20,000 points: ||xi|| = 1 (rtol 1e-6) and E xi xi^T = I / d within Z SE entrywise. Fails
  on Gaussian (unnormalised) points, whose second moment is I, or on a normalisation over the
  wrong axis."""
  xi = np.asarray(basics['sphere'], np.float64)
  assert xi.shape == (20000, D)
  np.testing.assert_allclose(np.linalg.norm(xi, axis=1), 1.0, rtol=1e-6)
  _mc_close(np.einsum('ni,nj->nij', xi, xi).reshape(len(xi), -1), (np.eye(D) / D).ravel(),
            'E xi xi^T')


@pytest.fixture(scope='module')
def cov(basics):
  return basics['cov']


N_EXP = 5      # context length of the exp-kernel batch
EXP_KEYS = jax.random.split(jax.random.key(5), 4000)


@pytest.fixture(scope='module')
def exp_sampler(cov):
  """jit(vmap(kernel_gp.sample)) for the exp kernel, n = N_EXP (one compilation, shared)."""
  return jax.jit(jax.vmap(lambda k: kernel_gp.sample(k, n=N_EXP, cov=cov,
                                                     gram=kernels.gram_fn('exp'))))


@pytest.fixture(scope='module')
def exp_batch(exp_sampler):
  return exp_sampler(EXP_KEYS)


def test_sample_covariates_are_sigma_sqrt_xi_with_second_moment_sigma_over_d(cov, exp_batch):
  """kernel_gp.sample: xi rows have norm 1, x = Sigma^{1/2} xi (context and query), so
  E x x^T = Sigma / d (Appendix H.1) within Z SE entrywise over 4,000 prompts x 6 points; and
  k_plus is K(xi) of the (PSD) exp kernel. Fails if x = xi (no Sigma), x = Sigma xi, or the
  kernel is evaluated on x instead of xi = Sigma^{-1/2} x (Example 7)."""
  kp, n = exp_batch, N_EXP
  xi = np.asarray(kp.xi, np.float64)
  sq = np.asarray(cov.sqrt, np.float64)
  np.testing.assert_allclose(np.linalg.norm(xi, axis=-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(kp.prompt.x, xi[:, :n] @ sq, atol=1e-6)
  np.testing.assert_allclose(kp.prompt.x_query, xi[:, n] @ sq, atol=1e-6)
  x_all = np.concatenate([np.asarray(kp.prompt.x), np.asarray(kp.prompt.x_query)[:, None]], 1)
  x_all = x_all.reshape(-1, D).astype(np.float64)
  _mc_close(np.einsum('ni,nj->nij', x_all, x_all).reshape(len(x_all), -1),
            (np.asarray(cov.sigma, np.float64) / D).ravel(), 'E x x^T')
  k_np = np.exp(np.einsum('bid,bjd->bij', xi, xi))   # PSD: K_+ = K
  np.testing.assert_allclose(kp.k_plus, k_np, rtol=1e-5, atol=1e-5)
  assert kp.prompt.y.shape == (4000, n) and kp.prompt.y_query.shape == (4000,)


def test_sampled_labels_whiten_to_standard_normal(exp_batch):
  """The whole sampler (exp kernel, n = 5, 4,000 prompts, X random per prompt): whitening each
  prompt's labels by the Cholesky factor of K(xi) computed in NumPy float64 from the prompt's
  xi gives z with E z = 0 and E z z^T = I (Z SE entrywise). Fails if the labels do not come
  from N(0, K_+(xi)) of the same prompt's points (e.g. the query's label drawn separately, or
  the kernel applied to x)."""
  kp, n = exp_batch, N_EXP
  xi = np.asarray(kp.xi, np.float64)
  chol = np.linalg.cholesky(np.exp(np.einsum('bid,bjd->bij', xi, xi)))
  y = np.concatenate([np.asarray(kp.prompt.y), np.asarray(kp.prompt.y_query)[:, None]], 1)
  z = np.linalg.solve(chol, y.astype(np.float64)[:, :, None])[:, :, 0]
  _mc_close(z, np.zeros(n + 1), 'E z')
  _mc_close(np.einsum('ni,nj->nij', z, z).reshape(len(z), -1), np.eye(n + 1).ravel(), 'E z z^T')


def test_same_key_same_prompt(exp_sampler, exp_batch):
  """One prompt per key: the same keys give identical prompts (a second call), different keys
  different ones."""
  again = exp_sampler(EXP_KEYS)
  for f in (lambda p: p.prompt.x, lambda p: p.prompt.y, lambda p: p.k_plus):
    np.testing.assert_array_equal(f(again), f(exp_batch))
    assert not np.allclose(f(exp_batch)[0], f(exp_batch)[1])


def _np_psd_part(k):
  w, v = np.linalg.eigh(np.asarray(k, np.float64))
  return (v * np.abs(w)) @ v.T, w


def _np_sphere(rng, num):
  g = rng.standard_normal((num, D))
  return g / np.linalg.norm(g, axis=1, keepdims=True)


@pytest.fixture(scope='module')
def grams_and_parts():
  """Linear, exp and relu Gram matrices of 10 sphere points each (NumPy), and psd_part of each
  (float32, one vmapped call)."""
  rng = np.random.default_rng(6)
  ips = [u @ u.T for u in (_np_sphere(rng, 10) for _ in range(3))]
  grams = dict(linear=ips[0], exp=np.exp(ips[1]), relu=np.maximum(ips[2], 0.0))
  stack = jnp.asarray(np.stack(list(grams.values())), jnp.float32)
  parts = np.asarray(jax.jit(jax.vmap(kernel_gp.psd_part))(stack), np.float64)
  return grams, dict(zip(grams, parts))


def test_psd_part_is_k_for_psd_kernels(grams_and_parts):
  """Definition 3.3: K_+ = K when K is PSD: the linear Gram of 10 points in d = 5 (rank 5,
  five zero eigenvalues) and the exp Gram. atol 1e-5 relative to max |K| (~e): float32 eigh.
  Fails if K_+ squares or square-roots the eigenvalues, or drops small ones."""
  grams, parts = grams_and_parts
  for name in ('linear', 'exp'):
    k = grams[name]
    np.testing.assert_allclose(parts[name], k, atol=1e-5 * np.abs(k).max())


def test_psd_part_of_relu_kernel_is_the_absolute_value(grams_and_parts):
  """The relu Gram is not PSD (this one has a negative eigenvalue, asserted so the test means
  something); K_+ = V |Lambda| V^T against NumPy float64: PSD, same eigenvectors (commutes
  with K), eigenvalues |lambda|. Fails on clipping negative eigenvalues to 0 (max(l, 0)) or
  on keeping K as is."""
  grams, parts = grams_and_parts
  k = grams['relu']
  want, w = _np_psd_part(k)
  assert w.min() < -1e-2, w
  got = parts['relu']
  np.testing.assert_allclose(got, want, atol=2e-5)
  np.testing.assert_allclose(np.linalg.eigvalsh(got), np.sort(np.abs(w)), atol=2e-5)
  np.testing.assert_allclose(got @ k, k @ got, atol=5e-5)


def test_gaussian_labels_covariance_is_k_plus_for_fixed_x(grams_and_parts):
  """Fixed X (10 sphere points), relu kernel (K_+ != K): 40,000 label draws
  `gaussian_labels(key, K_+)`; the sample mean is 0 and the sample covariance equals K_+
  entrywise within Z SE (SE of y_i y_j from the draws themselves). Fails on labels drawn from
  K instead of K_+ (the negative eigenvalue's direction), a missing square root on the
  eigenvalues, or V^T in place of V."""
  k_plus = jnp.asarray(grams_and_parts[1]['relu'], jnp.float32)
  y = np.asarray(jax.jit(jax.vmap(kernel_gp.gaussian_labels, in_axes=(0, None)))(
      jax.random.split(jax.random.key(9), 40000), k_plus), np.float64)
  _mc_close(y, np.zeros(10), 'E y')
  _mc_close(np.einsum('ni,nj->nij', y, y).reshape(len(y), -1),
            np.asarray(k_plus, np.float64).ravel(), 'E y y^T')


def _arccos1(u, v):
  """E relu(<g, u>) relu(<g, v>), g ~ N(0, I): the degree-1 arc-cosine kernel (Cho & Saul 2009),
  ||u|| ||v|| (sin t + (pi - t) cos t) / (2 pi), t the angle between u and v."""
  nu, nv = np.linalg.norm(u, axis=-1), np.linalg.norm(v, axis=-1)
  cos = np.clip(np.sum(u * v, axis=-1) / (nu * nv), -1.0, 1.0)
  t = np.arccos(cos)
  return nu * nv * (np.sin(t) + (np.pi - t) * cos) / (2 * np.pi)


def test_relu_network_prompt_labels_equal_formula(cov):
  """Example 8: y = <theta_2, relu(theta_1 x)>, theta i.i.d. N(0, 1) per prompt, x = Sigma^{1/2}
  xi. (1) The first prompt's labels equal the formula with its own theta (rebuilt from the
  documented key split, NumPy float64; rtol 1e-5). (2) Moments over 20,000 prompts (width 4):
  E y_i y_j = width x arccos1(x_i, x_j) for (query, query) and (first context point, query),
  within Z SE; this holds whatever the key handling. Fails on theta_1 transposed, a missing
  relu (E y^2 would be width ||x||^2, twice as large) or one theta shared by all prompts."""
  n, width = 3, 4
  keys = jax.random.split(jax.random.key(14), 20000)

  @jax.jit
  def draw(keys):
    ps = jax.vmap(lambda k: kernel_gp.relu_network_prompt(k, n=n, cov=cov, width=width))(keys)
    k_xi, k_1, k_2 = jax.random.split(keys[0], 3)
    return ps, (kernel_gp.sphere(k_xi, n + 1, D), jax.random.normal(k_1, (width, D)),
                jax.random.normal(k_2, (width,)))

  ps, (xi0, th1, th2) = draw(keys)
  x = np.asarray(xi0, np.float64) @ np.asarray(cov.sqrt, np.float64)
  y = np.maximum(x @ np.asarray(th1, np.float64).T, 0.0) @ np.asarray(th2, np.float64)
  np.testing.assert_allclose(ps.x[0], x[:n], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ps.x_query[0], x[n], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ps.y[0], y[:n], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ps.y_query[0], y[n], rtol=1e-5, atol=1e-5)
  # Moments: per prompt, y_i y_j - width * arccos1(x_i, x_j) has mean 0.
  xq, x0 = np.asarray(ps.x_query, np.float64), np.asarray(ps.x[:, 0], np.float64)
  yq, y0 = np.asarray(ps.y_query, np.float64), np.asarray(ps.y[:, 0], np.float64)
  _mc_close(yq * yq - width * _arccos1(xq, xq), 0.0, 'E y_q^2')
  _mc_close(y0 * yq - width * _arccos1(x0, xq), 0.0, 'E y_0 y_q')


def test_pad_context():
  """pad_context: x, y padded with zeros to n_max slots, the real context and the query
  unchanged, mask = [True] * n + [False] * (n_max - n); n = n_max pads nothing; n > n_max raises
  ValueError naming both. Fails on padding in front or a mask that marks the padded slots."""
  rng = np.random.default_rng(0)
  p = Prompt(x=jnp.asarray(rng.standard_normal((3, D)), jnp.float32),
             y=jnp.asarray(rng.standard_normal(3), jnp.float32),
             x_query=jnp.asarray(rng.standard_normal(D), jnp.float32), y_query=jnp.float32(0.7))
  padded, mask = kernel_gp.pad_context(p, 6)
  assert padded.x.shape == (6, D) and padded.y.shape == (6,)
  np.testing.assert_array_equal(padded.x[:3], p.x)
  np.testing.assert_array_equal(padded.x[3:], 0.0)
  np.testing.assert_array_equal(padded.y[:3], p.y)
  np.testing.assert_array_equal(padded.y[3:], 0.0)
  np.testing.assert_array_equal(padded.x_query, p.x_query)
  assert float(padded.y_query) == pytest.approx(0.7)
  np.testing.assert_array_equal(mask, [True, True, True, False, False, False])
  same, mask_full = kernel_gp.pad_context(p, 3)
  np.testing.assert_array_equal(same.x, p.x)
  assert bool(np.all(mask_full))
  with pytest.raises(ValueError, match='n=3.*n_max=2'):
    kernel_gp.pad_context(p, 2)
