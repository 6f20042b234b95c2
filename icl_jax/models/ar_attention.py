"""Linear-attention models of Sander et al. (2024) on AR sequences s_{t+1} = W s_t.

Sequences s [t_max + 1, d] (s_1 = 1_d; complex for unitary / commuting W, real for orthogonal W)
are encoded as tokens e_1 .. e_{t_max} (`tokens`): plain e_t = s_t, augmented e_t = (0, s_t,
s_{t-1}) with s_0 = 0, duplicated e_t = (s_t, s_t). Every model returns its prediction of
s_{T+1} for ALL prefixes e_{1:T} at once, row i (0-based) for T = i + 1, and loss (3) sums
|T(e_{1:T}) - s_{T+1}|^2 over T = 2..t_max.

  * eq. (4), augmented one layer: T(e_{1:T}) = (e_T + sum_{t<=T} <A e_T | e_t>_C B e_t)_{1:d}, full
    A, B (`Eq4Params`) or Assumption 2 (`Assumption2Params`); computed with prefix sums
    (`causal_linear_attention`), the T x T form kept as a reference.
  * depth (Sec. 6, Fig. 5): L layers of eq. (4) on all 3d coordinates with LayerNorm
    (`DeepParams`, `deep_all`), real tokens.
  * eq. (6), plain/duplicated tokens, H heads and positional matrix P, tau = T - 1, no residual:
    Assumption 3 (`Assumption3Params`) or the standard W_Q, W_K, W_V, W_O (`StandardParams`); P a
    free [t_max, t_max] matrix or the masked positional softmax of Sec. 6 (`PositionalSoftmax`).
  * eq. (7), positional-encoding-only attention: eq. (6) with B^T A = I fixed (`PEOnlyParams`).

Conventions.
  * Hermitian product <x | y>_C = y^H x = sum_i x_i conj(y_i) (Appendix A), used literally: eq. (4)
    conjugates the key, <A e_T | e_t>_C = e_t^H A e_T, which makes Assumption 2 with a1 = a4 = a2 =
    b2 = 0 exactly one GD step W_1 = a3 b1 sum_t s_{t+1} s_t^H from W_0 = 0 on (5) (App. A.2/A.3);
    eq. (6) conjugates the query, <e_t | A e_{T-1}>_C = e_{T-1}^H A^T e_t, which gives Lemma 2's
    lambda_j^{t-T+1} and zero loss at Prop. 3. Eq. (2), <W_Q e_t | W_K e_t'>_C, conjugates the key
    instead; for complex tokens the two differ and only eq. (6)'s gives Lemma 2, so the standard
    parameterisation scores <W_K e_t | W_Q e_{T-1}>_C, i.e. eq. (6) with A^h = W_K^T W_Q.
  * P indexing: P [t_max, t_max], 0-based P[r, c] = the paper's P_{r+1, c+1}. The prefix of length
    T reads row T - 2 (the paper's P_{T-1, .}) at columns 0..T-1 (t = 1..T): P[r, c] is used iff
    c <= r + 1. The last row is never read. The prefix T = 1 has no token tau = 0: its output is 0
    (and loss (3) starts at T = 2 anyway).
  * Outputs are sections of the first d coordinates where the token is wider than s (augmented,
    duplicated); Sec. 6's code maps duplicated outputs through a trained linear layer instead.

References:
  Sander, Giryes, Suzuki, Blondel, Peyre. How do Transformers Perform In-Context Autoregressive
  Learning? ICML 2024. arXiv:2402.05787.
"""

from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

ENCODINGS = ('plain', 'augmented', 'duplicated')
NORMS = ('branch', 'pre', 'none')
IMPLS = ('prefix', 'quadratic')
_CHUNK_TARGET = 16  # default chunk: best of 10, 16, 20, 25 on the 2-core CPU at T = 100..400


def tokens(s_TxD: jax.Array, encoding: str) -> jax.Array:
  """Encodes states s_1..s_T as tokens (Sec. 3 / Sec. 6): [T, d], [T, 3d] or [T, 2d]."""
  if encoding == 'plain':
    return s_TxD
  if encoding == 'augmented':
    zeros_TxD = jnp.zeros_like(s_TxD)
    prev_TxD = jnp.concatenate([zeros_TxD[:1], s_TxD[:-1]], axis=0)  # s_0 = 0
    return jnp.concatenate([zeros_TxD, s_TxD, prev_TxD], axis=1)
  if encoding == 'duplicated':
    return jnp.concatenate([s_TxD, s_TxD], axis=1)
  raise ValueError(f'encoding: got {encoding!r}, expected one of {ENCODINGS}')


# --- causal linear attention ----------------------------------------------------------------


def _chunk_size(t: int, chunk: Optional[int]) -> int:
  if chunk is None:  # the fewest chunks of size <= _CHUNK_TARGET, as even as possible
    return -(-t // -(-t // _CHUNK_TARGET))
  if chunk < 1:
    raise ValueError(f'chunk: got {chunk}, expected an integer >= 1 or None')
  return min(chunk, t)


def causal_linear_attention(q_TxK: jax.Array, k_TxK: jax.Array, v_TxV: jax.Array, *,
                            chunk: Optional[int] = None) -> jax.Array:
  """y_T = sum_{t<=T} <q_T | k_t>_C v_t = (sum_{t<=T} v_t k_t^H) q_T for every T, by prefix sums.

  Chunkwise form of the prefix sum S_T = sum_{t<=T} v_t k_t^H: the sequence is cut into chunks
  of `chunk` tokens; the running state S is summed over whole chunks (an exclusive cumulative sum
  of [V, K] chunk states) and the causal part inside a chunk is a [chunk, chunk] product. chunk=1
  is the plain cumulative sum of outer products, chunk >= T the T x T form. Cost O(T C (K + V) +
  T K V) instead of O(T^2 (K + V)); memory O(T C + T K V / C). The tail is zero-padded to a whole
  chunk (zero keys and values add nothing to earlier rows).

  Speed (2-core development CPU, float32, loss + gradient of the 3-layer depth model, d = 5,
  width K = V = 15, Fig. 5's sizes): batch 1024, T = 50: T x T 107 ms, default chunks (C = 13)
  152 ms, C = 25 117 ms, C = 1 (plain cumulative sum) 685 ms; batch 128, T = 400: T x T 499 ms,
  default 126 ms. At T = 50 the state (K V = 225 numbers per token) outweighs a row of T scores
  and XLA's CPU dots on [C, C] blocks carry per-block overhead, so the T x T form is faster there;
  the prefix form wins from T ~ 100. Pass `chunk` to tune.

  Args:
    q_TxK: queries; k_TxK: keys (conjugated); v_TxV: values.
    chunk: tokens per chunk; None: the fewest chunks of <= 16 tokens.

  Returns:
    [T, V].
  """
  t, kdim = q_TxK.shape
  vdim = v_TxV.shape[1]
  c = _chunk_size(t, chunk)
  n = -(-t // c)
  pad = ((0, n * c - t), (0, 0))
  q_NxCxK = jnp.pad(q_TxK, pad).reshape(n, c, kdim)
  kc_NxCxK = jnp.conj(jnp.pad(k_TxK, pad)).reshape(n, c, kdim)
  v_NxCxV = jnp.pad(v_TxV, pad).reshape(n, c, vdim)
  s_NxCxC = jnp.einsum('ntk,nuk->ntu', q_NxCxK, kc_NxCxK)
  s_NxCxC = jnp.where(jnp.tril(jnp.ones((1, c, c), bool)), s_NxCxC, 0)
  y_NxCxV = jnp.einsum('ntu,nuv->ntv', s_NxCxC, v_NxCxV)
  if n > 1:
    state_NxVxK = jnp.einsum('nuv,nuk->nvk', v_NxCxV, kc_NxCxK)
    prev_NxVxK = jnp.concatenate([jnp.zeros_like(state_NxVxK[:1]),
                                  jnp.cumsum(state_NxVxK[:-1], axis=0)], axis=0)
    y_NxCxV = y_NxCxV + jnp.einsum('nvk,ntk->ntv', prev_NxVxK, q_NxCxK)
  return y_NxCxV.reshape(n * c, vdim)[:t]


def causal_linear_attention_quadratic(q_TxK: jax.Array, k_TxK: jax.Array,
                                      v_TxV: jax.Array) -> jax.Array:
  """The T x T reference of `causal_linear_attention`: masked scores <q_T | k_t>_C, then @ v."""
  t = q_TxK.shape[0]
  s_TxT = q_TxK @ jnp.conj(k_TxK).T
  return jnp.where(jnp.tril(jnp.ones((t, t), bool)), s_TxT, 0) @ v_TxV


def _attention(impl: str, chunk: Optional[int]):
  if impl == 'prefix':
    return lambda q, k, v: causal_linear_attention(q, k, v, chunk=chunk)
  if impl == 'quadratic':
    return causal_linear_attention_quadratic
  raise ValueError(f'impl: got {impl!r}, expected one of {IMPLS}')


# --- eq. (4): augmented tokens, one layer ---------------------------------------------------


class Eq4Params(NamedTuple):
  """Full parameterisation of eq. (4): a = A, b = B, each [3d, 3d] (real, or complex)."""
  a: jax.Array
  b: jax.Array


class Assumption2Params(NamedTuple):
  """Assumption 2: a = (a1, a2, a3, a4) [4], b = (b1, b2) [2]; A_i = a_i I, B_i = b_i I in

  A = [[0, 0, 0], [0, A1, A2], [0, A3, A4]],  B = [[0, B1, B2], [0, 0, 0], [0, 0, 0]].
  """
  a: jax.Array
  b: jax.Array


def assumption2_full(params: Assumption2Params, d: int) -> Eq4Params:
  """The [3d, 3d] matrices A, B of Assumption 2."""
  a1, a2, a3, a4 = params.a
  b1, b2 = params.b
  z = jnp.zeros_like(a1)
  eye = jnp.eye(d, dtype=z.dtype)
  blocks = lambda rows: jnp.kron(jnp.stack([jnp.stack(r) for r in rows]), eye)
  a = blocks([[z, z, z], [z, a1, a2], [z, a3, a4]])
  b = blocks([[z, b1, b2], [z, z, z], [z, z, z]])
  return Eq4Params(a=a, b=b)


def init_eq4(key: jax.Array, d: int, *, scale: float = 0.1, dtype=jnp.float32) -> Eq4Params:
  """A, B with i.i.d. N(0, scale^2) entries, [3d, 3d]. Complex dtypes draw complex normals; note
  that jax.grad w.r.t. complex parameters returns the conjugate of the ascent direction."""
  k_a, k_b = jax.random.split(key)
  shape = (3 * d, 3 * d)
  return Eq4Params(a=scale * jax.random.normal(k_a, shape, dtype),
                   b=scale * jax.random.normal(k_b, shape, dtype))


def init_assumption2(key: jax.Array, *, scale: float = 0.1) -> Assumption2Params:
  """a [4], b [2] i.i.d. N(0, scale^2)."""
  k_a, k_b = jax.random.split(key)
  return Assumption2Params(a=scale * jax.random.normal(k_a, (4,)),
                           b=scale * jax.random.normal(k_b, (2,)))


def prop2_params(a3b1, *, a3: float = 1.0) -> Assumption2Params:
  """Prop. 2 / App. A.2: a1 = a2 = a4 = b2 = 0, a3 b1 = a3b1 (a3 = `a3`, b1 = a3b1 / a3).

  Then eq. (4) is one GD step with step size eta = a3b1 from W_0 = 0 on (5): the prediction is
  W_1 s_T with W_1 = eta sum_{t=1}^{T-1} s_{t+1} s_t^H. (Prop. 2 only needs a1 + a4 = 0, but
  with s_0 = 0 a1 = -a4 != 0 adds a1 b1 <s_T | s_1>_C s_1: the t = 1 term has no s_0 partner.)
  """
  a3b1 = jnp.asarray(a3b1, jnp.result_type(float))
  z = jnp.zeros_like(a3b1)
  return Assumption2Params(a=jnp.stack([z, z, z + a3, z]), b=jnp.stack([a3b1 / a3, z]))


def _as_full(params, d: int) -> Eq4Params:
  return assumption2_full(params, d) if isinstance(params, Assumption2Params) else params


def _split_width(e_TxE: jax.Array, blocks: int) -> int:
  if e_TxE.shape[-1] % blocks:
    raise ValueError(f'e: width {e_TxE.shape[-1]} is not a multiple of {blocks} (augmented '
                     'tokens (0, s_t, s_{t-1}) have width 3d)')
  return e_TxE.shape[-1] // blocks


def eq4_all(params: Union[Eq4Params, Assumption2Params], e_TxE: jax.Array, *,
            impl: str = 'prefix', chunk: Optional[int] = None) -> jax.Array:
  """Eq. (4) for every prefix: row T-1 = (e_T + sum_{t<=T} <A e_T | e_t>_C B e_t)_{1:d}.

  The sum is (sum_{t<=T} (B e_t)_{1:d} e_t^H) A e_T: a causal linear attention with query
  A e_T, key e_t and value (B e_t)_{1:d} (only the first d rows of B are used).

  Args:
    params: Eq4Params or Assumption2Params.
    e_TxE: augmented tokens [T, 3d].
    impl: 'prefix' (chunked prefix sums) or 'quadratic' (T x T reference).
    chunk: see `causal_linear_attention`.

  Returns:
    [T, d]: row i predicts s_{i+2} from e_{1:i+1}.
  """
  d = _split_width(e_TxE, 3)
  p = _as_full(params, d)
  y_TxD = _attention(impl, chunk)(e_TxE @ p.a.T, e_TxE, e_TxE @ p.b[:d].T)
  return e_TxE[:, :d] + y_TxD


def eq4_all_quadratic(params, e_TxE: jax.Array) -> jax.Array:
  """`eq4_all` through the T x T attention matrix (reference and benchmark baseline)."""
  return eq4_all(params, e_TxE, impl='quadratic')


# --- depth: L layers of eq. (4) with LayerNorm (Sec. 6, Fig. 5) ------------------------------


class DeepParams(NamedTuple):
  """L layers of eq. (4) on the full token: a, b [L, 3d, 3d]; LayerNorm scale, bias [L, 3d]."""
  a: jax.Array
  b: jax.Array
  ln_scale: jax.Array
  ln_bias: jax.Array


def init_deep(key: jax.Array, d: int, layers: int, *, scale: float = 0.1) -> DeepParams:
  """A_l, B_l i.i.d. N(0, scale^2); LayerNorm scale 1, bias 0."""
  if d < 1 or layers < 1:
    raise ValueError(f'init_deep: d={d}, layers={layers} must both be >= 1')
  k_a, k_b = jax.random.split(key)
  shape = (layers, 3 * d, 3 * d)
  return DeepParams(a=scale * jax.random.normal(k_a, shape),
                    b=scale * jax.random.normal(k_b, shape),
                    ln_scale=jnp.ones((layers, 3 * d)), ln_bias=jnp.zeros((layers, 3 * d)))


def layer_norm(x_TxE: jax.Array, scale_E: jax.Array, bias_E: jax.Array,
               eps: float = 1e-5) -> jax.Array:
  """LayerNorm over the token coordinates (Ba et al. 2016; eps as torch.nn.LayerNorm)."""
  mu_T = jnp.mean(x_TxE, axis=-1, keepdims=True)
  var_T = jnp.mean(jnp.square(x_TxE - mu_T), axis=-1, keepdims=True)
  as_row = lambda v: v.reshape((1,) * (x_TxE.ndim - 1) + v.shape)
  return (x_TxE - mu_T) * jax.lax.rsqrt(var_T + eps) * as_row(scale_E) + as_row(bias_E)


def deep_all(params: DeepParams, e_TxE: jax.Array, *, norm: str = 'branch',
             impl: str = 'prefix', chunk: Optional[int] = None) -> jax.Array:
  """L layers of eq. (4) on all 3d coordinates, then the first d coordinates, every prefix.

  Layer l, with u_l(x)_T = sum_{t<=T} <A_l x_T | x_t> B_l x_t (causal, so every prefix at once):
    norm='branch' (default): e <- e + LN_l(u_l(e))  -- LayerNorm on the attention output before the
        residual sum, as in the authors' code for Fig. 5 (github.com/michaelsdr/ical,
        augmented.py: out = out + norm1(attention(out))); Sec. 6 only says "using layer
        normalization".
    norm='pre': e <- e + u_l(LN_l(e)) (pre-LN); norm='none': e <- e + u_l(e) (L = 1 is eq. (4)).
  Departures from that code: it also has biases in Q/K/V, a 1/sqrt(3d) score scale, an output
  projection inside the attention and a trained linear read-out after the last layer; here each
  layer is eq. (4)'s (A_l, B_l) alone (A_l absorbs the scale, B_l the projections) and the
  prediction is the section of the first d coordinates, as the paper states.

  Args:
    params: DeepParams with L layers.
    e_TxE: real augmented tokens [T, 3d] (LayerNorm is defined for real tokens only).
    norm: one of NORMS.
    impl, chunk: see `eq4_all`.

  Returns:
    [T, d]: row i predicts s_{i+2} from e_{1:i+1}.
  """
  d = _split_width(e_TxE, 3)
  if norm not in NORMS:
    raise ValueError(f'norm: got {norm!r}, expected one of {NORMS}')
  if jnp.iscomplexobj(e_TxE):
    raise ValueError('e: the deep model (Sec. 6) takes real tokens; LayerNorm of complex tokens is '
                     'not defined')
  attend = _attention(impl, chunk)

  x_TxE = e_TxE
  for l in range(params.a.shape[0]):  # L <= ~6 (Fig. 5): unrolled, measured faster than a scan
    a, b, g, beta = (leaf[l] for leaf in params)
    z_TxE = layer_norm(x_TxE, g, beta) if norm == 'pre' else x_TxE
    u_TxE = attend(z_TxE @ a.T, z_TxE, z_TxE @ b.T)
    x_TxE = x_TxE + (layer_norm(u_TxE, g, beta) if norm == 'branch' else u_TxE)
  return x_TxE[:, :d]


# --- eq. (6): plain tokens, H heads, positional matrix P -------------------------------------


class PositionalSoftmax(NamedTuple):
  """Sec. 6: P[r, c] = softmax_c(<W_Qpos p_r | W_Kpos p_c>) over c <= r + 1.

  pos [t_max, dp] learnable positions p; w_q, w_k [kp, dp]. One P shared by the heads, as in
  eq. (6) (the authors' code reuses the token W_Q, W_K per head and scales by 1/sqrt(width)).
  """
  pos: jax.Array
  w_q: jax.Array
  w_k: jax.Array


Positional = Union[jax.Array, PositionalSoftmax]


class Assumption3Params(NamedTuple):
  """Assumption 3: A^h = diag(a[h]), B^h = diag(b[h]); a, b [H, D]; p: P [t_max, t_max]
  or PositionalSoftmax. Lemma 2's A, B (H x d, rows a_h, b_h) are a and b."""
  a: jax.Array
  b: jax.Array
  p: Positional


class StandardParams(NamedTuple):
  """Standard heads: w_q, w_k, w_v [H, K, D], w_o [H, D, K]; A^h = W_K^T W_Q, B^h = W_O W_V; p as
  in Assumption3Params."""
  w_q: jax.Array
  w_k: jax.Array
  w_v: jax.Array
  w_o: jax.Array
  p: Positional


class PEOnlyParams(NamedTuple):
  """Positional-encoding-only attention (Sec. 5.3): P [t_max, t_max], B^T A = I fixed."""
  p: jax.Array


def positional_matrix(p: Positional) -> jax.Array:
  """P [t_max, t_max]: the matrix itself, or the masked softmax of Sec. 6 (zero where c > r + 1)."""
  if not isinstance(p, PositionalSoftmax):
    return p
  t = p.pos.shape[0]
  logits_TxT = (p.pos @ p.w_q.T) @ (p.pos @ p.w_k.T).T
  allowed_TxT = jnp.tril(jnp.ones((t, t), bool), k=1)
  logits_TxT = jnp.where(allowed_TxT, logits_TxT, -jnp.inf)
  return jnp.where(allowed_TxT, jax.nn.softmax(logits_TxT, axis=-1), 0.0)


def _shifted_positional(p: Positional, t: int) -> jax.Array:
  """[t, t]: row i (prefix T = i + 1) = the paper's P_{T-1, .} (0-based row i - 1) at columns
  c <= i; row 0 = 0 (no token tau = 0)."""
  p_MxM = positional_matrix(p)
  if p_MxM.shape[0] < t or p_MxM.shape[1] < t:
    raise ValueError(f'p: positional matrix {p_MxM.shape} is smaller than the {t} tokens')
  p_TxT = p_MxM[:t, :t]
  shifted = jnp.concatenate([jnp.zeros_like(p_TxT[:1]), p_TxT[:-1]], axis=0)
  return jnp.where(jnp.tril(jnp.ones((t, t), bool)), shifted, 0)


def _shift(x_TxK: jax.Array) -> jax.Array:
  """Row i = x[i - 1] (the token tau = T - 1 of prefix T = i + 1); row 0 = 0."""
  return jnp.concatenate([jnp.zeros_like(x_TxK[:1]), x_TxK[:-1]], axis=0)


def eq6_all(params: Union[Assumption3Params, StandardParams], e_TxE: jax.Array) -> jax.Array:
  """Eq. (6) for every prefix: row T-1 = sum_h sum_{t<=T} P_{T-1,t} <e_t | A^h e_{T-1}>_C B^h e_t.

  Assumption 3 uses Lemma 2's form with C = B^T A (C_ij = sum_h b_h^i a_h^j):
    T(e_{1:T})_i = sum_j C_ij conj(e_{T-1,j}) sum_t P_{T-1,t} e_{t,i} e_{t,j};
  standard heads score <W_K e_t | W_Q e_{T-1}>_C and map values through W_O W_V.
  P is T x T by nature, so this is a T x T computation (vectorised over prefixes).

  Args:
    params: Assumption3Params or StandardParams.
    e_TxE: tokens [T, D] (plain or duplicated), T <= t_max.

  Returns:
    [T, D]: row i predicts (the section of) s_{i+2} from e_{1:i+1}; row 0 is 0.
  """
  t = e_TxE.shape[0]
  p_TxT = _shifted_positional(params.p, t)
  eq_TxE = jnp.conj(_shift(e_TxE))
  if isinstance(params, Assumption3Params):
    c_ExE = params.b.T @ params.a
    # M_T = sum_t P_{T-1,t} e_t e_t^T (no conjugate: both factors are e_t itself).
    m_TxExE = jnp.einsum('ic,cm,cj->imj', p_TxT, e_TxE, e_TxE)
    return jnp.einsum('mj,ij,imj->im', c_ExE, eq_TxE, m_TxExE)
  q_HxTxK = jnp.einsum('hkj,ij->hik', params.w_q, eq_TxE)  # conj(W_Q e_{T-1}), W_Q real
  k_HxTxK = jnp.einsum('hkj,cj->hck', params.w_k, e_TxE)
  v_HxTxK = jnp.einsum('hkj,cj->hck', params.w_v, e_TxE)
  s_HxTxT = jnp.einsum('hik,hck->hic', q_HxTxK, k_HxTxK) * p_TxT[None]
  z_HxTxK = jnp.einsum('hic,hck->hik', s_HxTxT, v_HxTxK)
  return jnp.einsum('hmk,hik->im', params.w_o, z_HxTxK)


def pe_only_all(params: PEOnlyParams, e_TxD: jax.Array) -> jax.Array:
  """Eq. (6) with B^T A = I: row T-1 = conj(e_{T-1}) * sum_{t<=T} P_{T-1,t} e_t * e_t.

  For d = 1 and s_t = lambda^{t-1} this is sum_t P_{T-1,t} lambda^{2t-T}, so loss (3) over
  lambda = e^{i theta / mu} is the sum over T of eq. (7) with p = P_{T-1, 1:T} (Sec. 5.3);
  coordinates are independent for d > 1.

  Returns:
    [T, d]; row 0 is 0.
  """
  p_TxT = _shifted_positional(params.p, e_TxD.shape[0])
  return jnp.conj(_shift(e_TxD)) * (p_TxT @ (e_TxD * e_TxD))


def _init_positional(key, t_max: int, positional: str, scale: float, pos_dim: Optional[int]):
  if positional == 'matrix':
    return scale * jax.random.normal(key, (t_max, t_max))
  if positional == 'softmax':
    dp = pos_dim or t_max
    k_p, k_q, k_k = jax.random.split(key, 3)
    return PositionalSoftmax(pos=jax.random.normal(k_p, (t_max, dp)),
                             w_q=scale * jax.random.normal(k_q, (dp, dp)),
                             w_k=scale * jax.random.normal(k_k, (dp, dp)))
  raise ValueError(f"positional: got {positional!r}, expected 'matrix' or 'softmax'")


def init_assumption3(key: jax.Array, dim: int, heads: int, t_max: int, *, scale: float = 0.1,
                     positional: str = 'matrix', pos_dim: Optional[int] = None
                     ) -> Assumption3Params:
  """a, b [H, dim] and P (matrix [t_max, t_max] or softmax) i.i.d. N(0, scale^2) (positions
  of the softmax form N(0, 1)). dim is the token width (d, or 2d for duplicated tokens)."""
  k_a, k_b, k_p = jax.random.split(key, 3)
  return Assumption3Params(a=scale * jax.random.normal(k_a, (heads, dim)),
                           b=scale * jax.random.normal(k_b, (heads, dim)),
                           p=_init_positional(k_p, t_max, positional, scale, pos_dim))


def init_standard(key: jax.Array, dim: int, heads: int, t_max: int, *,
                  head_dim: Optional[int] = None, scale: float = 0.1,
                  positional: str = 'matrix', pos_dim: Optional[int] = None) -> StandardParams:
  """W_Q, W_K, W_V [H, K, dim], W_O [H, dim, K] (K = head_dim, default dim) and P, as above."""
  kd = head_dim or dim
  k_q, k_k, k_v, k_o, k_p = jax.random.split(key, 5)
  mat = lambda k, shape: scale * jax.random.normal(k, shape)
  return StandardParams(w_q=mat(k_q, (heads, kd, dim)), w_k=mat(k_k, (heads, kd, dim)),
                        w_v=mat(k_v, (heads, kd, dim)), w_o=mat(k_o, (heads, dim, kd)),
                        p=_init_positional(k_p, t_max, positional, scale, pos_dim))


def init_pe_only(t_max: int) -> PEOnlyParams:
  """P = 0, the initialisation of Sec. 6 ("Change in the context distribution")."""
  return PEOnlyParams(p=jnp.zeros((t_max, t_max)))


def selector(t_max: int, *, offset: int = 1, value: float = 1.0) -> jax.Array:
  """P [t_max, t_max] with P_{T-1, T-1+offset} = value (0-based P[r, r + offset]), else 0.

  offset=1: the last-token selector P_{T-1,T} = 1 of Prop. 3; offset=0: P_{T-1,T-1}.
  """
  return value * jnp.eye(t_max, k=offset)


def prop3_params(dim: int, t_max: int) -> Assumption3Params:
  """Prop. 3 / Lemma 2: H = dim heads a_h = b_h = e_h (B^T A = I), P_{T-1,t} = delta_{t=T}."""
  eye = jnp.eye(dim)
  return Assumption3Params(a=eye, b=eye, p=selector(t_max))


def lemma3_params(dim: int, t_max: int) -> Assumption3Params:
  """Lemma 3: H = dim / 2 heads, B^T A = 1/2 diag(J, ..., J), P_{T-1,T-1} = -1, P_{T-1,T} = 2.

  Zero loss (3) for conjugate-pair contexts lambda = (l_1, conj l_1, ..., l_delta, conj l_delta).
  """
  if dim % 2:
    raise ValueError(f'dim: got {dim}, expected an even dimension (conjugate pairs)')
  a = jnp.kron(jnp.eye(dim // 2), jnp.ones((1, 2)))
  return Assumption3Params(a=a, b=0.5 * a, p=selector(t_max, value=2.0) - jnp.eye(t_max))


# --- loss (3) ---------------------------------------------------------------------------------


_DEFAULT_ENCODING = {Eq4Params: 'augmented', Assumption2Params: 'augmented',
                     DeepParams: 'augmented', Assumption3Params: 'plain',
                     StandardParams: 'plain', PEOnlyParams: 'plain'}
_ALLOWED = {'augmented': ('augmented',), 'plain': ('plain', 'duplicated')}


def predict_all(params, s_Tp1xD: jax.Array, *, encoding: Optional[str] = None,
                impl: str = 'prefix', chunk: Optional[int] = None,
                norm: str = 'branch') -> jax.Array:
  """Predictions of s_{T+1} for T = 2..t_max from e_{1:T}, the model chosen by the params' type.

  Args:
    params: Eq4Params / Assumption2Params (eq. (4)), DeepParams (depth), Assumption3Params /
      StandardParams (eq. (6)) or PEOnlyParams (eq. (7)).
    s_Tp1xD: one sequence s_1..s_{t_max+1} [t_max + 1, d]; tokens are built from s_1..s_{t_max}.
    encoding: tokens; default 'augmented' for eq. (4) and depth, 'plain' for eqs. (6)/(7);
      eq. (6) also takes 'duplicated'.
    impl, chunk: eq. (4) and depth only (see `eq4_all`); norm: depth only (see `deep_all`).

  Returns:
    [t_max - 1, d], aligned with s_Tp1xD[2:].
  """
  kind = _DEFAULT_ENCODING.get(type(params))
  if kind is None:
    raise ValueError(f'params: got {type(params).__name__}, expected one of '
                     f'{[c.__name__ for c in _DEFAULT_ENCODING]}')
  encoding = encoding or kind
  allowed = ('plain',) if isinstance(params, PEOnlyParams) else _ALLOWED[kind]
  if encoding not in allowed:
    raise ValueError(f'encoding: got {encoding!r} for {type(params).__name__}, expected one of '
                     f'{allowed}')
  d = s_Tp1xD.shape[-1]
  e_TxE = tokens(s_Tp1xD[:-1], encoding)
  if isinstance(params, (Eq4Params, Assumption2Params)):
    out = eq4_all(params, e_TxE, impl=impl, chunk=chunk)
  elif isinstance(params, DeepParams):
    out = deep_all(params, e_TxE, norm=norm, impl=impl, chunk=chunk)
  elif isinstance(params, PEOnlyParams):
    out = pe_only_all(params, e_TxE)
  else:
    out = eq6_all(params, e_TxE)
  return out[1:, :d]


def loss_terms(params, s_Tp1xD: jax.Array, **kwargs) -> jax.Array:
  """|T(e_{1:T}) - s_{T+1}|^2 (complex modulus) for T = 2..t_max: [t_max - 1]."""
  r = predict_all(params, s_Tp1xD, **kwargs) - s_Tp1xD[2:]
  return jnp.sum(jnp.real(r * jnp.conj(r)), axis=-1)


def loss(params, s_Tp1xD: jax.Array, **kwargs) -> jax.Array:
  """Loss (3) for one sequence: sum_{T=2}^{t_max} |T(e_{1:T}) - s_{T+1}|^2. kwargs: see
  `predict_all`."""
  return jnp.sum(loss_terms(params, s_Tp1xD, **kwargs))


def mean_loss(params, s_BxTp1xD: jax.Array, **kwargs) -> jax.Array:
  """Loss (3) averaged over a batch of sequences [B, t_max + 1, d] (vmap + mean)."""
  return jnp.mean(jax.vmap(lambda s: loss(params, s, **kwargs))(s_BxTp1xD))
