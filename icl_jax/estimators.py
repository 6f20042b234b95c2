"""In-context baselines on one prompt: OLS, zero, and the trained-LSA limit predictor.

Each takes one `Prompt` and returns the scalar prediction of its query label; vmap for batches.
"""

import jax
import jax.numpy as jnp

from icl_jax.prompts import Prompt


def ols(prompt: Prompt) -> jax.Array:
  """Minimum-norm least squares: x_query^T X^+ y (the pseudo-inverse covers n < d).

  Uses X^+ = (X^T X)^+ X^T, so the pseudo-inverse is of a d x d matrix rather than n x d: the
  same solution, and much cheaper for long prompts.
  """
  x_NxD = prompt.x
  w_hat = jnp.linalg.pinv(x_NxD.T @ x_NxD, hermitian=True) @ (x_NxD.T @ prompt.y)
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
