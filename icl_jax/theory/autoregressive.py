"""Closed forms of Sander et al. (2024) for in-context autoregressive learning.

Setting (Section 3, Assumption 1): s_1 = 1_d, s_{t+1} = W s_t, W = diag(lambda) with
|lambda_i| = 1, so s_t = lambda^{t-1}; loss (3) sums over prefixes T = 2..T_max the error of the
prediction of s_{T+1} from e_{1:T}. The hermitian product is <a | b> = b^* a = sum_i a_i conj(b_i)
(Appendix A).

  * Prop 2 (augmented tokens, one layer (4), Assumption 2, C_U): the optimal a3 b1 and the loss
    (9) along the one-step-GD line c_{-1,0} = eta (`prop2_a3b1`, `prop2_loss`).
  * Prop 4 (plain tokens, model (6), Assumption 3, C_U): loss (3) as a quadratic form in
    C = B^T A and P (`prop4_loss`). The printed formula double counts one term; see there. The
    same for C_O's conjugate pairs, Prop 6's setting (`prop4_loss_orthogonal`).
  * Prop 7 (positional-encoding-only attention, d = 1, lambda = e^{i theta / mu}): loss (7) in
    closed form (`pe_loss`), its Hessian (`prop7_hessian`) and spectrum (`prop7_spectrum`).

Indexing: T and t are 1-indexed as in the paper; the positional encoding P is a [T_max, T_max]
array whose 0-indexed row T - 2 is the paper's row P_{T-1} (used by the prefix of length T) and
whose 0-indexed column t - 1 is the paper's column t. Only P[T-2, :T] (p_1 .. p_T) is used: the
attention is causal.

Depends on jax.numpy and numpy only. Functions returning Python floats or NumPy arrays
(`prop2_*`, `prop4_loss_orthogonal`, `prop7_spectrum`) are plain NumPy float64, not traceable;
the rest are jnp and can be jitted and differentiated (sizes static).

References:
  Sander, Giryes, Suzuki, Blondel, Peyre. How do Transformers Perform In-Context Autoregressive
  Learning? ICML 2024. arXiv:2402.05787.
"""

import jax
import jax.numpy as jnp
import numpy as np


# ----------------------------------------------------------------------------------------------
# Proposition 2: augmented tokens, one step of gradient descent.


def _prop2_counts(d: int, t_max: int, s0_zero: bool) -> tuple[np.ndarray, np.ndarray]:
  """(n_T, K_T) for T = 2..t_max: n_T terms in the attention sum, K_T = n_T^2 + (d - 1) n_T."""
  t = np.arange(2, t_max + 1, dtype=np.float64)
  n = t - 1.0 if s0_zero else t
  return n, n * n + (d - 1) * n


def prop2_a3b1(d: int, t_max: int, *, s0_zero: bool = False) -> float:
  """The optimal product a3* b1* of Prop 2 (= c_{-1,0} of Prop 8, end of Appendix A.3).

  As printed: a3* b1* = sum_{T=2}^{T_max} T / sum_{T=2}^{T_max} (T^2 + (d - 1) T).

  Deviation. The proof (Lemma 4) writes the t = 1 term of the sum in (4) as if s_0 = lambda^{-1}
  = W^{-1} s_1 (T terms per prefix), while the tokens of Section 3 have e_1 = (0, s_1, s_0)
  with s_0 = 0, whose t = 1 term vanishes (T - 1 terms, the T - 1 pairs of the inner loss (5)).
  s0_zero=True gives the optimum for s_0 = 0 (`augmented` tokens, one GD step `ar_gd`):
  sum (T - 1) / sum ((T - 1)^2 + (d - 1)(T - 1)). Both are ~ 3 / (2 T_max) as T_max -> infinity
  (`tests/ar_theory_test.py` checks both against Monte Carlo of loss (3)).

  Args:
    d: dimension of s.
    t_max: T_max >= 2.
    s0_zero: False: the paper's formula (s_0 = lambda^{-1}); True: s_0 = 0.

  Returns:
    eta* (a Python float).
  """
  n, k = _prop2_counts(d, t_max, s0_zero)
  return float(n.sum() / k.sum())


def prop2_step_asymptote(t_max: int) -> float:
  """3 / (2 T_max): the asymptotic step size of Prop 2 as T_max -> infinity."""
  return 1.5 / t_max


def prop2_loss(eta: float, d: int, t_max: int, *, s0_zero: bool = False) -> float:
  """Loss (3) of model (4) with c_{-1,0} = a3 b1 = eta and every other c_{alpha,beta} = 0.

  That is, the one-step-GD predictor eta sum_t s_t s_{t-1}^* s_T of s_{T+1} (Prop 1 with
  W_0 = 0), on C_U: end of Appendix A.3, d sum_{T=2}^{T_max} (eta^2 K_T - 2 eta n_T + 1) with
  n_T = T, K_T = T^2 + (d - 1) T as printed (s_0 = lambda^{-1}, see `prop2_a3b1`) or n_T = T - 1
  for s0_zero=True.

  Args:
    eta: the step a3 b1.
    d: dimension.
    t_max: T_max >= 2.
    s0_zero: see `prop2_a3b1`.

  Returns:
    The loss (a Python float); its minimiser over eta is `prop2_a3b1(d, t_max, s0_zero=...)`.
  """
  n, k = _prop2_counts(d, t_max, s0_zero)
  return float(d * np.sum(eta * eta * k - 2.0 * eta * n + 1.0))


# ----------------------------------------------------------------------------------------------
# Proposition 4: quadratic loss of the diagonal multi-head model (6).


def prop4_loss(c_DxD: jax.Array, p_MxM: jax.Array, t_max: int | None = None, *,
               as_printed: bool = False) -> jax.Array:
  """Loss (3) of model (6) under Assumptions 1 (C_U) and 3, as a function of C = B^T A and P.

  Prop 4: l(A, B, P) = sum_{T=2}^{T_max} l_T(B^T A, P_{T-1}), p = P_{T-1} = (p_1, .., p_T),

      l_T(C, p) = ||p||^2 ||C||_F^2 + p_{T-1}^2 (S(C^T C) - ||C||_F^2) - 2 Tr(C) p_T + d,

  S the sum of all entries (S(C^T C) = ||C 1_d||^2), ||p||^2 = sum_{t <= T} p_t^2.

  Deviation from the paper. Prop 4 as printed has p_{T-1}^2 S(C^T C), without the
  - p_{T-1}^2 ||C||_F^2. In Appendix A.6 the expectation E[lambda_j^{t-T+1} lambda_i^{t-1}
  conj(lambda_k^{t'-T+1} lambda_i^{t'-1})] is delta_{t=t'} for j = k and delta_{t=t'=T-1} for
  j != k; the printed sum then adds the t = t' = T - 1 term over all (j, k) to the j = k terms
  that ||p||^2 ||C||_F^2 already holds, counting the diagonal j = k twice. Example: d = 1, C = 1,
  p = e_{T-1} predicts lambda^{T-2} for lambda^T; the loss is E|1 - lambda^2|^2 = 2, the printed
  formula gives 3. Monte Carlo of eq. (6) agrees with the corrected form
  (`tests/ar_theory_test.py`). The conjugation convention is Lemma 2's, <e_t | A e_{T-1}> =
  sum_j a_j lambda_j^{t-T+1}; the other one (conjugating e_t) cannot reach zero loss.

  Args:
    c_DxD: C = B^T A, [d, d] real (C_ij = sum_h b_h^i a_h^j).
    p_MxM: positional encoding P, [M, M] with M >= t_max (0-indexed row T - 2 is P_{T-1}).
    t_max: T_max >= 2; default M.
    as_printed: True gives the formula exactly as printed in Prop 4 (for comparison).

  Returns:
    [] the loss.
  """
  d = c_DxD.shape[0]
  m = p_MxM.shape[0]
  t_max = m if t_max is None else t_max
  if p_MxM.shape != (m, m) or not 2 <= t_max <= m:
    raise ValueError(f'p_MxM: got shape {p_MxM.shape} with t_max={t_max}, expected a square '
                     '[M, M] with 2 <= t_max <= M')
  rows_RxM = p_MxM[:t_max - 1, :t_max]  # row r <-> T = r + 2
  t_R = jnp.arange(2, t_max + 1)
  causal_RxM = jnp.arange(t_max)[None, :] < t_R[:, None]
  norm2_R = jnp.sum(jnp.where(causal_RxM, rows_RxM, 0.0)**2, axis=1)
  p_prev_R = jnp.diagonal(rows_RxM)            # P_{T-1, T-1}
  p_last_R = jnp.diagonal(rows_RxM, offset=1)  # P_{T-1, T}
  fro2 = jnp.sum(c_DxD**2)
  s_ctc = jnp.sum(jnp.sum(c_DxD, axis=1)**2)
  cross = s_ctc if as_printed else s_ctc - fro2
  per_t = norm2_R * fro2 + p_prev_R**2 * cross - 2.0 * jnp.trace(c_DxD) * p_last_R + d
  return jnp.sum(per_t)


def prop4_loss_ab(a_HxD: jax.Array, b_HxD: jax.Array, p_MxM: jax.Array,
                  t_max: int | None = None, *, as_printed: bool = False) -> jax.Array:
  """`prop4_loss` of the heads' diagonals: A[h] = a_h, B[h] = b_h (Lemma 2), C = B^T A."""
  return prop4_loss(b_HxD.T @ a_HxD, p_MxM, t_max, as_printed=as_printed)


def prop4_loss_orthogonal(c_DxD, p_MxM, t_max: int) -> float:
  """Prop 4's loss (3) of model (6) on C_O (lambda = (mu_1, conj mu_1, ...)), float64 NumPy.

  The orthogonal counterpart of `prop4_loss` (Prop 6's setting, Fig 3 right), not in the paper.

  Derived as App. A.6 does Prop 4, with i' the partner of i (i' = i xor 1, 0-based) and p =
  P_{T-1}: the monomials mu^k of the prediction's coordinate i are distinct except that every
  term with j = i' or t = T - 1 multiplies mu_i^{T-2}, so

    l_T = sum'_t p_t^2 (||C||_F^2 - sum_i C_ii'^2) - 2 p_T Tr(C) + d
          + sum_i (C_ii' sum'_t p_t + p_{T-1} (C 1)_i)^2,

  sum' over t = 1..T, t != T - 1. Zero at Lemma 3's point. Exact: tests/ar_theory_test.py checks it
  against the mean of the model's loss over a grid of angles (exact quadrature).

  Args:
    c_DxD: C = B^T A [d, d], d even.
    p_MxM: P [M, M], M >= t_max (0-based row T - 2 is P_{T-1}).
    t_max: T_max.

  Returns:
    The loss summed over T = 2..t_max (a float).
  """
  c = np.asarray(c_DxD, np.float64)
  p = np.asarray(p_MxM, np.float64)
  d = c.shape[0]
  partner = np.arange(d) ^ 1
  x = c[np.arange(d), partner]                       # C_ii'
  rows = c.sum(axis=1)                               # (C 1)_i
  fro_np = np.sum(c * c) - np.sum(x * x)
  big_t = np.arange(2, t_max + 1)
  cols = np.arange(t_max)
  used = cols[None, :] < big_t[:, None]              # t <= T
  prev = cols[None, :] == big_t[:, None] - 2         # t = T - 1
  rows_p = np.where(used, p[:t_max - 1, :t_max], 0.0)
  q = rows_p[np.arange(t_max - 1), big_t - 2]        # p_{T-1}
  last = rows_p[np.arange(t_max - 1), big_t - 1]     # p_T
  sp = np.sum(np.where(prev, 0.0, rows_p), axis=1)
  sp2 = np.sum(np.where(prev, 0.0, rows_p**2), axis=1)
  g = x[None, :] * sp[:, None] + q[:, None] * rows[None, :]
  per_t = sp2 * fro_np + np.sum(g * g, axis=1) - 2.0 * last * np.trace(c) + d
  return float(np.sum(per_t))


# ----------------------------------------------------------------------------------------------
# Proposition 7: positional-encoding-only attention, lambda = e^{i theta / mu}.


def mean_power(k, mu) -> jax.Array:
  """E[lambda^k] for lambda = e^{i theta / mu}, theta ~ U(0, 2 pi) (W(mu) of Section 5.3).

  With x = 2 pi k / mu: (e^{i x} - 1) / (i x) = sin(x) / x + i (1 - cos x) / x, and 1 at k = 0.

  Args:
    k: integer exponent(s), any shape.
    mu: >= 1.

  Returns:
    complex, shaped like k.
  """
  x = 2.0 * jnp.pi * jnp.asarray(k, jnp.result_type(float)) / mu
  zero = x == 0
  x_safe = jnp.where(zero, 1.0, x)
  return jnp.where(zero, 1.0 + 0.0j, (jnp.sin(x_safe) + 1j * (1.0 - jnp.cos(x_safe))) / x_safe)


def pe_loss(p_T: jax.Array, mu, T: int | None = None) -> jax.Array:
  """Loss (7), l(p) = E |sum_{t=1}^T p_t lambda^{2t-T} - lambda^T|^2, lambda ~ W(mu), exactly.

  Expanding the square: sum_{t,t'} p_t p_t' E[lambda^{2(t-t')}] - 2 sum_t p_t
  Re E[lambda^{2t-2T}] + 1, each expectation from `mean_power`. Equivalently
  (p - e_T)^T H (p - e_T) with H of `prop7_hessian`, zero at p* = e_T; the autodiff Hessian is
  2 H. lambda^{2t-T} is Lemma 2's lambda^{t-T+1} lambda^{t-1} for d = 1, C = 1.

  Args:
    p_T: [>= T] the positional-encoding row P_{T-1} (real); entries past T are ignored (causal).
    mu: >= 1.
    T: the prefix length; default len(p_T).

  Returns:
    [] the loss.

  Raises:
    ValueError: T outside [1, len(p_T)].
  """
  T = p_T.shape[0] if T is None else T
  if not 1 <= T <= p_T.shape[0]:
    raise ValueError(f'T: got {T}, expected 1 <= T <= len(p_T) = {p_T.shape[0]}')
  p = p_T[:T]
  t = jnp.arange(1, T + 1)
  quad = p @ mean_power(2 * (t[:, None] - t[None, :]), mu) @ p
  lin = p @ jnp.real(mean_power(2 * (t - T), mu))
  return jnp.real(quad) - 2.0 * lin + 1.0


def pe_total_loss(p_MxM: jax.Array, mu, t_max: int | None = None) -> jax.Array:
  """sum_{T=2}^{T_max} pe_loss(P_{T-1}, mu, T): loss (3) of the PE-only model, C = I, d = 1.

  All prefixes in one masked computation (no loop over T).

  Args:
    p_MxM: [M, M], M >= t_max; 0-indexed row T - 2 is P_{T-1}, of which p_1 .. p_T are used.
    mu: >= 1.
    t_max: default M.

  Returns:
    [] the loss.
  """
  t_max = p_MxM.shape[0] if t_max is None else t_max
  t_M = jnp.arange(1, t_max + 1)
  big_t_R = jnp.arange(2, t_max + 1)
  rows_RxM = jnp.where(t_M[None, :] <= big_t_R[:, None], p_MxM[:t_max - 1, :t_max], 0.0)
  h_MxM = jnp.real(mean_power(2 * (t_M[:, None] - t_M[None, :]), mu))
  quad_R = jnp.sum((rows_RxM @ h_MxM) * rows_RxM, axis=1)
  lin_R = jnp.sum(rows_RxM * jnp.real(mean_power(2 * (t_M[None, :] - big_t_R[:, None]), mu)),
                  axis=1)
  return jnp.sum(quad_R - 2.0 * lin_R + 1.0)


def prop7_hessian(mu, T: int) -> jax.Array:
  """H of Prop 7: H_{t,t'} = mu / (4 pi (t' - t)) sin(4 (t' - t) pi / mu), H_{t,t} = 1.

  H is the matrix of the quadratic form of loss (7), p^T H p = Re sum_{t,t'} p_t p_t'
  E[lambda^{2(t-t')}] (Appendix A.10), so the autodiff Hessian of `pe_loss` is 2 H (the
  proposition calls H itself "the Hessian"). H_{t,t'} = sinc(4 (t' - t) / mu) with the
  normalised sinc(x) = sin(pi x) / (pi x), which is how it is computed. H = I for
  mu in {1, 4/3, 2, 4}; H -> 1 1^T as mu -> infinity.

  Args:
    mu: >= 1.
    T: size.

  Returns:
    [T, T] symmetric, default float dtype.
  """
  t = jnp.arange(T, dtype=jnp.result_type(float))
  return jnp.sinc(4.0 * (t[None, :] - t[:, None]) / mu)


def prop7_spectrum(mu: float, T: int) -> np.ndarray:
  """Eigenvalues sigma_1 >= .. >= sigma_T of Prop 7's H, NumPy float64 (not traceable).

  Prop 7: sigma_1 -> T and sigma_{t>1} -> 0 as mu -> infinity (trace T throughout). The small
  eigenvalues fall below float32 rounding for large mu, hence float64 NumPy (not jnp / the
  LAPACK wrappers of `icl_jax.linalg`, which are for jitted library code).

  Returns:
    [T] descending.
  """
  t = np.arange(T, dtype=np.float64)
  h = np.sinc(4.0 * (t[None, :] - t[:, None]) / float(mu))
  return np.linalg.eigvalsh(h)[::-1].copy()


def prop7_condition_number(mu: float, T: int) -> float:
  """sigma_1 / sigma_T of Prop 7's H (inf when sigma_T <= 0 in float64)."""
  sig = prop7_spectrum(mu, T)
  return float(sig[0] / sig[-1]) if sig[-1] > 0 else float('inf')
