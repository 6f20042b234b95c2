"""A GPT2-style causal decoder and Garg et al.'s in-context regression model around it.

The backbone is GPT2 (Radford et al. 2019) as HuggingFace implements it and as Zhang, Frei &
Bartlett (2023, Sec. 4.3 and Appendix E) train it: pre-LayerNorm blocks of multi-head causal
softmax attention and a GELU MLP, a final LayerNorm, initialisation N(0, 0.02^2) with the
residual projections scaled by 1 / sqrt(2 depth). Positions are learned absolute embeddings
(GPT2's, the paper's setting), none (NoPE; causal masking alone tells positions apart) or fixed
sinusoids (Vaswani et al. 2017).

`Decoder` maps any token sequence [B, T, width] to [B, T, width]; other suites stack its blocks
on their own tokens. `GargRegressor` is the read-in / read-out of Garg et al. (2022): x_i and
y_i are separate tokens (y zero-padded to d dims), a linear read-in to the width, a linear
read-out to a scalar at every x token, so one pass predicts every y_i from the pairs before it.

Params are a plain pytree; `init` and `apply` are pure functions of it.
"""

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

POSITIONS = ('learned', 'none', 'sinusoidal')
INIT_STD = 0.02     # GPT2's initializer_range
LN_EPS = 1e-5       # GPT2's layer_norm_epsilon


def _dense(features: int, std: float = INIT_STD, name: Optional[str] = None) -> nn.Dense:
  return nn.Dense(features, kernel_init=nn.initializers.normal(std),
                  bias_init=nn.initializers.zeros, name=name)


def sinusoids(length: int, width: int) -> jax.Array:
  """The fixed positional encoding of Vaswani et al. (2017), Sec. 3.5: [length, width]."""
  pos = jnp.arange(length, dtype=jnp.float32)[:, None]
  freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, width, 2, dtype=jnp.float32) / width)
  angles = pos * freq[None, :]
  enc = jnp.zeros((length, width), jnp.float32)
  enc = enc.at[:, 0::2].set(jnp.sin(angles))
  return enc.at[:, 1::2].set(jnp.cos(angles[:, :width // 2]))


def causal_attention(q_BxQxHxK, k_BxTxHxK, v_BxTxHxK, q_pos_Q, k_pos_T):
  """Softmax attention in which the query at position i sees the keys at positions <= i.

  Positions are explicit so that queries may be a subset of the tokens (the last block of
  `Decoder` computes only the positions the caller reads).
  """
  q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q_BxQxHxK, k_BxTxHxK, v_BxTxHxK))
  return jnp.swapaxes(_causal_attention_heads_major(q, k, v, q_pos_Q, k_pos_T), 1, 2)


def _causal_attention_heads_major(q_BxHxQxK, k_BxHxTxK, v_BxHxTxK, q_pos_Q, k_pos_T):
  """`causal_attention` on head-major arrays [B, H, tokens, head_dim].

  XLA's CPU dots need the batch dimensions (B, H) leading; in this layout both einsums run on
  the operands as they are, where [B, T, H, K] operands cost a transposed copy of each.
  """
  scale = 1.0 / math.sqrt(q_BxHxQxK.shape[-1])
  logits = jnp.einsum('bhqk,bhtk->bhqt', q_BxHxQxK * scale, k_BxHxTxK)
  mask_QxT = q_pos_Q[:, None] >= k_pos_T[None, :]
  logits = jnp.where(mask_QxT[None, None], logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum('bhqt,bhtk->bhqk', weights, v_BxHxTxK)


@jax.custom_jvp
def _layer_norm(x_NxC: jax.Array, scale_C: jax.Array, bias_C: jax.Array) -> jax.Array:
  """LayerNorm over the last axis, as flax's nn.LayerNorm computes it (var = E[x^2] - E[x]^2)."""
  mean = jnp.mean(x_NxC, axis=-1, keepdims=True)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x_NxC), axis=-1, keepdims=True) - jnp.square(mean))
  return (x_NxC - mean) * (jax.lax.rsqrt(var + LN_EPS) * scale_C[None]) + bias_C[None]


@_layer_norm.defjvp
def _layer_norm_jvp(primals, tangents):
  """The textbook derivative, d xhat = (dx - mean(dx) - xhat mean(dx xhat)) / std.

  Differentiating the forward pass op by op goes through the mean, E[x^2], the variance and the
  rsqrt; reverse mode transposes this rule instead (measured: 1-2.5% less CPU time for the GPT2
  training step of benchmarks/gpt2_step.py). Forward mode and higher orders still work.
  """
  x, scale, bias = primals[0], primals[1][None], primals[2][None]     # [N, C], [1, C], [1, C]
  dx, dscale, dbias = tangents[0], tangents[1][None], tangents[2][None]
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axis=-1, keepdims=True) - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + LN_EPS)
  xhat = (x - mean) * rstd
  y = (x - mean) * (rstd * scale) + bias
  dxhat = (dx - jnp.mean(dx, axis=-1, keepdims=True)
           - xhat * jnp.mean(dx * xhat, axis=-1, keepdims=True)) * rstd
  return y, dxhat * scale + xhat * dscale + dbias


class _LayerNorm(nn.Module):
  """flax's nn.LayerNorm(epsilon=LN_EPS) (same params 'scale', 'bias'), with `_layer_norm`."""

  @nn.compact
  def __call__(self, x_NxC: jax.Array) -> jax.Array:
    c = x_NxC.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    return _layer_norm(x_NxC, scale, bias)


class Block(nn.Module):
  """One pre-LayerNorm GPT2 block: h + Attn(LN(h)), then h + MLP(LN(h)).

  With `keep` (static indices into the T tokens), only those positions are computed as queries,
  in the residual stream and in the MLP; keys and values still come from every token. The
  outputs at the kept positions equal those of the full block.

  Layouts (measured on a 2-core CPU, GPT2 at width 256, 82 tokens, batch 64): the residual
  stream is [B T, C], so every dense layer is one 2-D matmul whose weight gradient XLA computes
  without transposing the activations first; the fused q, k, v projection is transposed once to
  head-major [3, B, H, T, K], the layout the attention dots take as it is.
  """
  width: int
  heads: int
  depth: int          # of the whole stack, for GPT2's residual-projection init scale
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, h_BxTxC: jax.Array, keep: Optional[slice] = None) -> jax.Array:
    b, t, c = h_BxTxC.shape
    head_dim = c // self.heads
    residual_std = INIT_STD / math.sqrt(2 * self.depth)
    a_NxC = _LayerNorm(name='ln_1')(h_BxTxC.reshape(b * t, c))
    qkv = _dense(3 * c, name='c_attn')(a_NxC).reshape(b, t, 3, self.heads, head_dim)
    q, k, v = jnp.transpose(qkv, (2, 0, 3, 1, 4))                 # each [B, H, T, K]
    pos = jnp.arange(t)
    q_pos = pos
    if keep is not None:
      q, q_pos, h_BxTxC = q[:, :, keep], pos[keep], h_BxTxC[:, keep]
    tq = q.shape[2]
    att = _causal_attention_heads_major(q, k, v, q_pos, pos)      # [B, H, Q, K]
    att_NxC = jnp.transpose(att, (0, 2, 1, 3)).reshape(b * tq, c)
    h_NxC = h_BxTxC.reshape(b * tq, c) + _dense(c, residual_std, name='c_proj')(att_NxC)
    m = _LayerNorm(name='ln_2')(h_NxC)
    m = nn.gelu(_dense(self.mlp_ratio * c, name='c_fc')(m), approximate=True)
    h_NxC = h_NxC + _dense(c, residual_std, name='mlp_proj')(m)
    return h_NxC.reshape(b, tq, c)


class Decoder(nn.Module):
  """GPT2's stack: token embeddings plus positions, `depth` blocks, a final LayerNorm.

  Attributes:
    depth, width, heads: GPT2's n_layer, n_embd, n_head.
    positions: 'learned' (a [max_len, width] table, GPT2), 'none' (NoPE) or 'sinusoidal'.
    max_len: the longest sequence (the learned table's size).
  """
  depth: int
  width: int
  heads: int
  positions: str = 'learned'
  max_len: int = 1024

  @nn.compact
  def __call__(self, e_BxTxC: jax.Array, keep: Optional[slice] = None) -> jax.Array:
    """[B, T, width] token embeddings -> [B, T, width] (or [B, |keep|, width] with keep)."""
    t = e_BxTxC.shape[1]
    if t > self.max_len:
      raise ValueError(f'sequence of {t} tokens exceeds max_len={self.max_len}')
    h = e_BxTxC
    if self.positions == 'learned':
      table = self.param('wpe', nn.initializers.normal(INIT_STD), (self.max_len, self.width))
      h = h + table[None, :t]
    elif self.positions == 'sinusoidal':
      h = h + sinusoids(t, self.width)[None]
    elif self.positions != 'none':
      raise ValueError(f'positions must be one of {POSITIONS}, got {self.positions!r}')
    for i in range(self.depth):
      h = Block(self.width, self.heads, self.depth, name=f'h_{i}')(
          h, keep if i == self.depth - 1 else None)
    if keep is not None and self.depth == 0:
      h = h[:, keep]
    b, tq, c = h.shape
    return _LayerNorm(name='ln_f')(h.reshape(b * tq, c)).reshape(b, tq, c)


class GargRegressor(nn.Module):
  """Garg et al. (2022)'s model: read-in, `Decoder`, read-out at the x tokens.

  Tokens are x_1, (y_1, 0..0), x_2, (y_2, 0..0), ...: 2 n tokens for n points. The prediction
  at x_i reads only (x_j, y_j) for j < i and x_i; the model never computes the positions the
  loss does not read (the y tokens of the last block, the final norm and the read-out).
  """
  depth: int
  width: int
  heads: int
  positions: str = 'learned'
  max_points: int = 128

  @nn.compact
  def __call__(self, x_BxNxD: jax.Array, y_BxN: jax.Array) -> jax.Array:
    """Predictions of y_1..y_n, each from the points before it: [B, N]."""
    b, n, d = x_BxNxD.shape
    y_tok = jnp.concatenate([y_BxN[..., None], jnp.zeros((b, n, d - 1), x_BxNxD.dtype)], -1)
    z_BxTxD = jnp.stack([x_BxNxD, y_tok], axis=2).reshape(b, 2 * n, d)
    e = _dense(self.width, name='read_in')(z_BxTxD)
    h = Decoder(self.depth, self.width, self.heads, self.positions, 2 * self.max_points,
                name='backbone')(e, keep=slice(0, 2 * n, 2))
    return _dense(1, name='read_out')(h)[..., 0]


def regressor(*, depth: int, width: int, heads: int, positions: str = 'learned',
              max_points: int = 128) -> GargRegressor:
  """A `GargRegressor` after checking its sizes (one clear error per bad field)."""
  if positions not in POSITIONS:
    raise ValueError(f'positions must be one of {POSITIONS}, got {positions!r}')
  for name, value in (('depth', depth), ('width', width), ('heads', heads),
                      ('max_points', max_points)):
    if value <= 0:
      raise ValueError(f'{name} must be positive, got {value}')
  if width % heads:
    raise ValueError(f'width={width} must be a multiple of heads={heads}')
  if positions == 'sinusoidal' and width % 2:
    raise ValueError(f'sinusoidal positions need an even width, got {width}')
  return GargRegressor(depth, width, heads, positions, max_points)


def init(model: GargRegressor, key: jax.Array, d: int):
  """Parameters of `model` for d-dimensional covariates."""
  return model.init(key, jnp.zeros((1, 2, d)), jnp.zeros((1, 2)))['params']


def apply(model: GargRegressor, params, x_BxNxD: jax.Array, y_BxN: jax.Array) -> jax.Array:
  """Predictions [B, N] of every y_i from the pairs before it (see `GargRegressor`)."""
  return model.apply({'params': params}, x_BxNxD, y_BxN)
