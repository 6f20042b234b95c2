"""In-context baselines on one prompt: OLS, zero, and the trained-LSA limit predictor.

Each takes one `Prompt` and returns the scalar prediction of its query label; vmap for batches.
"""

import jax
import jax.numpy as jnp

from icl_jax.prompts import Prompt


def ols(prompt: Prompt) -> jax.Array:
  """Minimum-norm least squares: x_query^T X^+ y.

  X has full rank almost surely for Gaussian covariates, so X^+ y is (X^T X)^-1 X^T y when
  n >= d and X^T (X X^T)^-1 y when n < d (the minimum-norm interpolant). Both are LU solves of
  a min(n, d)-square system: no SVD or eigendecomposition, whose batched CPU custom calls were
  seen to deadlock inside jitted scans on jaxlib 0.10.2.
  """
  x_NxD, y_N = prompt.x, prompt.y
  n, d = x_NxD.shape
  if n >= d:
    w_hat = jnp.linalg.solve(x_NxD.T @ x_NxD, x_NxD.T @ y_N)
  else:
    w_hat = x_NxD.T @ jnp.linalg.solve(x_NxD @ x_NxD.T, y_N)
  return jnp.dot(prompt.x_query, w_hat)


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
