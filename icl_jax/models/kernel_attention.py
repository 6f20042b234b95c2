"""The k-layer generalised-attention transformer of Cheng, Chen & Sra (2024), eqs. (2)-(5), (26).

Tokens z_i = (x_i, y_i), the query last with y = 0 (eq. (1)). Layer l, head s:
  Z_{l+1} = Z_l + sum_s V_l^s Z_l M h~^s(B_l^s X_l, C_l^s X_l)                 (eq. (3), (26))
with V_l^s = [[A_l^s, 0], [0, r_l^s]] (Assumption 4.4), so in the equivalent form (20)
  X_{l+1} = X_l + sum_s A_l^s X_l M h~^s,     Y_{l+1} = Y_l + sum_s r_l^s Y_l M h~^s.
TF_l = [Z_l]_{d+1, n+1} is the prediction of -y_query (eq. (4)); the in-context loss (5) is
E (TF_{k+1} + y_query)^2. Parameters are stacked over layers (leading axis L) and heads (H), and
each head has its own activation (Appendix D). With `free_a=False` A_l = 0 is enforced by not
reading `a` at all (the constraint of Theorem 4.5): its gradient is exactly zero.

References:
  Cheng, Chen, Sra. Transformers Implement Functional Gradient Descent to Learn Non-Linear
  Functions In Context. ICML 2024.
"""

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from icl_jax import kernels
from icl_jax.prompts import Prompt


class Params(NamedTuple):
  """Per layer l and head s: a = A_l^s [L, H, d, d], r = r_l^s [L, H], b = B_l^s, c = C_l^s."""
  a: jax.Array
  r: jax.Array
  b: jax.Array
  c: jax.Array

  @property
  def layers(self) -> int:
    return self.r.shape[0]

  @property
  def heads(self) -> int:
    return self.r.shape[1]


def check_activations(activations: Sequence[str], heads: Optional[int] = None) -> None:
  """One activation name per head; ValueError naming the allowed values otherwise."""
  if not activations:
    raise ValueError('activations: need one activation per head, got none')
  for name in activations:
    kernels.check_activation(name)
  if heads is not None and len(activations) != heads:
    raise ValueError(f'activations: {len(activations)} names for {heads} heads; '
                     'need one activation per head')


def init(key: jax.Array, *, d: int, layers: int, heads: int = 1, scale: float = 0.1,
         free_a: bool = True) -> Params:
  """I.i.d. N(0, scale^2) entries (Appendix H.1: "initialized by i.i.d. Gaussian matrices").

  With free_a=False, A starts (and, through `apply`, stays) at 0.
  """
  if d < 1 or layers < 1 or heads < 1:
    raise ValueError(f'init: d={d}, layers={layers}, heads={heads} must all be >= 1')
  k_a, k_r, k_b, k_c = jax.random.split(key, 4)
  mat = lambda k: scale * jax.random.normal(k, (layers, heads, d, d))
  a = mat(k_a) if free_a else jnp.zeros((layers, heads, d, d))
  return Params(a=a, r=scale * jax.random.normal(k_r, (layers, heads)), b=mat(k_b), c=mat(k_c))


def construction(*, d: int, steps, heads: int = 1, b=None) -> Params:
  """Prop 3.1 / Prop D.1(A): A = 0, r_l^s = -r'_l (V = [[0, 0], [0, -r'_l]]), B = C = G^s.

  With h~^s(U, W)_ij = K^s(U_i, W_j), TF_l = -f_l: layer l is step l of functional gradient
  descent (9) in the RKHS of sum_s K^s(G^s u, G^s v) with step sizes r'_l.

  Args:
    d: covariate dimension.
    steps: [L] the step sizes r'_l (or [L, H] per head).
    heads: H.
    b: B = C per head, [H, d, d] or [d, d] shared (default I; Sigma^{-1/2} gives the kernel on
      xi = Sigma^{-1/2} x, Theorem 4.5's point; (1/sigma) I the exp kernel's bandwidth).
  """
  steps = jnp.asarray(steps)
  b = jnp.eye(d, dtype=steps.dtype) if b is None else jnp.asarray(b)
  dtype = jnp.result_type(steps, b)   # float64 inputs stay float64 (closed-form comparisons)
  layers = steps.shape[0]
  r = -jnp.broadcast_to(steps.reshape(layers, -1), (layers, heads)).astype(dtype)
  b = jnp.broadcast_to(b.astype(dtype), (layers, heads, d, d))
  return Params(a=jnp.zeros((layers, heads, d, d), dtype), r=r, b=b, c=b)


def _layer(z_TxE, layer: Params, activations, key_mask_T, free_a: bool):
  """One layer of eq. (26) on token-major Z^T: [T, d+1] -> [T, d+1]."""
  x_TxD, y_T = z_TxE[:, :-1], z_TxE[:, -1]
  dx_TxD = jnp.zeros_like(x_TxD)
  dy_T = jnp.zeros_like(y_T)
  for s, act in enumerate(activations):
    scores_TxT = (x_TxD @ layer.b[s].T) @ (x_TxD @ layer.c[s].T).T  # <B x_i, C x_j>, key i
    w_TxT = kernels.attention_weights(act, scores_TxT, key_mask_T)
    dy_T = dy_T + layer.r[s] * (y_T @ w_TxT)
    if free_a:
      dx_TxD = dx_TxD + (w_TxT.T @ x_TxD) @ layer.a[s].T
  return z_TxE + jnp.concatenate([dx_TxD, dy_T[:, None]], axis=1)


def _tokens(prompt: Prompt) -> jax.Array:
  """Z_0^T of eq. (1): [n+1, d+1], context rows (x_i, y_i), then (x_query, 0)."""
  ctx = jnp.concatenate([prompt.x, prompt.y[:, None]], axis=1)
  query = jnp.concatenate([prompt.x_query, jnp.zeros((1,), prompt.x.dtype)])
  return jnp.concatenate([ctx, query[None]], axis=0)


def apply_layers(params: Params, prompt: Prompt, *, activations: Sequence[str],
                 context_mask: Optional[jax.Array] = None, free_a: bool = True) -> jax.Array:
  """TF_l for l = 0..L (eq. (4)): [L+1] predictions of -y_query after each layer (TF_0 = 0).

  Args:
    params: Params with L layers and H heads.
    prompt: one prompt (x [n, d], y [n], x_query [d]).
    activations: H names from kernels.ACTIVATIONS, one per head.
    context_mask: [n] bool, the context slots that act as keys (`kernel_gp.pad_context`);
      None: all n. The query never does (the mask M of eq. (2)).
    free_a: False enforces A_l = 0 (Theorem 4.5).
  """
  check_activations(activations, params.heads)
  n = prompt.x.shape[0]
  ctx = jnp.ones((n,), bool) if context_mask is None else context_mask
  key_mask_T = jnp.concatenate([ctx, jnp.zeros((1,), bool)])

  def step(z, layer):
    z = _layer(z, layer, tuple(activations), key_mask_T, free_a)
    return z, z[-1, -1]

  _, tf_L = jax.lax.scan(step, _tokens(prompt), params)
  return jnp.concatenate([jnp.zeros((1,), tf_L.dtype), tf_L])


def apply(params: Params, prompt: Prompt, *, activations: Sequence[str],
          context_mask: Optional[jax.Array] = None, free_a: bool = True) -> jax.Array:
  """TF_{k+1} (eq. (4)) after all layers: the prediction of -y_query. Scalar."""
  return apply_layers(params, prompt, activations=activations, context_mask=context_mask,
                      free_a=free_a)[-1]


def predict(params: Params, prompt: Prompt, **kwargs) -> jax.Array:
  """The model's prediction of y_query: -TF_{k+1} (TF predicts -y, eq. (4))."""
  return -apply(params, prompt, **kwargs)


def loss(params: Params, prompt: Prompt, **kwargs) -> jax.Array:
  """The in-context loss (5) on one prompt: (TF_{k+1} + y_query)^2."""
  return jnp.square(apply(params, prompt, **kwargs) + prompt.y_query)


def product(params: Params, sigma_sqrt: Optional[jax.Array] = None) -> jax.Array:
  """Sigma^{1/2} B_l^T C_l Sigma^{1/2} per layer and head, [L, H, d, d] (Figs 3, 5, 6).

  Theorems 4.5/4.6 predict B_l = b_l Sigma^{-1/2}, C_l = c_l Sigma^{-1/2}, so this is a multiple
  of I at their stationary points; only B^T C is identifiable (Remark E.2).
  """
  btc = jnp.einsum('lhki,lhkj->lhij', params.b, params.c)
  if sigma_sqrt is None:
    return btc
  return sigma_sqrt @ btc @ sigma_sqrt
