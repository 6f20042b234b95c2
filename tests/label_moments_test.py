"""Tests of Theorem 5 from label moments (theory.trained_lsa.label_moments / test_error_moments).

Exact checks run in float64 against moments derived here by Isserlis' theorem, independently of
`linear_task_moments`. The nonlinear check compares eq. (16) with a Monte-Carlo mean of the
Theorem 4 optimum's error on directly sampled prompts and fails when they differ by more than 4
standard errors (two-sided false-alarm rate ~6e-5).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import population
from icl_jax.models import lsa
from icl_jax.samplers import regression
from icl_jax.theory import trained_lsa as th

DIAG = np.array([0.5, 1.0, 2.0])
FULL = np.array([[1.0, 0.4, -0.3], [0.4, 0.8, 0.2], [-0.3, 0.2, 1.5]])
W = np.array([1.0, -0.5, 0.8])


def _linear_moments(lam, w, s):
  """E y^2, E xy, E y^2 xx^T for y = <w, x> + eps by Isserlis: E(w^T x)^2 xx^T = (w^T L w) L
  + 2 L w w^T L, and the noise adds s^2 (1, 0, L)."""
  lw = lam @ w
  return (w @ lw + s**2, lw, (w @ lw + s**2) * lam + 2 * np.outer(lw, lw))


@pytest.mark.parametrize('cov', [DIAG, FULL], ids=['diag', 'full'])
@pytest.mark.parametrize('noise', [0.0, 0.7])
def test_moment_form_equals_the_linear_form(cov, noise):
  """For a (noisy) linear task eq. (16) from the moments must equal `test_error_linear`
  (float64, 1e-10). Fails if Sigma is taken as E[y^2 xx^T] without subtracting E[xy] E[xy]^T,
  if a = Lambda E[xy] instead of Lambda^-1 E[xy], or if the best linear error drops E[xy]^T a."""
  lam = cov if cov.ndim == 2 else np.diag(cov)
  with jax.enable_x64():
    e_yy, e_xy, e_yyxx = (jnp.asarray(v) for v in _linear_moments(lam, W, noise))
    a, _, best = th.label_moments(jnp.asarray(cov), e_yy, e_xy, e_yyxx)
    np.testing.assert_allclose(a, W, rtol=1e-10)
    np.testing.assert_allclose(best, noise**2, atol=1e-10)
    for m in (5, 50):
      np.testing.assert_allclose(
          th.test_error_moments(jnp.asarray(cov), 20, m, e_yy, e_xy, e_yyxx),
          th.test_error_linear(jnp.asarray(cov), 20, m, jnp.asarray(W), noise), rtol=1e-10)


def _quadratic_moments(lam_diag, w):
  """Moments of y = x_1^2 + <w, x>, x ~ N(0, diag(l)), by Isserlis: E x_1^4 = 3 l_1^2,
  E x_1^4 x_i^2 = 3 l_1^2 l_i (i != 1), E x_1^6 = 15 l_1^3; odd moments vanish."""
  l1 = lam_diag[0]
  lam = np.diag(lam_diag)
  quartic = np.diag(3 * l1**2 * lam_diag)
  quartic[0, 0] = 15 * l1**3
  lw = lam @ w
  return (3 * l1**2 + w @ lw, lw, quartic + (w @ lw) * lam + 2 * np.outer(lw, lw))


def test_nonlinear_labels_match_monte_carlo():
  """y = x_1^2 + <w, x> (not linear in x; best linear error 2 l_1^2 = 0.5), N = 8, M = 4:
  eq. (16) from exact moments vs the Monte-Carlo error of the Theorem 4 optimum on 4e5
  directly sampled prompts (relative se ~0.5%; the 1/M term is ~40% of the total). Fails if
  Theorem 5 is applied with the wrong Sigma or best linear error for a nonlinear task."""
  n, m = 8, 4
  label_fn = lambda x: x[0]**2 + x @ jnp.asarray(W, jnp.float32)  # noqa: E731
  cov = jnp.asarray(DIAG, jnp.float32)
  params = lsa.Params(*th.optimum(cov, n))
  sample = functools.partial(regression.labelled_prompt, n=m, cov=cov, label_fn=label_fn)
  err = lambda p, prm: jnp.square(lsa.predict(prm, p) - p.y_query)  # noqa: E731
  mean, se = population.mc_stats(err, sample, jax.random.key(7), (params,), num_samples=400_000,
                                 chunk=40_000)
  with jax.enable_x64():
    moments = (jnp.asarray(v) for v in _quadratic_moments(DIAG, W))
    expected = float(th.test_error_moments(jnp.asarray(DIAG), n, m, *moments))
  assert float(se) < 0.01 * expected
  assert abs(float(mean) - expected) <= 4 * float(se), (float(mean), float(se), expected)


def test_label_moment_estimates_are_batch_means():
  """The matmul forms equal the per-draw averages of y^2, x y and y^2 x x^T (float32 rounding).
  Fails if y^2 x x^T is weighted by y instead of y^2 or a mean divides by the wrong count."""
  k1, k2 = jax.random.split(jax.random.key(0))
  x, y = jax.random.normal(k1, (64, 3)), jax.random.normal(k2, (64,))
  est = th.label_moment_estimates(x, y)
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  np.testing.assert_allclose(est['yy'], np.mean(y**2), rtol=1e-5)
  np.testing.assert_allclose(est['xy'], np.mean(x * y[:, None], 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(est['yyxx'], np.einsum('b,bi,bj->ij', y**2, x, x) / 64, rtol=1e-5,
                             atol=1e-6)
