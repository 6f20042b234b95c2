"""Prompt pytrees and the embedding E(P) of Zhang, Frei & Bartlett (2023), eq. (4).

A prompt is (x_1, y_1, ..., x_n, y_n, x_query) with the query label kept beside it for the loss.
Samplers return one `Prompt` per key; batches are `jax.vmap` over keys, so every field here is
for a single prompt.

References:
  Zhang, Frei, Bartlett. Trained Transformers Learn Linear Models In-Context.
  arXiv:2306.09927, JMLR 2024.
"""

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Prompt:
  """One in-context regression prompt.

  Attributes:
    x: [n, d] context covariates x_1..x_n.
    y: [n] context labels y_1..y_n.
    x_query: [d] the query covariate.
    y_query: [] the label the prediction is scored against (not shown to the model).
  """
  x: jax.Array
  y: jax.Array
  x_query: jax.Array
  y_query: jax.Array

  @property
  def n(self) -> int:
    return self.x.shape[-2]

  @property
  def d(self) -> int:
    return self.x.shape[-1]


@flax.struct.dataclass
class LinearPromptStats:
  """Sufficient statistics of a noiseless linear prompt y_i = <w, x_i>.

  Everything eq. (6) reads from a prompt with linear labels is a function of
  S = (1/n) sum_i x_i x_i^T, the task w and the query, so Monte Carlo can draw S (Wishart)
  instead of the n points. `samplers.regression.sample_linear_stats` draws it. S is kept as a
  factor F with S = F F^T (F = X^T / sqrt(n) for a prompt in hand, the scaled Bartlett factor
  for a Wishart draw), so a prediction applies S to vectors in O(d k) instead of forming it.

  Attributes:
    x_factor: [d, k] F with S = F F^T = X^T X / n, for any k (k = n or k = d).
    w: [d] task vector.
    x_query: [d] query covariate.
    y_query: [] label of the query, <w, x_query>.
    n: static context length n (also the normalisation rho of eq. (3)).
  """
  x_factor: jax.Array
  w: jax.Array
  x_query: jax.Array
  y_query: jax.Array
  n: int = flax.struct.field(pytree_node=False)

  @property
  def xx(self) -> jax.Array:
    """[d, d] S = F F^T = X^T X / n."""
    return self.x_factor @ self.x_factor.T


def embed(prompt: Prompt) -> jax.Array:
  """Embedding matrix E(P) of eq. (4): columns (x_i, y_i) then (x_query, 0).

  Args:
    prompt: one prompt with x [n, d], y [n], x_query [d].

  Returns:
    E: [d+1, n+1].
  """
  context_Nx1d = jnp.concatenate([prompt.x, prompt.y[:, None]], axis=1)
  query_1x1d = jnp.concatenate([prompt.x_query, jnp.zeros((1,), prompt.x.dtype)])[None]
  return jnp.concatenate([context_Nx1d, query_1x1d], axis=0).T


def gram(prompt: Prompt) -> jax.Array:
  """E E^T / rho with rho = n, the (d+1) x (d+1) matrix eq. (6) reads.

  Computed from the blocks so the n-length sums are formed once; equals
  `embed(prompt) @ embed(prompt).T / n`.
  """
  n = prompt.n
  x_NxD, y_N, q_D = prompt.x, prompt.y, prompt.x_query
  xx = (x_NxD.T @ x_NxD + jnp.outer(q_D, q_D)) / n
  xy = x_NxD.T @ y_N / n
  yy = jnp.dot(y_N, y_N) / n
  top = jnp.concatenate([xx, xy[:, None]], axis=1)
  bottom = jnp.concatenate([xy, yy[None]])[None]
  return jnp.concatenate([top, bottom], axis=0)


def gram_from_stats(stats: LinearPromptStats) -> jax.Array:
  """E E^T / n for a noiseless linear prompt from its sufficient statistics.

  Equals `gram(prompt)` for the prompt whose S, w and query these are.
  """
  s, w, q = stats.xx, stats.w, stats.x_query
  sw = s @ w
  xx = s + jnp.outer(q, q) / stats.n
  top = jnp.concatenate([xx, sw[:, None]], axis=1)
  bottom = jnp.concatenate([sw, jnp.dot(w, sw)[None]])[None]
  return jnp.concatenate([top, bottom], axis=0)
