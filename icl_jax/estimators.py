"""In-context baselines on one prompt: OLS, zero, the trained-LSA limit, the kernel-GP Bayes
estimator and functional gradient descent.

Each takes one `Prompt` and returns the scalar prediction of its query label; vmap for batches.
"""

import jax
import jax.numpy as jnp

from icl_jax import linalg
from icl_jax.prompts import Prompt

# Largest system OLS solves by `_spd_solve`; bigger ones go to `linalg.solve_spd` (Cholesky).
# jit(vmap) of the [m, m] solve on 2 CPU cores shared with other jobs, 1024 to 16384 systems,
# Gauss-Jordan vs Cholesky, ms, float32: m = 3: 0.07-0.8 vs 0.35-4.7; m = 5: 0.14-3.0 vs
# 0.39-7.4; m = 8: 0.34-10.2 vs 0.60-10.9; m = 10: 0.98-18 vs 0.80-14; m = 20: 6.8-359 vs
# 2.4-54. float64: m = 5: 0.33-5.2 vs 0.35-7.3; m = 8: 0.84-17 vs 0.60-12 (the crossover is
# lower there, but the apps' d = 5, 10, 20 fall on the same side for both dtypes).
_GAUSS_JORDAN_MAX_DIM = 8


def _spd_solve(a_DxD: jax.Array, b_D: jax.Array) -> jax.Array:
  """Solves a x = b for symmetric positive-definite a by Gauss-Jordan elimination, pure XLA.

  Elimination without pivoting is stable for SPD matrices (every pivot is positive). O(d^3) in
  a `fori_loop` of d rank-one updates, with no LAPACK call. Vmapped over 1024-16384 systems it
  is 2.5-6x faster than `linalg.solve_spd` at d <= 5 and 1.1-1.8x at d = 8, but 1.1-1.3x
  slower at d = 10 and 3-7x at d = 20 (`_GAUSS_JORDAN_MAX_DIM`): `ols` uses it up to d = 8.

  Args:
    a_DxD: [d, d] symmetric positive-definite.
    b_D: [d] right-hand side.

  Returns:
    [d] the solution a^-1 b.
  """
  d = a_DxD.shape[0]
  aug_DxE = jnp.concatenate([a_DxD, b_D[:, None]], axis=1)

  def eliminate(k, aug_DxE):
    row_E = aug_DxE[k] / aug_DxE[k, k]
    col_D = aug_DxE[:, k].at[k].set(0.0)
    return (aug_DxE - col_D[:, None] * row_E[None, :]).at[k].set(row_E)

  return jax.lax.fori_loop(0, d, eliminate, aug_DxE)[:, d]


def ols(prompt: Prompt) -> jax.Array:
  """Minimum-norm least squares: x_query^T X^+ y.

  X has full rank almost surely for Gaussian covariates, so X^+ y is (X^T X)^-1 X^T y when
  n >= d and X^T (X X^T)^-1 y when n < d (the minimum-norm interpolant). Both are solves of a
  min(n, d)-square SPD system: by `_spd_solve` (pure XLA) up to `_GAUSS_JORDAN_MAX_DIM`, by
  `linalg.solve_spd` (LAPACK Cholesky, in batches too small to deadlock jaxlib 0.10.2's CPU
  runtime) above, whichever was measured faster. Accuracy is that of the normal equations,
  relative error ~ cond(X)^2 x float eps; a rank-deficient X (probability 0 here) gives inf/nan
  where pinv would not.

  Args:
    prompt: one prompt; x: [n, d], y: [n], x_query: [d].

  Returns:
    [] the prediction of y_query.
  """
  x_NxD, y_N = prompt.x, prompt.y
  n, d = x_NxD.shape
  solve = _spd_solve if min(n, d) <= _GAUSS_JORDAN_MAX_DIM else linalg.solve_spd
  if n >= d:
    w_hat_D = solve(x_NxD.T @ x_NxD, x_NxD.T @ y_N)
  else:
    w_hat_D = x_NxD.T @ solve(x_NxD @ x_NxD.T, y_N)
  return jnp.dot(prompt.x_query, w_hat_D)


def zero(prompt: Prompt) -> jax.Array:
  """The zero predictor: the error it makes is E y_query^2, the normaliser of Garg et al."""
  return jnp.zeros((), prompt.x.dtype)


def lsa_limit(prompt: Prompt, product: jax.Array) -> jax.Array:
  """x_query^T P (1/M) sum_i y_i x_i: eq. (12)/(13)/(17) with P = Gamma^-1 at the Thm 4 optimum.

  Args:
    prompt: one prompt of any length M.
    product: [d, d] the matrix P = w_22^PV W_11^KQ (Gamma^-1 for Thm 4, eq. (22)'s for Thm 8).
  """
  m = prompt.n
  return prompt.x_query @ product @ (prompt.x.T @ prompt.y) / m


def ols_prefixes(x_KxD: jax.Array, y_K: jax.Array, m_values) -> jax.Array:
  """Minimum-norm OLS predictions of y_M from the first M pairs, for every M in m_values.

  The prediction is x_M^T X_M^+ y_M with X_M the first M rows (Garg et al.'s evaluation of one
  sequence at every length). X_M^+ y_M = (X_M^T X_M)^+ X_M^T y_M for any rank, so every M uses a
  [d, d] Gram (rows past M masked to zero) and one shape serves all M: the pseudo-inverse keeps
  the eigenvalues above d eps lambda_max, which drops the d - M null directions for M < d.
  Call it in float64 (`jax.enable_x64`): at M = d the Gram's condition number squares X_M's.

  Args:
    x_KxD: [K, d] covariates of one sequence.
    y_K: [K] labels.
    m_values: static ints M < K.

  Returns:
    [len(m_values)] the predictions of y_M.
  """
  k, d = x_KxD.shape
  masks_MxK = (jnp.arange(k)[None, :] < jnp.asarray(m_values)[:, None]).astype(x_KxD.dtype)

  def one(mask_K, m):
    xm_KxD = x_KxD * mask_K[:, None]
    w_hat = _pinv_apply(xm_KxD.T @ xm_KxD, xm_KxD.T @ y_K, rtol=d * jnp.finfo(x_KxD.dtype).eps)
    return jnp.dot(x_KxD[m], w_hat)

  return jax.vmap(one)(masks_MxK, jnp.asarray(m_values))


def _pinv_apply(a_NxN: jax.Array, b: jax.Array, *, rtol) -> jax.Array:
  """a^+ b for symmetric PSD a: eigenvalues at or below rtol x lambda_max count as zero."""
  w, v = linalg.eigh(a_NxN)
  keep = w > rtol * jnp.max(w)
  inv_w = jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0)
  if b.ndim == 1:
    return v @ (inv_w * (v.T @ b))
  return v @ (inv_w[:, None] * (v.T @ b))


def bayes(k_plus_TxT: jax.Array, y_N: jax.Array, *, rtol=None) -> tuple[jax.Array, jax.Array]:
  """The Bayes estimator (13) of a K Gaussian process and its conditional variance.

  With K_+ = [[K^, nu], [nu^T, mu]] (the query last), y_query | y_1..y_n ~ N(nu^T K^+ Y^,
  mu - nu^T K^+ nu) (Appendix C, eq. (25)); K^+ is the pseudo-inverse, which is what the limit
  of functional GD reaches when K^ is singular (the linear kernel with n > d: rank d). The
  variance is the Bayes risk of this prompt given X, so its mean over prompts is the Bayes loss
  without the Monte-Carlo noise of the labels.

  Call it in float64 (`jax.enable_x64`) with K_+ computed in float64: rounding K_+ to float32
  leaves spurious eigenvalues ~1e-7 lambda_max in a singular K^, and float32 labels have
  components of that size along them, whose ratio is O(1).

  Args:
    k_plus_TxT: [n+1, n+1] the label covariance K_+(X), query last.
    y_N: [n] context labels.
    rtol: eigenvalues of K^ at or below rtol x lambda_max are treated as zero
      (default n x the dtype's eps).

  Returns:
    (prediction of y_query [], conditional variance []).
  """
  n = y_N.shape[0]
  k_hat, nu, mu = k_plus_TxT[:n, :n], k_plus_TxT[:n, n], k_plus_TxT[n, n]
  rtol = n * jnp.finfo(k_plus_TxT.dtype).eps if rtol is None else rtol
  sol_Nx2 = _pinv_apply(k_hat, jnp.stack([y_N, nu], axis=1), rtol=rtol)
  return jnp.dot(nu, sol_Nx2[:, 0]), mu - jnp.dot(nu, sol_Nx2[:, 1])


def functional_gd(k_TxN: jax.Array, y_N: jax.Array, steps) -> jax.Array:
  """Functional gradient descent (9) from f_0 = 0, its prediction at the query after each step.

  f_{l+1}(.) = f_l(.) + r'_l sum_i (y_i - f_l(x_i)) K(., x_i): only the values at the n context
  points and the query are ever needed, so the kernel enters as the matrix of K(t, x_i) for the
  points t = x_1..x_n, x_query (query last). Any matrix works, a kernel's or not (eq. (17) with
  a non-kernel h~, eq. (10) with softmax's normalisation folded into its columns).

  Args:
    k_TxN: [n+1, n] K(t, x_i), rows t = context then query.
    y_N: [n] context labels.
    steps: [L] step sizes r'_l.

  Returns:
    [L+1] f_0(x_query) = 0, f_1(x_query), ..., f_L(x_query).
  """
  n = y_N.shape[0]

  def step(f_T, r):
    f_T = f_T + r * (k_TxN @ (y_N - f_T[:n]))
    return f_T, f_T[n]

  f0 = jnp.zeros((n + 1,), jnp.result_type(k_TxN, y_N))
  _, f_L = jax.lax.scan(step, f0, jnp.asarray(steps, f0.dtype))
  return jnp.concatenate([jnp.zeros((1,), f0.dtype), f_L])


def ar_gd(s_TxD: jax.Array, steps, eta, length=None) -> jax.Array:
  """`steps` steps of gradient descent on the inner loss (5) from W_0 = 0, then W_L s_T.

  Inner loss (5) of Sander et al. (2024), on the prefix s_1 .. s_T:
  L(W) = 1/2 sum_{t=1}^{T-1} ||s_{t+1} - W s_t||^2. For complex s the descent direction is the
  Wirtinger (hermitian) gradient, grad L(W) = -sum_t (s_{t+1} - W s_t) s_t^H (the transpose for
  real s), so W_{l+1} = W_l + eta (S_yx - W_l S_xx) with S_yx = sum_t s_{t+1} s_t^H and
  S_xx = sum_t s_t s_t^H. One step gives W_1 = eta S_yx, and W_1 s_T = eta sum_t s_t s_{t-1}^H
  s_T (s_0 = 0) is the augmented one-layer model (4) at Prop 2's optimum with a3 b1 = eta
  (Prop 1, Appendix A.2). Fig. 5 compares L such steps with L layers.

  Args:
    s_TxD: [n, d] a sequence s_1 .. s_n (real or complex), possibly longer than the prefix.
    steps: number of GD steps L >= 0 (a Python int or a traced integer).
    eta: step size.
    length: prefix length T, 2 <= T <= n (an int or a traced integer, e.g. vmapped over
      T = 2..t_max); default n. Rows past T are ignored.

  Returns:
    [d] the prediction W_L s_T of s_{T+1}.

  Raises:
    ValueError: a concrete length outside [2, n] (a traced one is clamped by the row lookup).
  """
  n = s_TxD.shape[0]
  length = n if length is None else length
  if isinstance(length, int) and not 2 <= length <= n:
    raise ValueError(f'length: got {length}, expected 2 <= length <= {n} (rows of s_TxD)')
  x_KxD, y_KxD = s_TxD[:-1], s_TxD[1:]
  real_dtype = jnp.finfo(s_TxD.dtype).dtype
  mask_K = (jnp.arange(n - 1) < length - 1).astype(real_dtype)
  xm_KxD = x_KxD * mask_K[:, None]
  s_yx_DxD = (y_KxD * mask_K[:, None]).T @ jnp.conj(x_KxD)
  s_xx_DxD = xm_KxD.T @ jnp.conj(x_KxD)

  def step(_, w_DxD):
    return w_DxD + eta * (s_yx_DxD - w_DxD @ s_xx_DxD)

  w_DxD = jax.lax.fori_loop(0, steps, step, jnp.zeros_like(s_yx_DxD))
  s_last_D = jax.lax.dynamic_index_in_dim(s_TxD, length - 1, keepdims=False)
  return w_DxD @ s_last_D
