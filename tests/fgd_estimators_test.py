"""Tests of the functional-GD estimators in icl_jax.estimators: the Bayes estimator (13) of a
K Gaussian process with its conditional variance, and functional gradient descent (9).

Truth: the conditional-Gaussian formula and the Appendix C closed form, in NumPy float64; the
linear kernel's Bayes risk 1 - n/d (n < d) and 0 (n >= d) by Monte Carlo over X.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import estimators
from icl_jax.samplers import kernel_gp

D = 5
Z = 5.0   # Monte-Carlo tolerance in standard errors


def _sphere(rng, num, d=D):
  g = rng.standard_normal((num, d))
  return g / np.linalg.norm(g, axis=1, keepdims=True)


def _np_abs_eig(k):
  w, v = np.linalg.eigh(k)
  return (v * np.abs(w)) @ v.T


@pytest.mark.parametrize('name', ['exp', 'relu'])
def test_bayes_equals_conditional_gaussian_formula(name):
  """eq. (13) / (25): with K_+ = [[K^, nu], [nu^T, mu]], bayes returns nu^T K^-1 Y^ and
  mu - nu^T K^-1 nu (NumPy float64 solve; rtol 1e-9). exp: K_+ = K (PSD); relu: K_+ = V |L| V^T
  of a non-PSD Gram (Definition 3.3), built here in NumPy. Fails on the query taken from the
  first row instead of the last, mu and nu swapped, or a missing term of the variance."""
  rng = np.random.default_rng(0)
  n = 7
  xi = _sphere(rng, n + 1)
  ip = xi @ xi.T
  k = np.exp(ip) if name == 'exp' else _np_abs_eig(np.maximum(ip, 0.0))
  y = rng.standard_normal(n)
  k_hat, nu, mu = k[:n, :n], k[:n, n], k[n, n]
  with jax.enable_x64(True):
    pred, var = estimators.bayes(jnp.asarray(k), jnp.asarray(y))
  np.testing.assert_allclose(pred, nu @ np.linalg.solve(k_hat, y), rtol=1e-9)
  np.testing.assert_allclose(var, mu - nu @ np.linalg.solve(k_hat, nu), rtol=1e-9)
  assert 0.0 < float(var) < mu


def test_bayes_singular_linear_kernel_uses_the_pseudo_inverse():
  """Linear kernel, d = 5, n = 8 context points confined to a 2-dimensional subspace (K^ =
  Xi Xi^T has rank 2, so a plain solve is meaningless), a generic query: the pseudo-inverse
  gives the prediction <P xi_q, g> for labels y = Xi g in the range of K^ and the conditional
  variance 1 - ||P xi_q||^2, P the projection on the span of the context xi's (float64, atol
  1e-9). Also a generic n = 8 > d context (span = R^d): the prediction is <xi_q, g> and the
  variance 0. Labels carry 1e-3 along K^'s null space, which the pseudo-inverse ignores. Fails
  on K^-1 in place of K^+, or an rtol that keeps the spurious ~1e-16 eigenvalues (rtol = 0:
  the null-space component, divided by them, moves the prediction by O(1e-3) or more)."""
  rng = np.random.default_rng(1)
  n = 8
  basis, _ = np.linalg.qr(rng.standard_normal((D, 2)))          # [5, 2] orthonormal
  ctx = _sphere(rng, n, 2) @ basis.T                            # unit vectors in span(basis)
  q = _sphere(rng, 1)[0]
  g = rng.standard_normal(D)
  proj = basis @ basis.T
  for ctx_i, p_mat in ((ctx, proj), (_sphere(rng, n), np.eye(D))):
    xi = np.concatenate([ctx_i, q[None]])
    k = xi @ xi.T
    # Labels in the range of K^, plus 1e-3 along its null space (what rounding labels to
    # float32 leaves, scaled up): K^+ ignores it, an inverse of the ~1e-16 eigenvalues does not.
    null = np.linalg.svd(ctx_i.T)[2][-1]        # a unit vector with Xi^T null = 0
    y = ctx_i @ g + 1e-3 * null
    with jax.enable_x64(True):
      pred, var = estimators.bayes(jnp.asarray(k), jnp.asarray(y))
    np.testing.assert_allclose(pred, (p_mat @ q) @ g, atol=1e-9)
    np.testing.assert_allclose(var, 1.0 - np.sum(np.square(p_mat @ q)), atol=1e-9)
  assert 1.0 - np.sum(np.square(proj @ q)) > 0.1     # the first case is not trivially 0


N_VALUES = (2, D, 8)


@pytest.fixture(scope='module')
def linear_risks():
  """Per-prompt Bayes risks of the linear K-GP for each n in N_VALUES, 2,000 prompts, float64.

  The linear kernel is PSD, so K_+ = K = Xi Xi^T (Definition 3.3) with xi uniform on the sphere
  (`kernel_gp.sphere`, whose uniformity tests/kernel_gp_test.py checks; Sigma plays no part,
  Example 7). For n < 8 the first n context points and the query form the smaller prompt (one
  draw of 9 points serves every n)."""
  with jax.enable_x64(True):

    @jax.jit
    def risks(keys):
      def one(k):
        xi = kernel_gp.sphere(k, max(N_VALUES) + 1, D)
        k_plus = xi @ xi.T
        out = []
        for n in N_VALUES:
          idx = np.r_[0:n, max(N_VALUES)]
          out.append(estimators.bayes(k_plus[np.ix_(idx, idx)], jnp.zeros(n))[1])
        return jnp.stack(out)
      return jax.vmap(one)(keys)

    return np.asarray(risks(jax.random.split(jax.random.key(1), 2000)))


@pytest.mark.parametrize('j', range(len(N_VALUES)))
def test_linear_bayes_risk_is_one_minus_n_over_d(linear_risks, j):
  """The linear K-GP's Bayes risk E_X var(y_q | Y^, X) = E (1 - ||P xi_q||^2) = 1 - n/d for
  n < d (P projects on a uniformly random n-dimensional subspace, xi_q uniform on the sphere)
  and 0 for n >= d: n = 2: the mean over 2,000 prompts within Z SE of 0.6; n = 5, 8: every
  prompt's variance below 1e-8 (float64; K^ has eigenvalues ~1e-16 where it is singular). The
  issue's Fig 1 claim for linear labels (Bayes risk 1 - n/d, then 0) rests on this. Fails on a
  variance without the nu^T K^+ nu term, or one that inverts K^'s ~1e-16 eigenvalues
  carelessly."""
  n, var = N_VALUES[j], linear_risks[:, j]
  assert var.dtype == np.float64
  if n < D:
    se = var.std(ddof=1) / math.sqrt(len(var))
    assert abs(var.mean() - (1 - n / D)) <= Z * se, (var.mean(), se)
    assert np.all(var > -1e-12)
  else:
    assert np.max(np.abs(var)) < 1e-8, np.max(np.abs(var))


def _well_conditioned_exp(rng, n):
  xi = _sphere(rng, n + 1)
  k = np.exp(xi @ xi.T)
  return xi, k


def test_functional_gd_closed_form_and_limit():
  """Appendix C: with a constant step delta, f_L(x_q) = nu^T K^-1 (I - (I - delta K^)^L) Y^ for
  every L (float64, rtol 1e-10 over L = 0..30, exp kernel, n = 6, delta = 1 / lambda_max); and
  with L large enough that (1 - delta lambda_min)^L < 1e-12 it reaches the Bayes prediction
  nu^T K^-1 Y^ (Prop 3.4; rtol 1e-8). Fails on a step that uses f_{l+1} instead of f_l in the
  residual, a missing step size, or f_0 != 0."""
  rng = np.random.default_rng(2)
  n = 6
  _, k = _well_conditioned_exp(rng, n)
  y = rng.standard_normal(n)
  k_hat, nu = k[:n, :n], k[:n, n]
  lam = np.linalg.eigvalsh(k_hat)
  delta = 1.0 / lam[-1]
  steps_short = 30
  steps_long = int(math.ceil(math.log(1e-12) / math.log(1.0 - delta * lam[0])))
  assert steps_long < 20000, lam      # the test stays cheap: K^ is well conditioned
  with jax.enable_x64(True):
    run = jax.jit(estimators.functional_gd)
    f_short = np.asarray(run(jnp.asarray(k[:, :n]), jnp.asarray(y),
                             jnp.full(steps_short, delta)))
    f_long = np.asarray(run(jnp.asarray(k[:, :n]), jnp.asarray(y), jnp.full(steps_long, delta)))
    bayes_pred, _ = estimators.bayes(jnp.asarray(k), jnp.asarray(y))
  closed = [nu @ np.linalg.solve(k_hat, (np.eye(n) - np.linalg.matrix_power(
      np.eye(n) - delta * k_hat, L)) @ y) for L in range(steps_short + 1)]
  np.testing.assert_allclose(f_short, closed, rtol=1e-10, atol=1e-12)
  bayes_np = nu @ np.linalg.solve(k_hat, y)
  np.testing.assert_allclose(f_long[-1], bayes_np, rtol=1e-8)
  np.testing.assert_allclose(bayes_pred, bayes_np, rtol=1e-9)
  # The error contracts geometrically: at L = 30 it is still visibly there.
  assert abs(f_short[-1] - bayes_np) > 1e-6 * abs(bayes_np)


def test_functional_gd_with_varying_steps_and_any_matrix_equals_the_recursion():
  """eq. (9) written as a NumPy loop: f_{l+1}(t) = f_l(t) + r'_l sum_i (y_i - f_l(x_i)) k(t, x_i)
  for the n + 1 points t (query last), with per-layer steps and a non-symmetric matrix (a
  softmax-like column normalisation: eq. (10)'s case, not a kernel). functional_gd returns
  f_0..f_L at the query (float64, rtol 1e-12). Fails if the context part of k is assumed
  symmetric (k^T used), or the steps are applied in reverse order."""
  rng = np.random.default_rng(3)
  n = 5
  k = np.exp(rng.standard_normal((n + 1, n)))
  k = k / k.sum(axis=1, keepdims=True)
  y = rng.standard_normal(n)
  steps = np.array([0.9, 0.2, 0.5, 1.3])
  f = np.zeros(n + 1)
  want = [0.0]
  for r in steps:
    f = f + r * k @ (y - f[:n])
    want.append(f[n])
  with jax.enable_x64(True):
    got = estimators.functional_gd(jnp.asarray(k), jnp.asarray(y), jnp.asarray(steps))
  assert got.shape == (len(steps) + 1,)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
