"""The one-layer attention model of the authors' script for Sec. 6 / Figs 7 and 8 of Sander et al.

Sec. 6 ("Non-Augmented setting") states Fig 7 and Fig 8 for eq. (6) with a positional softmax P;
the figures come from the authors' script (github.com/michaelsdr/ical, non_augmented.py), whose
model is not eq. (6). This module is that script's architecture, written from its description
(tokens of width D, H heads of width D, one layer), in JAX:

  e_t = s_t (plain, D = d) or (s_t, s_t) (duplicated, D = 2d; the script's `repeat`: the whole of
  s_t twice, not interleaved -- `ar_attention.tokens`);
  q^h_t = W_Q^h e_t + b_Q^h, k^h_t = W_K^h e_t + b_K^h, v^h_t = W_V^h e_t + b_V^h  (D -> D each);
  P^h_{T,t} = softmax_{t <= T}(<W_Q^h p_T + b_Q^h, W_K^h p_t + b_K^h> / sqrt(D))  (learned
      positions p_t in R^D, passed through the SAME per-head query/key maps, biases included);
  z_T = sum_h sum_{t <= T} (<q^h_T, k^h_t> / sqrt(D)) P^h_{T,t} v^h_t;
  y_T = R LN(W_O z_T + b_O) + b_R   (W_O: D -> D shared by the heads, LN = LayerNorm(D) with no
      residual, R: D -> d the read-out), the prediction of s_{T+1}.

Where it departs from eq. (6) (`ar_attention.eq6_all`, `StandardParams`, `PositionalSoftmax`):
  * the query is the current token, tau = T (eq. (6): tau = T - 1, where s_T enters only as a
    key and value);
  * Q, K, V have biases, and the token scores are scaled by 1/sqrt(D);
  * the positional softmax is per head and built from the token maps W_Q^h, W_K^h (with biases)
    applied to the positions, scaled by 1/sqrt(D) (eq. (6) / Sec. 6: one P shared by the heads,
    from its own W_Qpos, W_Kpos);
  * the heads share one output map W_O (eq. (6): W_O^h per head), followed by LayerNorm and a
    trained linear read-out D -> d (eq. (6): the first d output coordinates, no normalisation).
    The model is therefore not cubic in the tokens: LayerNorm divides by the output's scale.
  * With duplicated tokens the hidden width doubles (D = 2d: heads, W_O, LayerNorm and the
    positions are 2d wide). Folding J = [I_d; I_d] into W_Q, W_K, W_V turns a duplicated model
    into a plain-token one of width 2d, so what duplication adds here is width, which eq. (6)
    with full d x d heads does not need (there a duplicated model is exactly a plain one).
Not taken from the script: its s_1 / ||s_1|| (this suite keeps s_1 = 1_d), its loss on the
prediction of s_2 from e_1 (`loss` is loss (3), T = 2..t_max, as `ar_attention.loss`, so the MSEs of
both models are comparable), nn.MSELoss's mean (a constant factor, which Adam ignores up to its
eps) and its 100-row position table (t_max rows here; the script reads only the first T).

Fig 8: B_h is this model's value-output map W_O W_V^h ([D, D], `value_output`); the biases b_V^h,
b_O and the read-out are not part of it.

References:
  Sander, Giryes, Suzuki, Blondel, Peyre. How do Transformers Perform In-Context Autoregressive
  Learning? ICML 2024. arXiv:2402.05787. Code: github.com/michaelsdr/ical (non_augmented.py).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_jax.models import ar_attention

ENCODINGS = ('plain', 'duplicated')


class ScriptParams(NamedTuple):
  """The script's one-layer model (torch nn.Linear layout: weight [out, in]).

  w_q, w_k, w_v [H, D, D], b_q, b_k, b_v [H, D]: per-head query/key/value maps with biases;
  pos [t_max, D]: learned positions p_t; w_o [D, D], b_o [D]: the shared output map;
  ln_scale, ln_bias [D]: LayerNorm; w_r [d, D], b_r [d]: the read-out.
  """
  w_q: jax.Array
  w_k: jax.Array
  w_v: jax.Array
  b_q: jax.Array
  b_k: jax.Array
  b_v: jax.Array
  pos: jax.Array
  w_o: jax.Array
  b_o: jax.Array
  ln_scale: jax.Array
  ln_bias: jax.Array
  w_r: jax.Array
  b_r: jax.Array


def token_width(d: int, encoding: str) -> int:
  """D: d for plain tokens, 2d for duplicated ones."""
  if encoding not in ENCODINGS:
    raise ValueError(f'encoding: got {encoding!r}, expected one of {ENCODINGS}')
  return 2 * d if encoding == 'duplicated' else d


def init(key: jax.Array, d: int, heads: int, t_max: int, *, encoding: str = 'plain'
         ) -> ScriptParams:
  """PyTorch's default initialisation, as the script gets it.

  nn.Linear(fan_in, .): weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (every map here has
  fan_in = D); nn.Embedding: positions ~ N(0, 1); nn.LayerNorm: scale 1, bias 0.

  Args:
    key: PRNG key.
    d: dimension of s_t.
    heads: H.
    t_max: number of positions (tokens e_1..e_{t_max}).
    encoding: 'plain' (D = d) or 'duplicated' (D = 2d).

  Returns:
    ScriptParams.
  """
  if d < 1 or heads < 1 or t_max < 1:
    raise ValueError(f'init: d={d}, heads={heads}, t_max={t_max} must all be >= 1')
  width = token_width(d, encoding)
  bound = 1.0 / math.sqrt(width)
  keys = iter(jax.random.split(key, 11))
  unif = lambda shape: jax.random.uniform(next(keys), shape, minval=-bound, maxval=bound)
  hdd, hd = (heads, width, width), (heads, width)
  return ScriptParams(
      w_q=unif(hdd), w_k=unif(hdd), w_v=unif(hdd), b_q=unif(hd), b_k=unif(hd), b_v=unif(hd),
      pos=jax.random.normal(next(keys), (t_max, width)),
      w_o=unif((width, width)), b_o=unif((width,)),
      ln_scale=jnp.ones((width,)), ln_bias=jnp.zeros((width,)),
      w_r=unif((d, width)), b_r=unif((d,)))


def init_near_equal(key: jax.Array, d: int, heads: int, t_max: int, *, noise: float = 0.05,
                    encoding: str = 'duplicated') -> ScriptParams:
  """Fig 8's initialisation: one head's draw copied to every head, plus noise N(0, 1) per head.

  As the script's `init_same` (Sec. 6: "initialize each parameter equally across heads but add a
  small perturbation .05 x N(0, 1)"): W_Q, W_K, W_V and their biases of head 1 are copied to every
  head (head 1 included) and each entry gets noise x N(0, 1); the shared parts (positions, W_O,
  LayerNorm, read-out) are as drawn by `init`.
  """
  k_one, k_noise = jax.random.split(key)
  one = init(k_one, d, 1, t_max, encoding=encoding)
  keys = jax.random.split(k_noise, 6)

  def spread(w, k):
    return jnp.repeat(w, heads, axis=0) + noise * jax.random.normal(
        k, (heads,) + w.shape[1:], w.dtype)

  fields = ('w_q', 'w_k', 'w_v', 'b_q', 'b_k', 'b_v')
  return one._replace(**{f: spread(getattr(one, f), k) for f, k in zip(fields, keys)})


def value_output(params: ScriptParams) -> jax.Array:
  """B_h = W_O W_V^h, [H, D, D]: Fig 8's B_h for this model (biases not included)."""
  return jnp.einsum('ik,hkj->hij', params.w_o, params.w_v)


def positional_attention(params: ScriptParams, t: int) -> jax.Array:
  """P^h [H, t, t]: row T (0-based) the causal softmax over t' <= T of <Q p_T, K p_t'> / sqrt(D).

  Independent of the tokens: under vmap over sequences it is computed once per parameters.
  """
  if params.pos.shape[0] < t:
    raise ValueError(f'params.pos: {params.pos.shape[0]} positions for {t} tokens')
  width = params.pos.shape[1]
  p_TxD = params.pos[:t]
  qp_HxTxD = jnp.einsum('hkj,tj->htk', params.w_q, p_TxD) + params.b_q[:, None]
  kp_HxTxD = jnp.einsum('hkj,tj->htk', params.w_k, p_TxD) + params.b_k[:, None]
  logits_HxTxT = jnp.einsum('htk,huk->htu', qp_HxTxD, kp_HxTxD) / math.sqrt(width)
  causal_TxT = jnp.tril(jnp.ones((t, t), bool))
  # The diagonal is always allowed, so no row is all -inf.
  return jax.nn.softmax(jnp.where(causal_TxT[None], logits_HxTxT, -jnp.inf), axis=-1)


@jax.custom_vjp
def _times_shared(x_BxN: jax.Array, p_N: jax.Array) -> jax.Array:
  """x * p with p shared by the batch, x [B, ...], p [...]: the positional attention applied to
  every sequence's scores.

  Its gradient with respect to p sums over the batch, which XLA's CPU reduction over the leading
  axis of [B, H, T, T] did at ~60 ms a step at the quick sizes (B = 128, H = 16, T = 50); as a
  product with a vector of ones it is a GEMV, ~8 ms (measured on the 2-core development CPU).
  """
  return x_BxN * p_N[None]


def _times_shared_fwd(x_BxN, p_N):
  return _times_shared(x_BxN, p_N), (x_BxN, p_N)


def _times_shared_bwd(res, g_BxN):
  x_BxN, p_N = res
  b = x_BxN.shape[0]
  g_p = jnp.ones((b,), g_BxN.dtype) @ (g_BxN * x_BxN).reshape(b, -1)
  return g_BxN * p_N[None], g_p.reshape(p_N.shape)


_times_shared.defvjp(_times_shared_fwd, _times_shared_bwd)


def _script_batch(params: ScriptParams, e_BxTxD: jax.Array) -> jax.Array:
  """`script_all` for a batch of token sequences [B, T, D] -> [B, T, d] (see there)."""
  if jnp.iscomplexobj(e_BxTxD):
    raise ValueError('e: the script model takes real tokens (LayerNorm of complex tokens is not '
                     'defined)')
  t, width = e_BxTxD.shape[1:]
  if width != params.w_q.shape[-1]:
    raise ValueError(f'e: token width {width}, params of width {params.w_q.shape[-1]}')
  project = lambda w_HxDxD, b_HxD: (jnp.einsum('hkj,btj->bhtk', w_HxDxD, e_BxTxD)
                                    + b_HxD[None, :, None])
  q_BxHxTxD = project(params.w_q, params.b_q)
  k_BxHxTxD = project(params.w_k, params.b_k)
  v_BxHxTxD = project(params.w_v, params.b_v)
  # The script masks the linear scores with -1e20 and multiplies by the softmax, which is exactly
  # 0 there; setting them to 0 gives the same product without the huge intermediate.
  scores_BxHxTxT = jnp.einsum('bhtk,bhuk->bhtu', q_BxHxTxD, k_BxHxTxD) / math.sqrt(width)
  causal_TxT = jnp.tril(jnp.ones((t, t), bool))
  a_BxHxTxT = _times_shared(jnp.where(causal_TxT[None, None], scores_BxHxTxT, 0.0),
                            positional_attention(params, t))
  z_BxTxD = jnp.einsum('bhtu,bhuk->btk', a_BxHxTxT, v_BxHxTxD)  # summed over heads and tokens
  y_BxTxD = ar_attention.layer_norm(z_BxTxD @ params.w_o.T + params.b_o[None, None],
                                    params.ln_scale, params.ln_bias)
  return y_BxTxD @ params.w_r.T + params.b_r[None, None]


def script_all(params: ScriptParams, e_TxD: jax.Array) -> jax.Array:
  """The script's model for every prefix: row T-1 = y_T, the prediction of s_{T+1} from e_{1:T}.

  Args:
    params: ScriptParams of width D.
    e_TxD: real tokens [T, D], T <= t_max.

  Returns:
    [T, d].
  """
  return _script_batch(params, e_TxD[None])[0]


def predict_all(params: ScriptParams, s_Tp1xD: jax.Array, *, encoding: str = 'plain'
                ) -> jax.Array:
  """Predictions of s_{T+1} for T = 2..t_max from e_{1:T}, as `ar_attention.predict_all`.

  Args:
    params: ScriptParams of width d (plain) or 2d (duplicated).
    s_Tp1xD: one real sequence s_1..s_{t_max+1} [t_max + 1, d]; tokens from s_1..s_{t_max}.
    encoding: 'plain' or 'duplicated'.

  Returns:
    [t_max - 1, d], aligned with s_Tp1xD[2:] (the script's own prediction of s_2 from e_1 is
    dropped, as loss (3) starts at T = 2).
  """
  if encoding not in ENCODINGS:
    raise ValueError(f'encoding: got {encoding!r}, expected one of {ENCODINGS}')
  return script_all(params, ar_attention.tokens(s_Tp1xD[:-1], encoding))[1:]


def loss(params: ScriptParams, s_Tp1xD: jax.Array, *, encoding: str = 'plain') -> jax.Array:
  """Loss (3) for one sequence: sum_{T=2}^{t_max} |y_T - s_{T+1}|^2."""
  r = predict_all(params, s_Tp1xD, encoding=encoding) - s_Tp1xD[2:]
  return jnp.sum(jnp.square(r))


def mean_loss(params: ScriptParams, s_BxTp1xD: jax.Array, *, encoding: str = 'plain'
              ) -> jax.Array:
  """Loss (3) averaged over a batch of sequences [B, t_max + 1, d].

  The batch is one program rather than a vmap of `loss`, so that the positional attention,
  shared by the batch, gets its gradient through `_times_shared`.
  """
  if encoding not in ENCODINGS:
    raise ValueError(f'encoding: got {encoding!r}, expected one of {ENCODINGS}')
  e_BxTxD = jax.vmap(lambda s: ar_attention.tokens(s[:-1], encoding))(s_BxTp1xD)
  r_BxTm1xD = _script_batch(params, e_BxTxD)[:, 1:] - s_BxTp1xD[:, 2:]
  return jnp.mean(jnp.sum(jnp.square(r_BxTm1xD), axis=(1, 2)))
