"""Tests of icl_jax.theory.autoregressive (Props 2, 4 and 7 of Sander et al. 2024) and of
icl_jax.estimators.ar_gd (GD on the inner loss (5)).

The truth is a slow, plain NumPy float64 implementation of the models straight from the paper:
model (4) on augmented tokens and model (6) with H diagonal heads, with the hermitian product
<a | b> = b^* a. Their loss (3) is averaged two ways:
  * exactly, over the grid of N-th roots of unity in each coordinate: the loss is a
    trigonometric polynomial in each lambda_i of degree < N, and the grid mean of lambda^k is
    1 if N | k and 0 otherwise, as E lambda^k is for k in (-N, N): exact to rounding;
  * by Monte Carlo over lambda_i = e^{i theta_i}, theta_i iid U(0, 2 pi), within z = 5 of its own
    standard error (a false failure has probability ~1e-6 per check).
Closed forms are evaluated in float64 (`jax.enable_x64`).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import estimators
from icl_jax.models import ar_attention as ar
from icl_jax.theory import autoregressive as theory

Z = 5.0
GRID_N = 16  # > every exponent difference below (2 t_max - 2 <= 10)


# Jitted once each (eager op-by-op dispatch compiles every primitive: seconds on 2 cores).
@jax.jit
def _prop4_both(a_HxD, b_HxD, p_MxM):
  """(prop4_loss_ab, the same as printed) at t_max = M."""
  return (theory.prop4_loss_ab(a_HxD, b_HxD, p_MxM),
          theory.prop4_loss_ab(a_HxD, b_HxD, p_MxM, as_printed=True))


_pe_loss = jax.jit(theory.pe_loss, static_argnums=2)
_pe_hessian = jax.jit(jax.hessian(theory.pe_loss), static_argnums=2)
_pe_total = jax.jit(theory.pe_total_loss, static_argnums=2)
_prop7_h = jax.jit(theory.prop7_hessian, static_argnums=1)


def _unit_grid(d, n=GRID_N):
  """[n^d, d] all d-tuples of n-th roots of unity."""
  roots = np.exp(2j * np.pi * np.arange(n) / n)
  return np.stack(np.meshgrid(*([roots] * d), indexing='ij'), axis=-1).reshape(-1, d)


def _mc_lambda(rng, num, d):
  return np.exp(1j * rng.uniform(0.0, 2 * np.pi, size=(num, d)))


def _powers(lam_ND, t_max):
  """s_t = lambda^{t-1}: [N, t_max + 1, d], rows s_1 .. s_{t_max+1}."""
  return lam_ND[:, None, :] ** np.arange(t_max + 1)[None, :, None]


def _herm(a, b):
  """<a | b>_C = b^* a = sum_i a_i conj(b_i), over the last axis (Appendix A)."""
  return np.sum(a * np.conj(b), axis=-1)


# ----------------------------------------------------------------------------------------------
# Proposition 2 and ar_gd.


def _model4_losses(lam_ND, t_max, a3, b1, s0):
  """Per-sequence loss (3) of model (4), (e_T + sum_t <A e_T | e_t> B e_t)_{1:d}, with A and B
  of Assumption 2 at a3, b1 (all other blocks 0), on e_t = (0, s_t, s_{t-1}).

  s0: 'zero' (the tokens of Section 3) or 'wrapped' (s_0 = W^{-1} s_1 = conj(lambda)).
  """
  n, d = lam_ND.shape
  s = _powers(lam_ND, t_max)
  s_prev0 = np.zeros((n, d), complex) if s0 == 'zero' else np.conj(lam_ND)
  a = np.zeros((3 * d, 3 * d))
  a[2 * d:, d:2 * d] = a3 * np.eye(d)
  b = np.zeros((3 * d, 3 * d))
  b[:d, d:2 * d] = b1 * np.eye(d)
  total = np.zeros(n)
  for T in range(2, t_max + 1):
    e = [np.concatenate([np.zeros((n, d)), s[:, t - 1], s[:, t - 2] if t > 1 else s_prev0],
                        axis=1) for t in range(1, T + 1)]
    a_e_T = e[T - 1] @ a.T
    out = e[T - 1].copy()
    for t in range(1, T + 1):
      out += _herm(a_e_T, e[t - 1])[:, None] * (e[t - 1] @ b.T)
    total += np.sum(np.abs(out[:, :d] - s[:, T])**2, axis=1)
  return total


@pytest.mark.parametrize('s0_zero', [True, False])
def test_prop2_loss_matches_model4_exactly(s0_zero):
  """prop2_loss(eta) = loss (3) of model (4) at a3 b1 = eta, exactly (roots-of-unity grid,
  d = 2, T_max = 5, two values of eta). The paper's counts (n_T = T) hold for s_0 = conj(lambda)
  and n_T = T - 1 for s_0 = 0: swapping s0_zero fails by > 1 (checked)."""
  d, t_max = 2, 5
  lam = _unit_grid(d)
  s0 = 'zero' if s0_zero else 'wrapped'
  for eta in (0.5, theory.prop2_a3b1(d, t_max, s0_zero=s0_zero)):
    exact = _model4_losses(lam, t_max, 1.0, eta, s0).mean()
    assert theory.prop2_loss(eta, d, t_max, s0_zero=s0_zero) == pytest.approx(exact, rel=1e-10)
  swapped = theory.prop2_loss(0.5, d, t_max, s0_zero=not s0_zero)
  assert abs(swapped - _model4_losses(lam, t_max, 1.0, 0.5, s0).mean()) > 1.0


def test_prop2_optimum_and_asymptote():
  """prop2_a3b1 minimises prop2_loss (both conventions; the as-printed formula for the paper's
  convention) and a3* b1* ~ 3 / (2 T_max): ratio within 1e-3 at T_max = 10^4, and closer than
  at T_max = 100."""
  d, t_max = 5, 50
  t = np.arange(2, t_max + 1)
  assert theory.prop2_a3b1(d, t_max) == pytest.approx(t.sum() / (t**2 + (d - 1) * t).sum())
  for s0_zero in (False, True):
    eta = theory.prop2_a3b1(d, t_max, s0_zero=s0_zero)
    f = lambda e: theory.prop2_loss(e, d, t_max, s0_zero=s0_zero)
    assert f(eta) < f(eta * 1.01) and f(eta) < f(eta * 0.99)
    ratio = lambda m: theory.prop2_a3b1(d, m, s0_zero=s0_zero) / theory.prop2_step_asymptote(m)
    assert abs(ratio(10_000) - 1) < 1e-3 and abs(ratio(10_000) - 1) < abs(ratio(100) - 1)
  assert theory.prop2_step_asymptote(50) == pytest.approx(0.03)


def _ar_gd_loop(s, steps, eta, T):
  """GD on (5) from W_0 = 0, gradient -sum_{t<T} (s_{t+1} - W s_t) s_t^H, then W_L s_T."""
  d = s.shape[1]
  w = np.zeros((d, d), complex)
  for _ in range(steps):
    grad = np.zeros((d, d), complex)
    for t in range(T - 1):
      grad -= np.outer(s[t + 1] - w @ s[t], np.conj(s[t]))
    w = w - eta * grad
  return w @ s[T - 1]


STEPS = (0, 1, 3)


@pytest.fixture(scope='module')
def gd_runs():
  """ar_gd for steps 0, 1, 3 (traced) and every prefix T = 2..7 (traced, vmapped), on a complex
  unitary and a real orthogonal sequence (NumPy-built, d = 3), and on the unitary sequence with
  its rows past T = 4 replaced by junk. One program per dtype."""
  t_max, d = 6, 3
  rng = np.random.default_rng(5)
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  w_real = q * np.sign(np.diag(r))[None, :]
  seqs = {'unitary': _powers(_mc_lambda(rng, 1, d), t_max)[0].astype(np.complex64),
          'orthogonal': np.stack([np.linalg.matrix_power(w_real, k) @ np.ones(d)
                                  for k in range(t_max + 1)]).astype(np.float32)}
  lengths = jnp.arange(2, t_max + 2)

  @jax.jit
  def run(s, junk):
    by_len = jax.vmap(lambda n, T: estimators.ar_gd(s, n, 0.05, length=T), (None, 0))
    padded = jnp.where(jnp.arange(t_max + 1)[:, None] < 4, s, junk)
    return {'steps': jax.vmap(by_len, (0, None))(jnp.asarray(STEPS), lengths),
            'padded': estimators.ar_gd(padded, 3, 0.05, length=4)}

  junk = 100.0 * rng.normal(size=(t_max + 1, d))
  return {name: (s, jax.tree.map(np.asarray, run(s, junk.astype(s.dtype))))
          for name, s in seqs.items()}


@pytest.mark.parametrize('name', ['unitary', 'orthogonal'])
def test_ar_gd_matches_slow_loop(gd_runs, name):
  """ar_gd = a plain loop of GD steps with the hermitian gradient, every prefix T (as a traced
  length), 0/1/3 steps, complex and real sequences. Fails on s_t^T instead of s_t^H, a pair
  (s_T, s_{T+1}) leaking into the fit, or predicting from s_{T-1}."""
  s, runs = gd_runs[name]
  assert runs['steps'].dtype == s.dtype
  for j, steps in enumerate(STEPS):
    for i, T in enumerate(range(2, s.shape[0] + 1)):
      want = _ar_gd_loop(s.astype(np.complex128), steps, 0.05, T)
      np.testing.assert_allclose(runs['steps'][j, i], want, atol=1e-5, err_msg=f'{steps} {T}')


def test_ar_gd_one_step_is_prop2_form_and_ignores_padding(gd_runs):
  """One step from 0 is W_1 s_T = eta sum_{t=2}^T s_t s_{t-1}^H s_T (Prop 1 with W_0 = 0, the
  form of model (4) at Prop 2's optimum); rows past T (here junk of size 100) do not matter."""
  s, runs = gd_runs['unitary']
  s = s.astype(np.complex128)
  for i, T in enumerate(range(2, s.shape[0] + 1)):
    want = 0.05 * sum(s[t - 1] * _herm(s[T - 1], s[t - 2]) for t in range(2, T + 1))
    np.testing.assert_allclose(runs['steps'][1, i], want, atol=1e-5)
  np.testing.assert_allclose(runs['padded'], runs['steps'][2, 2], atol=1e-5)  # T = 4


def test_ar_gd_one_step_loss_is_prop2_loss():
  """Loss (3) of one GD step (ar_gd) at eta = prop2_a3b1(s0_zero=True), averaged exactly over
  the roots-of-unity grid of unitary contexts (d = 2, T_max = 5), is prop2_loss(s0_zero=True):
  ties the estimator to model (4) with s_0 = 0 tokens."""
  d, t_max = 2, 5
  lam = _unit_grid(d)
  with jax.enable_x64(True):
    eta = theory.prop2_a3b1(d, t_max, s0_zero=True)
    s = jnp.asarray(_powers(lam, t_max))
    lengths = jnp.arange(2, t_max + 1)
    pred = jax.jit(jax.vmap(jax.vmap(lambda s, T: estimators.ar_gd(s, 1, eta, length=T),
                                     (None, 0)), (0, None)))(s, lengths)
    target = s[:, 2:, :]  # s_{T+1} (0-indexed row T) for T = 2..t_max
    loss = float(jnp.mean(jnp.sum(jnp.abs(pred - target)**2, axis=(1, 2))))
  assert loss == pytest.approx(theory.prop2_loss(eta, d, t_max, s0_zero=True), rel=1e-9)


# ----------------------------------------------------------------------------------------------
# Proposition 4.


def _model6_losses(lam_ND, a_HxD, b_HxD, p_MxM, t_max):
  """Per-sequence loss (3) of model (6) under Assumption 3, straight from the equation:
  sum_{T=2}^{T_max} || sum_h sum_{t=1}^T P_{T-1,t} <e_t | A^h e_{T-1}>_C B^h e_t - s_{T+1} ||^2,
  A^h = diag(a_h), B^h = diag(b_h), e_t = s_t = lambda^{t-1}."""
  s = _powers(lam_ND, t_max)
  total = np.zeros(lam_ND.shape[0])
  for T in range(2, t_max + 1):
    out = np.zeros_like(lam_ND)
    e_prev = s[:, T - 2]  # e_{T-1}
    for h in range(a_HxD.shape[0]):
      for t in range(1, T + 1):
        e_t = s[:, t - 1]
        score = _herm(e_t, a_HxD[h] * e_prev)
        out = out + p_MxM[T - 2, t - 1] * score[:, None] * (b_HxD[h] * e_t)
    total += np.sum(np.abs(out - s[:, T])**2, axis=1)
  return total


@pytest.fixture(scope='module')
def prop4_case():
  """H = 3 heads, d = 2, T_max = 5, random A, B, P (P's non-causal entries too)."""
  rng = np.random.default_rng(0)
  h, d, t_max = 3, 2, 5
  return dict(a=rng.normal(size=(h, d)), b=rng.normal(size=(h, d)),
              p=rng.normal(size=(t_max, t_max)), t_max=t_max, d=d)


def _prop4_case(case):
  """(corrected, as printed) for the fixture's A, B, P."""
  with jax.enable_x64(True):
    return tuple(map(float, _prop4_both(*(jnp.asarray(case[k]) for k in 'abp'))))


def _c_as_heads(c_DxD):
  """A, B with 3 heads and B^T A = C (B = [I; 0]), to reuse one compilation."""
  d = c_DxD.shape[0]
  pad = np.zeros((3 - d, d))
  return np.concatenate([c_DxD, pad]), np.concatenate([np.eye(d), pad])


def _printed_excess(case):
  """The printed formula's extra term: sum_T P_{T-1,T-1}^2 ||C||_F^2."""
  c = case['b'].T @ case['a']
  t_max = case['t_max']
  return sum(case['p'][T - 2, T - 2]**2 for T in range(2, t_max + 1)) * np.sum(c**2)


def test_prop4_exact_expectation(prop4_case):
  """prop4_loss = E loss (3) of eq. (6), exactly (roots-of-unity grid); the formula as printed
  exceeds it by sum_T p_{T-1}^2 ||C||_F^2 (its double count of j = k in Appendix A.6)."""
  exact = _model6_losses(_unit_grid(prop4_case['d']), prop4_case['a'], prop4_case['b'],
                         prop4_case['p'], prop4_case['t_max']).mean()
  corrected, printed = _prop4_case(prop4_case)
  assert corrected == pytest.approx(exact, rel=1e-10)
  assert printed - exact == pytest.approx(_printed_excess(prop4_case), rel=1e-10)


def test_prop4_monte_carlo(prop4_case):
  """prop4_loss within 5 SE of a Monte-Carlo estimate of loss (3) (eq. (6), 20,000 unitary
  contexts theta ~ U(0, 2 pi)); the printed formula is more than 10 SE away (so this Monte Carlo
  alone detects the discrepancy)."""
  rng = np.random.default_rng(1)
  losses = _model6_losses(_mc_lambda(rng, 20_000, prop4_case['d']), prop4_case['a'],
                          prop4_case['b'], prop4_case['p'], prop4_case['t_max'])
  mean, se = losses.mean(), losses.std(ddof=1) / math.sqrt(losses.size)
  corrected, printed = _prop4_case(prop4_case)
  assert abs(corrected - mean) < Z * se, (mean, se)
  assert abs(printed - mean) > 10 * se, (mean, se)


def test_prop4_special_cases_and_causality(prop4_case):
  """Zero loss at C = I, P_{T-1,t} = delta_{t=T} (Prop 3); 2 per prefix (printed: 3) at d = 1,
  C = 1, p = e_{T-1} (lambda^{T-2} predicted for lambda^T: E|1 - lambda^2|^2 = 2); entries of P
  past column T of row T-1, and row T_max, do not change the loss (causal mask)."""
  t_max = prop4_case['t_max']
  loss = lambda c, p: tuple(map(float, _prop4_both(*map(jnp.asarray, _c_as_heads(c)), p)))
  with jax.enable_x64(True):
    assert loss(np.eye(2), jnp.eye(t_max, k=1)) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert loss(np.ones((1, 1)), jnp.eye(t_max)) == pytest.approx((2 * (t_max - 1),
                                                                   3 * (t_max - 1)))
    p = jnp.asarray(prop4_case['p'])
    c = prop4_case['b'].T @ prop4_case['a']
    future = jnp.triu(jnp.ones((t_max, t_max)), k=2).at[t_max - 1].set(1.0)
    np.testing.assert_allclose(loss(c, p + 7.0 * future), loss(c, p), rtol=1e-12)


def _pairs_grid(d, n):
  """[n^(d/2), d] C_O's eigenvalues (mu_1, conj mu_1, mu_2, ...) over all (d/2)-tuples of n-th
  roots of unity."""
  mu = _unit_grid(d // 2, n)
  return np.stack([mu, np.conj(mu)], axis=-1).reshape(mu.shape[0], d)


def test_prop4_orthogonal_exact_expectation_and_zeros():
  """prop4_loss_orthogonal = E loss (3) of eq. (6) on C_O, exactly: the loss is a trigonometric
  polynomial in each angle of degree < 4 T_max = n, so its mean over the n-th roots of unity is
  the uniform mean. Also 0 at Lemma 3's and Prop 3's parameters and d (T_max - 1) at C = 0.
  Fails on a wrong partner index, a missing grouped term or a mis-indexed row of P."""
  rng = np.random.default_rng(2)
  h, d, t_max = 4, 4, 5
  lam = _pairs_grid(d, 4 * t_max)
  for _ in range(2):
    a, b, p = rng.normal(size=(h, d)), rng.normal(size=(h, d)), rng.normal(size=(t_max, t_max))
    exact = _model6_losses(lam, a, b, p, t_max).mean()
    assert theory.prop4_loss_orthogonal(b.T @ a, p, t_max) == pytest.approx(exact, rel=1e-10)
  for params in (ar.lemma3_params(d, t_max), ar.prop3_params(d, t_max)):
    c = np.asarray(params.b).T @ np.asarray(params.a)
    assert abs(theory.prop4_loss_orthogonal(c, np.asarray(params.p), t_max)) < 1e-12
  assert theory.prop4_loss_orthogonal(np.zeros((d, d)), p, t_max) == d * (t_max - 1)


# ----------------------------------------------------------------------------------------------
# Proposition 7.

MUS = (1.0, 1.7, 3.0, 12.5)


def test_prop7_hessian_is_half_autodiff_hessian():
  """jax.hessian(pe_loss) = 2 prop7_hessian (H is the matrix of the quadratic form of loss (7),
  with lambda^{2t-T}); and prop7_hessian is the formula as printed, mu / (4 pi (t' - t))
  sin(4 (t' - t) pi / mu), diagonal 1. Fails on a factor 2, exponent t - T, or sin(2 ...)."""
  T = 6
  t = np.arange(1, T + 1)
  k = t[None, :] - t[:, None]
  p = np.random.default_rng(2).normal(size=T)
  with jax.enable_x64(True):
    for mu in MUS:
      hess = np.asarray(_pe_hessian(jnp.asarray(p), mu, T))
      h = np.asarray(_prop7_h(mu, T))
      np.testing.assert_allclose(hess, 2 * h, atol=1e-12)
      k_safe = np.where(k == 0, 1, k)
      printed = np.where(k == 0, 1.0, mu / (4 * np.pi * k_safe) * np.sin(4 * k_safe * np.pi / mu))
      np.testing.assert_allclose(h, printed, atol=1e-12)


def test_pe_loss_monte_carlo():
  """pe_loss = E_theta |sum_t p_t lambda^{2t-T} - lambda^T|^2, lambda = e^{i theta / mu},
  within 5 SE of 100,000 draws (random p, T = 5, several mu); zero at p = e_T; and it equals
  (p - e_T)^T H (p - e_T). Fails on E lambda^k taken over theta / mu ~ U(0, 2 pi) (no 1/mu) or
  on a dropped imaginary part of the mean power."""
  T = 5
  rng = np.random.default_rng(3)
  t = np.arange(1, T + 1)
  for mu in MUS:
    p = rng.normal(size=T) * 0.5
    lam = np.exp(1j * rng.uniform(0, 2 * np.pi, size=100_000) / mu)
    vals = np.abs((lam[:, None] ** (2 * t - T)[None, :]) @ p - lam**T)**2
    mean, se = vals.mean(), vals.std(ddof=1) / math.sqrt(vals.size)
    with jax.enable_x64(True):
      got = float(_pe_loss(jnp.asarray(p), mu, T))
      h = np.asarray(_prop7_h(mu, T))
      e_T = np.eye(T)[T - 1]
      assert float(_pe_loss(jnp.asarray(e_T), mu, T)) == pytest.approx(0.0, abs=1e-12)
      # A longer row: entries past T are not used.
      assert float(_pe_loss(jnp.asarray(np.r_[p, 9.0]), mu, T)) == pytest.approx(got)
    assert abs(got - mean) < Z * se, (mu, got, mean, se)
    assert got == pytest.approx((p - e_T) @ h @ (p - e_T), rel=1e-10)


def test_pe_total_loss():
  """pe_total_loss sums pe_loss over prefixes T = 2..T_max with row T-1 of P (0-indexed T - 2);
  zero at P_{T-1,t} = delta_{t=T}, the optimum of Section 5.3."""
  t_max = 6
  p = np.random.default_rng(4).normal(size=(t_max, t_max))
  with jax.enable_x64(True):
    total = float(_pe_total(jnp.asarray(p), 3.0, t_max))
    assert float(_pe_total(jnp.eye(t_max, k=1), 3.0, t_max)) == pytest.approx(0, abs=1e-12)
    h = np.asarray(_prop7_h(3.0, t_max))
    first = float(_pe_loss(jnp.asarray(p[t_max - 2]), 3.0, t_max))
  # l_T(p) = (p - e_T)^T H (p - e_T) over p_1 .. p_T; H_{t,t'} depends on t - t' only, so the
  # size-T Hessian is the leading block of the size-t_max one.
  per_t = [(p[T - 2, :T] - np.eye(T)[T - 1]) @ h[:T, :T] @ (p[T - 2, :T] - np.eye(T)[T - 1])
           for T in range(2, t_max + 1)]
  assert per_t[-1] == pytest.approx(first, rel=1e-12)
  assert total == pytest.approx(sum(per_t), rel=1e-12)


def test_prop7_spectrum_limits():
  """Eigenvalues descending, summing to T (unit diagonal), all 1 at mu = 1 (H = I); as mu grows
  sigma_1 / T increases to 1 (> 0.999 at mu = 1000) and sigma_2 decreases to 0 (Prop 7), so the
  condition number explodes. Matches NumPy's eigvalsh of prop7_hessian."""
  T = 8
  np.testing.assert_allclose(theory.prop7_spectrum(1.0, T), np.ones(T), atol=1e-12)
  sig = {mu: theory.prop7_spectrum(mu, T) for mu in (10.0, 100.0, 1000.0)}
  for s in sig.values():
    assert np.all(np.diff(s) <= 1e-12) and s.sum() == pytest.approx(T)
  ratios = [sig[mu][0] / T for mu in (10.0, 100.0, 1000.0)]
  assert ratios[0] < ratios[1] < ratios[2] and ratios[2] > 0.999
  assert sig[10.0][1] > sig[100.0][1] > sig[1000.0][1] and sig[1000.0][1] < 1e-2
  assert theory.prop7_condition_number(100.0, T) > 1e6 * theory.prop7_condition_number(2.5, T)
  with jax.enable_x64(True):
    h = np.asarray(_prop7_h(7.0, T))
  np.testing.assert_allclose(theory.prop7_spectrum(7.0, T), np.linalg.eigvalsh(h)[::-1],
                             atol=1e-10)


@pytest.mark.parametrize('arg,call', [
    ('length', lambda: estimators.ar_gd(np.ones((4, 2), np.float32), 1, 0.1, length=5)),
    ('length', lambda: estimators.ar_gd(np.ones((4, 2), np.float32), 1, 0.1, length=1)),
    ('T', lambda: theory.pe_loss(np.ones(3), 2.0, 4)),
    ('p_MxM', lambda: theory.prop4_loss(np.eye(2), np.eye(3), 4)),
])
def test_bad_sizes_one_line(arg, call):
  """A prefix longer than the sequence (or P smaller than T_max) raises one ValueError line
  naming the argument, instead of silently clamping the row lookup."""
  with pytest.raises(ValueError) as err:
    call()
  msg = str(err.value)
  assert '\n' not in msg and msg.startswith(f'{arg}:'), msg
