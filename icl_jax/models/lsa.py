"""Single-layer linear self-attention f_LSA (Zhang, Frei & Bartlett 2023, eqs. (3), (5), (6)).

Parameters are W_KQ and W_PV, both (d+1) x (d+1) in the paper's block layout (5):
  W = [[W_11 (d x d), w_12 (d)], [w_21^T, w_22]].

References:
  Zhang, Frei, Bartlett. Trained Transformers Learn Linear Models In-Context.
  arXiv:2306.09927, JMLR 2024.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from icl_jax import prompts as prompts_lib


class Params(NamedTuple):
  """theta = (W_KQ, W_PV), each [d+1, d+1]."""
  w_kq: jax.Array
  w_pv: jax.Array


def init(key: jax.Array, d: int, sigma: float) -> Params:
  """Assumption 3: W_PV(0) = sigma e_{d+1} e_{d+1}^T, W_KQ(0) = sigma [[Theta Theta^T, 0], [0, 0]].

  Theta Theta^T = M M^T / ||M M^T||_F with M i.i.d. N(0, 1), which meets ||Theta Theta^T||_F = 1
  and Theta Lambda != 0 almost surely (the paper's remark after eq. (10)).
  """
  m_DxD = jax.random.normal(key, (d, d))
  theta2 = m_DxD @ m_DxD.T
  theta2 = theta2 / jnp.linalg.norm(theta2)
  w_kq = jnp.zeros((d + 1, d + 1)).at[:d, :d].set(sigma * theta2)
  w_pv = jnp.zeros((d + 1, d + 1)).at[d, d].set(sigma)
  return Params(w_kq=w_kq, w_pv=w_pv)


def apply(params: Params, e: jax.Array, rho: Optional[float] = None) -> jax.Array:
  """f_LSA(E; theta) = E + W_PV E (E^T W_KQ E) / rho, eq. (3).

  Args:
    params: theta.
    e: [d+1, n+1] embedding (4).
    rho: normalisation; the paper's rho = n (the embedding width minus one) by default.

  Returns:
    [d+1, n+1] output tokens.
  """
  rho = e.shape[1] - 1 if rho is None else rho
  return e + params.w_pv @ e @ (e.T @ params.w_kq @ e) / rho


def predict_from_gram(params: Params, gram: jax.Array, x_query: jax.Array) -> jax.Array:
  """Eq. (6): y_hat = (w_21^PV, w_22^PV) (E E^T / rho) (W_11^KQ; w_21^KQ^T) x_query.

  Args:
    params: theta.
    gram: [d+1, d+1] E E^T / rho.
    x_query: [d].

  Returns:
    [] the bottom-right entry of f_LSA.
  """
  d = x_query.shape[0]
  return params.w_pv[d] @ gram @ params.w_kq[:, :d] @ x_query


def predict(params: Params, prompt: prompts_lib.Prompt) -> jax.Array:
  """Prediction of the query label for one prompt, eq. (6) with rho = n."""
  return predict_from_gram(params, prompts_lib.gram(prompt), prompt.x_query)


def predict_stats(params: Params, stats: prompts_lib.LinearPromptStats) -> jax.Array:
  """Eq. (6) for a noiseless linear prompt given by its sufficient statistics.

  With v = (v_1, v_2) = w^PV's last row, u = (u_1, u_2) = W^KQ[:, :d] x_query and the Gram
  [[S + q q^T / n, S w], [w^T S, w^T S w]] of `prompts.gram_from_stats`, eq. (6) is
    v^T G u = (F^T (v_1 + v_2 w)) . (F^T (u_1 + u_2 w)) + (v_1 . q)(q . u_1) / n,
  so S = F F^T is only applied to two vectors through its factor: O(d k), not the O(d^2 k) of
  forming S and G. Equals `predict_from_gram(params, gram_from_stats(stats), x_query)`.
  """
  d = stats.x_query.shape[0]
  q, w, f_DxK = stats.x_query, stats.w, stats.x_factor
  v = params.w_pv[d]
  u = params.w_kq[:, :d] @ q
  a = v[:d] + v[d] * w
  b = u[:d] + u[d] * w
  return jnp.dot(a @ f_DxK, b @ f_DxK) + jnp.dot(v[:d], q) * jnp.dot(q, u[:d]) / stats.n


def squared_error(params: Params, prompt: prompts_lib.Prompt) -> jax.Array:
  """The per-prompt loss of eq. (7): (y_hat - y_query)^2 / 2."""
  return 0.5 * jnp.square(predict(params, prompt) - prompt.y_query)


def squared_error_stats(params: Params, stats: prompts_lib.LinearPromptStats) -> jax.Array:
  """`squared_error` for a prompt given by its sufficient statistics."""
  return 0.5 * jnp.square(predict_stats(params, stats) - stats.y_query)


def product(params: Params) -> jax.Array:
  """w_22^PV * W_11^KQ, the d x d matrix the prediction of the optimum applies (eq. (12))."""
  d = params.w_kq.shape[0] - 1
  return params.w_pv[d, d] * params.w_kq[:d, :d]
