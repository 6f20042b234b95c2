"""Autoregressive sequences s_{t+1} = W s_t of Sander et al. (2024), one sequence per key.

A sequence starts at s_1 = 1_d and follows s_{t+1} = W s_t (Section 3) with a context matrix W
drawn per sequence from one of KINDS:

  * 'unitary': W = diag(lambda), lambda_i = e^{i theta_i}, theta_i iid U(0, 2 pi): C_U of
    Assumption 1 (commuting, complex).
  * 'orthogonal_commuting': d = 2 delta, lambda = (e^{i th_1}, e^{-i th_1}, ..., e^{i th_delta},
    e^{-i th_delta}), adjacent conjugate pairs, th_k iid U(0, 2 pi): C_O of Assumption 1. With
    real=True, the same spectrum in the fixed real basis: W = blockdiag(R(th_1), ..., R(th_delta)),
    R(th) = [[cos th, -sin th], [sin th, cos th]] (real rotations, Remark 1).
  * 'orthogonal': W Haar-random in O(d) (`kernel_gp.haar_orthogonal`): the non-commuting case of
    Section 6 (real).
  * 'mu': lambda_i = e^{i theta_i / mu}, theta_i iid U(0, 2 pi): W(mu) of Section 5.3 (used with
    d = 1 there; here any d, coordinates independent). mu = 1 is 'unitary'.

`context_matrix(key, ...)` is the W that `sequence(key, ...)` iterates, for the same key and
arguments. Batches come from `jax.vmap` over split keys; the size arguments (kind, d, t_max,
real) are static.

Token encodings (Sections 3, 4 and 6), for a sequence s [T, d]:
  * augmented (Section 4): e_t = (0, s_t, s_{t-1}) in C^{3d}, s_0 = 0 (`augmented`);
  * duplicated (Section 6, Fig. 7): e_t = (s_t, s_t) in C^{2d} (`duplicated`);
  * plain (Section 5): e_t = s_t, the sequence itself (no function needed).

dtypes: angles and real matrices take the default float dtype (float32, float64 under
`jax.enable_x64`); complex eigenvalues, matrices and sequences the matching complex dtype
(complex64 / complex128).

References:
  Sander, Giryes, Suzuki, Blondel, Peyre. How do Transformers Perform In-Context Autoregressive
  Learning? ICML 2024. arXiv:2402.05787.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from icl_jax.samplers.kernel_gp import haar_orthogonal

KINDS = ('unitary', 'orthogonal_commuting', 'orthogonal', 'mu')
COMMUTING_KINDS = ('unitary', 'orthogonal_commuting', 'mu')  # the diagonal kinds (Assumption 1)
_REAL_KINDS = ('orthogonal_commuting', 'orthogonal')  # kinds with a real form (real=True)


def _is_concrete_number(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check(kind, d, *, mu=1.0, t_max=None, real=False, kinds=KINDS) -> None:
  """Raises ValueError, one line naming the argument and what it allows, on bad input."""
  if kind not in kinds:
    raise ValueError(f'kind: got {kind!r}, expected one of {kinds}')
  if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
    raise ValueError(f'd: got {d!r}, expected an integer >= 1')
  if kind == 'orthogonal_commuting' and d % 2:
    raise ValueError(f"d: got {d}, expected an even integer for kind='orthogonal_commuting' "
                     '(adjacent conjugate pairs)')
  if t_max is not None and (not isinstance(t_max, (int, np.integer)) or isinstance(t_max, bool)
                            or t_max < 2):
    raise ValueError(f't_max: got {t_max!r}, expected an integer >= 2')
  # A traced mu (e.g. swept under vmap) cannot be checked here.
  if _is_concrete_number(mu) and not (math.isfinite(mu) and mu >= 1):
    raise ValueError(f'mu: got {mu!r}, expected a finite number >= 1')
  if real and kind not in _REAL_KINDS:
    raise ValueError(f'real: got True for kind={kind!r}, expected real=False or kind in '
                     f'{_REAL_KINDS}')


def _complex_dtype():
  return jnp.result_type(jnp.result_type(float), jnp.complex64)


def angles(key: jax.Array, kind: str, d: int, *, mu=1.0) -> jax.Array:
  """Eigenvalue angles phi [d] of a commuting context, lambda = e^{i phi} (Assumption 1).

  Args:
    key: PRNG key.
    kind: one of COMMUTING_KINDS.
    d: dimension (even for 'orthogonal_commuting').
    mu: the W(mu) parameter of Section 5.3, >= 1 (kind 'mu' only).

  Returns:
    [d] real: 'unitary': theta_i iid U(0, 2 pi); 'orthogonal_commuting': (th_1, -th_1, ...,
    th_delta, -th_delta); 'mu': theta_i / mu.

  Raises:
    ValueError: bad kind, d or mu.
  """
  _check(kind, d, mu=mu, kinds=COMMUTING_KINDS)
  dtype = jnp.result_type(float)
  if kind == 'orthogonal_commuting':
    th = jax.random.uniform(key, (d // 2,), dtype, 0.0, 2 * jnp.pi)
    return jnp.stack([th, -th], axis=1).reshape(d)
  theta = jax.random.uniform(key, (d,), dtype, 0.0, 2 * jnp.pi)
  return theta / mu if kind == 'mu' else theta


def eigenvalues(key: jax.Array, kind: str, d: int, *, mu=1.0) -> jax.Array:
  """Eigenvalues lambda [d] (complex, |lambda_i| = 1) of a commuting context, Assumption 1.

  W = diag(lambda) is C_U's ('unitary'), C_O's ('orthogonal_commuting': lambda_{2k} =
  conj(lambda_{2k-1})) or W(mu)'s of Section 5.3 ('mu'); see `angles`.

  Raises:
    ValueError: bad kind (the non-commuting 'orthogonal' has no fixed eigenbasis), d or mu.
  """
  return jnp.exp(1j * angles(key, kind, d, mu=mu)).astype(_complex_dtype())


def _rotation_blocks(th_K: jax.Array) -> jax.Array:
  """blockdiag(R(th_1), ..., R(th_K)) [2K, 2K], R(th) = [[cos, -sin], [sin, cos]]."""
  k = th_K.shape[0]
  c, s = jnp.cos(th_K), jnp.sin(th_K)
  r_Kx2x2 = jnp.stack([jnp.stack([c, -s], axis=1), jnp.stack([s, c], axis=1)], axis=1)
  return jnp.einsum('kl,kij->kilj', jnp.eye(k, dtype=th_K.dtype), r_Kx2x2).reshape(2 * k, 2 * k)


def context_matrix(key: jax.Array, kind: str, d: int, *, mu=1.0, real: bool = False
                   ) -> jax.Array:
  """The context matrix W [d, d] of one sequence (Section 3, Assumption 1, Section 6).

  Args:
    key: PRNG key (the same key gives the W that `sequence` iterates).
    kind: one of KINDS.
    d: dimension (even for 'orthogonal_commuting').
    mu: the W(mu) parameter of Section 5.3, >= 1 (kind 'mu' only).
    real: for 'orthogonal_commuting', the real block-diagonal rotation form (same spectrum as
      diag(lambda) from the same key). 'orthogonal' is real either way; not allowed for the
      complex-only kinds 'unitary' and 'mu'.

  Returns:
    [d, d]: diag(lambda) (complex) for the commuting kinds; real for 'orthogonal' and for
    'orthogonal_commuting' with real=True. W^H W = I in every case.

  Raises:
    ValueError: bad kind, d, mu or real.
  """
  _check(kind, d, mu=mu, real=real)
  if kind == 'orthogonal':
    return haar_orthogonal(key, d)
  if real:  # 'orthogonal_commuting'
    return _rotation_blocks(angles(key, kind, d)[::2])
  return jnp.diag(eigenvalues(key, kind, d, mu=mu))


def sequence(key: jax.Array, kind: str, d: int, t_max: int, *, mu=1.0, real: bool = False
             ) -> jax.Array:
  """One AR sequence s_1 = 1_d, s_{t+1} = W s_t (Section 3), rows s_1 .. s_{t_max + 1}.

  Row t_max + 1 is the target of the longest prefix (T = t_max in loss (3)). For diagonal W,
  s_t = lambda^{t-1} = e^{i (t-1) phi} (exact powers, no accumulated rounding); for dense W
  ('orthogonal', or real=True) a `lax.scan` of W s.

  Args:
    key: PRNG key; W = context_matrix(key, kind, d, mu=mu, real=real).
    kind: one of KINDS.
    d: dimension (even for 'orthogonal_commuting').
    t_max: longest prefix T_max, >= 2.
    mu: the W(mu) parameter of Section 5.3, >= 1 (kind 'mu' only).
    real: see `context_matrix`.

  Returns:
    s: [t_max + 1, d], complex for the diagonal kinds, real otherwise.

  Raises:
    ValueError: bad kind, d, t_max, mu or real.
  """
  _check(kind, d, mu=mu, t_max=t_max, real=real)
  if kind in COMMUTING_KINDS and not real:
    phi_D = angles(key, kind, d, mu=mu)
    k_T = jnp.arange(t_max + 1, dtype=phi_D.dtype)
    return jnp.exp(1j * (k_T[:, None] * phi_D[None, :])).astype(_complex_dtype())
  w_DxD = context_matrix(key, kind, d, mu=mu, real=real)
  s1_D = jnp.ones((d,), w_DxD.dtype)

  def step(s_D, _):
    s_next = w_DxD @ s_D
    return s_next, s_next

  _, rest_TxD = jax.lax.scan(step, s1_D, None, length=t_max)
  return jnp.concatenate([s1_D[None, :], rest_TxD], axis=0)


def sequences(key: jax.Array, kind: str, d: int, t_max: int, num: int, *, mu=1.0,
              real: bool = False) -> jax.Array:
  """num sequences [num, t_max + 1, d], each with its own W: sequence i is `sequence` of
  jax.random.split(key, num)[i] (a training or test set of Sec 6)."""
  return jax.vmap(lambda k: sequence(k, kind, d, t_max, mu=mu, real=real))(
      jax.random.split(key, num))


def augmented(s_TxD: jax.Array) -> jax.Array:
  """Augmented tokens e_t = (0, s_t, s_{t-1}) with s_0 = 0 (Section 3, Section 4, eq. (4)).

  Args:
    s_TxD: [T, d] a sequence (or prefix).

  Returns:
    [T, 3d]: columns 0:d zero, d:2d the current state, 2d:3d the previous one (zero at t = 1).
  """
  zeros_TxD = jnp.zeros_like(s_TxD)
  prev_TxD = jnp.concatenate([zeros_TxD[:1], s_TxD[:-1]], axis=0)
  return jnp.concatenate([zeros_TxD, s_TxD, prev_TxD], axis=1)


def duplicated(s_TxD: jax.Array) -> jax.Array:
  """Duplicated tokens e_t = (s_t, s_t) (Section 6, non-augmented setting, Fig. 7).

  Args:
    s_TxD: [T, d].

  Returns:
    [T, 2d].
  """
  return jnp.concatenate([s_TxD, s_TxD], axis=1)
