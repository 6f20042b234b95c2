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
  """Softmax attention in which the query at position i sees the keys at positions <= i."""
  q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q_BxQxHxK, k_BxTxHxK, v_BxTxHxK))
  return jnp.swapaxes(_attention_bhtk(q, k, v, q_pos_Q, k_pos_T), 1, 2)


def _attention_bhtk(q_BxHxQxK, k_BxHxTxK, v_BxHxTxK, q_pos_Q, k_pos_T):
  scale = 1.0 / math.sqrt(q_BxHxQxK.shape[-1])
  logits = jnp.einsum('bhqk,bhtk->bhqt', q_BxHxQxK * scale, k_BxHxTxK)
  mask_QxT = q_pos_Q[:, None] >= k_pos_T[None, :]
  logits = jnp.where(mask_QxT[None, None], logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum('bhqt,bhtk->bhqk', weights, v_BxHxTxK)


class Block(nn.Module):
  """One pre-LayerNorm GPT2 block: h + Attn(LN(h)), then h + MLP(LN(h)).

  With `keep` (static indices into the T tokens), only those positions are computed as queries,
  in the residual stream and in the MLP; keys and values still come from every token. The
  outputs at the kept positions equal those of the full block.
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
    h = h_BxTxC.reshape(b * t, c)
    a = nn.LayerNorm(epsilon=LN_EPS, name='ln_1')(h)
    qkv = _dense(3 * c, name='c_attn')(a).reshape(b, t, 3, self.heads, head_dim)
    qkv = jnp.transpose(qkv, (2, 0, 3, 1, 4))
    q, k, v = qkv[0], qkv[1], qkv[2]
    pos = jnp.arange(t)
    q_pos = pos
    if keep is not None:
      q, q_pos = q[:, :, keep], pos[keep]
      h = h_BxTxC[:, keep].reshape(-1, c)
    tq = q.shape[2]
    att = _attention_bhtk(q, k, v, q_pos, pos)
    att = jnp.transpose(att, (0, 2, 1, 3)).reshape(b * tq, c)
    h = h + _dense(c, residual_std, name='c_proj')(att)
    m = nn.LayerNorm(epsilon=LN_EPS, name='ln_2')(h)
    m = nn.gelu(_dense(self.mlp_ratio * c, name='c_fc')(m), approximate=True)
    return (h + _dense(c, residual_std, name='mlp_proj')(m)).reshape(b, tq, c)


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
    return nn.LayerNorm(epsilon=LN_EPS, name='ln_f')(h)


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
