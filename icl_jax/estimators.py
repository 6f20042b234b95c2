"""In-context baselines on one prompt: OLS, zero, and the trained-LSA limit predictor.

Each takes one `Prompt` and returns the scalar prediction of its query label; vmap for batches.
"""

import jax
import jax.numpy as jnp

from icl_jax.prompts import Prompt


def _spd_solve(a_DxD: jax.Array, b_D: jax.Array) -> jax.Array:
  """Solves a x = b for symmetric positive-definite a by Gauss-Jordan elimination, pure XLA.

  Elimination without pivoting is stable for SPD matrices (every pivot is positive). Written
  with jnp ops in place of `jnp.linalg.solve`/`cholesky`: their LAPACK custom calls, batched
  and several to a program inside one jitted `lax.scan`, were seen to hang the XLA CPU runtime
  (jaxlib 0.10.2: every worker idle, the result never ready). O(d^3) in a `fori_loop` of d
  rank-one updates; meant for the small systems (d, or n < d) of in-context regression.

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
  min(n, d)-square SPD system by `_spd_solve`: no LAPACK custom call (SVD, LU, eigh), whose
  batched CPU versions were seen to deadlock inside jitted scans on jaxlib 0.10.2. Accuracy is
  that of the normal equations, relative error ~ cond(X)^2 x float eps; a rank-deficient X
  (probability 0 here) gives inf/nan where pinv would not.

  Args:
    prompt: one prompt; x: [n, d], y: [n], x_query: [d].

  Returns:
    [] the prediction of y_query.
  """
  x_NxD, y_N = prompt.x, prompt.y
  n, d = x_NxD.shape
  if n >= d:
    w_hat_D = _spd_solve(x_NxD.T @ x_NxD, x_NxD.T @ y_N)
  else:
    w_hat_D = x_NxD.T @ _spd_solve(x_NxD @ x_NxD.T, y_N)
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
