"""Positional-encoding-only attention of Sander et al. (2024): Prop 7's ill-conditioning and the
smooth, diagonal-invariant P that gradient descent finds (Sec. 5.3, App. A.10, Sec. 6, Fig 6).

  python -m experiments.autoregressive.positional_encoding \
      --config=experiments/autoregressive/configs/positional_encoding.py:quick \
      --workdir=/tmp/ar_positional_encoding

Setting (Sec. 5.3): the model (6) with B^T A = I fixed (`ar_attention.PEOnlyParams`), d = 1,
s_{t+1} = lambda s_t with lambda = e^{i theta / mu}, theta ~ U(0, 2 pi) (W(mu)). The prefix of
length T predicts s_{T+1} = lambda^T by sum_t P_{T-1,t} lambda^{2t-T}: loss (7) for the row
p = P_{T-1, 1:T}, whose minimiser is p* = e_T.

Part 1, Prop 7 (float64). For each mu: jax.hessian, in p = P_{T-1, 1:T} (T = config.t), of the
model's prefix-T loss term (`ar_attention.loss_terms`) averaged over a Gauss-Legendre rule in
theta that is exact to rounding for these integrands (the expectation of loss (7), no Monte
Carlo). It must equal 2H, H_{t,t'} = mu / (4 pi (t' - t)) sin(4 (t' - t) pi / mu) the matrix of
the quadratic form (`theory.prop7_hessian`). arrays.npz `hessian` [len(mus), T, T] is the
model's autodiff Hessian / 2, i.e. H as Prop 7 defines it. Its spectrum: sigma_1 / T -> 1 and
sigma_{t>1} -> 0 as mu grows (checked at the largest mu with the finite-mu bound of the config,
and as a trend over mus).

Part 2, Sec. 6 "Change in the context distribution" / Fig 6 (float32). Per mu (and a small
reference mu), 10^4 sequences, P = 0, plain GD (optax.sgd through `training.fit`) on the
empirical loss (3) of the PE-only model divided by T_max - 1 (loss (7) averaged over T = 2..T_max),
each mu stopped at the first step where its loss is below 1e-3: all mus train as one program, and
a mu whose loss is below the threshold gets no gradient from then on (exactly the per-run early
stop of the paper); `fit` stops when every gradient is zero. Checked: the stop was reached; the
exact population loss (7) of the trained P is small; the trained P is invariant across diagonals
(a Toeplitz score: the fraction of the variance of the used entries P_{T-1,t}, t < T, explained
by per-diagonal means, P_{T-1,T} masked as in Fig 6); its rows are smooth (mean squared second
difference / variance), while the reference mu's are not. The cosine positional encoding's
p p^T (Vaswani et al. 2017) is shown beside (exactly Toeplitz).

Measured (quick, seeds 0 / 1 / 2; 2-core CPU shared with other jobs at load 6-10; CPU = user +
sys from /usr/bin/time -v): 23/23 claims hold on each seed.
  Prop 7: max |autodiff / 2 - H| 6.5e-16 (tol 1e-12); sigma_1 / T = 0.414, 0.716, 0.910, 0.958
  and sigma_2 / T = 0.367, 0.261, 0.089, 0.042 at mu = 50, 100, 200, 300 (the Hessian part has
  no randomness).
  Training (the same on every seed to the digits shown): GD stops at steps 1000, 860, 740, 540
  (reference mu = 5: 260) at losses 0.994-1.000e-3; population loss (7) of the trained P
  0.96-1.02e-3 (tol 2e-3); Toeplitz score 0.916, 0.891, 0.859, 0.843 (>= 0.75; per-column
  means explain only 0.12, 0.16, 0.21, 0.24; the reference 0.94, the cosine p p^T 1.0); row
  roughness 0.022, 2.2e-3, 1.5e-4, 6e-6 (<= 0.1), the reference mu = 5: 15 (white noise: 6).
  Not reproduced: Sec. 6 says the masked P_{T-1,T} are "close to 1 after training"; here their
  mean is 0.50, 0.36, 0.26, 0.21 at mu = 50..300 (0.97 at mu = 5). A NumPy replica of GD on the
  exact loss gives the same, and stopping 30x later (loss < 3.4e-5, ~2e4 steps) only moves them
  to 0.67 (mu = 50) and 0.35 (mu = 300): early-stopped GD stays far from the optimum
  p* = e_T, as the discussion after Prop 7 expects of an ill-conditioned H.
  Cost: quick 58-65 s CPU (117-136 s wall under load; ~9 GD steps/s for 5 x 10^4 sequences,
  1000 steps), peak RSS 0.50 GB; smoke 6.2 s CPU warm (9.4 s with a cold compilation cache),
  0.42 GB. The paper preset is quick's settings (the paper's own) with a larger step cap.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from absl import logging

from experiments import common, registry
from icl_jax import distributed, results, training
from icl_jax.models import ar_attention as ar
from icl_jax.samplers import autoregressive as ar_sampler
from icl_jax.theory import autoregressive as theory

matplotlib.use('Agg', force=False)
import matplotlib.pyplot as plt  # noqa: E402

EXPERIMENT = 'autoregressive/positional_encoding'
PAPER = registry.PAPERS['autoregressive']


def _number(config, field: str, low: float, *, high: float = math.inf,
            low_open: bool = False, high_open: bool = False) -> float:
  value = common._get(config, field)
  lo_ok = (lambda v: v > low) if low_open else (lambda v: v >= low)
  hi_ok = (lambda v: v < high) if high_open else (lambda v: v <= high)
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
      or not lo_ok(value) or not hi_ok(value)):
    span = f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
    raise common.ConfigError(f'config.{field}={value!r}: must be a number in {span}')
  return float(value)


def validate(config) -> None:
  t = config.t
  if isinstance(t, bool) or not isinstance(t, int) or t < 3:
    raise common.ConfigError(f'config.t={t!r}: must be an integer >= 3 (the sequence length '
                             'T_max)')
  mus = config.mus
  if (not isinstance(mus, (tuple, list)) or len(mus) < 2
      or any(isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m)
             or m < 1 for m in mus)
      or any(b <= a for a, b in zip(mus[:-1], mus[1:]))):
    raise common.ConfigError(f'config.mus={mus!r}: must be a tuple of at least 2 increasing '
                             'numbers >= 1 (mu of W(mu))')
  _number(config, 'reference_mu', 1.0)
  for field in ('num_sequences', 'quad_nodes', 'train.max_steps', 'train.log_every',
                'train.ckpt_every', 'cosine.dim'):
    common.positive_int(config, field)
  common.multiple_of_devices(config, 'num_sequences')   # split over every device
  # GD on the T-averaged loss is stable for lr < 2 / lambda_max, lambda_max <= 2 T / (T - 1).
  _number(config, 'train.lr', 0.0, high=(t - 1) / t, low_open=True, high_open=True)
  if config.train.max_steps % config.train.log_every:
    common.multiple_of(config, 'train.max_steps', 'train.log_every')
  if config.train.ckpt_every % config.train.log_every:
    common.multiple_of(config, 'train.ckpt_every', 'train.log_every')
  if config.cosine.dim % 2:
    raise common.ConfigError(f'config.cosine.dim={config.cosine.dim}: must be even (sin and '
                             'cos pairs)')
  for field in ('train.loss_threshold', 'cosine.base', 'claims.hessian_tol',
                'claims.sigma1_tol', 'claims.sigma_rest_tol', 'claims.population_loss_tol',
                'claims.roughness_max'):
    common.positive_float(config, field)
  _number(config, 'claims.toeplitz_min', 0.0, high=1.0, low_open=True)
  row = config.claims.min_row_len
  if isinstance(row, bool) or not isinstance(row, int) or not 3 <= row <= t - 1:
    raise common.ConfigError(f'config.claims.min_row_len={row!r}: must be an integer in '
                             f'[3, t - 1 = {t - 1}] (entries of a used row, P_{{T-1,T}} masked)')


# --- part 1: Prop 7 (float64) -----------------------------------------------------------------

def quadrature(nodes: int) -> tuple[np.ndarray, np.ndarray]:
  """Gauss-Legendre nodes theta in [0, 2 pi] and weights summing to 1: E over theta ~ U(0, 2 pi)."""
  x, w = np.polynomial.legendre.leggauss(nodes)
  return np.pi * (x + 1.0), w / 2.0


def quad_nodes(config) -> int:
  """Enough nodes for e^{i k theta / mu}, |k| <= 2 (T - 1), at the smallest mu (see config)."""
  return config.quad_nodes + math.ceil(4 * (config.t - 1) / min(config.mus))


def model_hessians(config) -> np.ndarray:
  """[M, T, T] float64: per mu, jax.hessian in p = P_{T-1, 1:T} of the model's prefix-T loss
  term (loss (7) through `ar_attention.loss_terms` of the PE-only model) averaged over theta by
  the quadrature. Equals 2 H of Prop 7."""
  t = config.t
  with jax.enable_x64():
    theta_Q, w_Q = (jnp.asarray(a, jnp.float64) for a in quadrature(quad_nodes(config)))
    k_K = jnp.arange(t + 1, dtype=jnp.float64)

    def prefix_loss(p_T, mu):
      p_TxT = jnp.zeros((t, t), jnp.float64).at[t - 2].set(p_T)   # the paper's row P_{T-1}
      s_QxKx1 = jnp.exp(1j * k_K[None, :, None] * theta_Q[:, None, None] / mu)
      terms_QxR = jax.vmap(lambda s: ar.loss_terms(ar.PEOnlyParams(p=p_TxT), s))(s_QxKx1)
      return jnp.sum(w_Q * terms_QxR[:, -1])                      # the prefix T = t

    hess = jax.jit(jax.vmap(jax.hessian(prefix_loss), in_axes=(None, 0)))
    return np.asarray(hess(jnp.zeros((t,), jnp.float64),
                           jnp.asarray(config.mus, jnp.float64)))


def closed_forms(config) -> dict:
  t = config.t
  with jax.enable_x64():
    h = np.stack([np.asarray(theory.prop7_hessian(float(mu), t)) for mu in config.mus])
    h_ref = np.asarray(theory.prop7_hessian(float(config.reference_mu), t))
  return {'hessian': h, 'hessian_reference': h_ref,
          'spectrum': np.stack([theory.prop7_spectrum(float(mu), t) for mu in config.mus])}


# --- part 2: training P (Sec. 6, Fig 6) -----------------------------------------------------------

def all_mus(config) -> np.ndarray:
  """The trained mus: config.mus, then the reference mu (last)."""
  return np.asarray(tuple(config.mus) + (config.reference_mu,), np.float64)


def make_dataset(key: jax.Array, config):
  """key -> s [M + 1, N, T + 1, 1]: the same N angles theta for every mu (common random numbers;
  `sequence` with kind 'mu' divides them by mu)."""
  keys = jax.random.split(key, config.num_sequences)
  mus = jnp.asarray(all_mus(config), jnp.float32)
  one = lambda k, mu: ar_sampler.sequence(k, 'mu', 1, config.t, mu=mu)
  return jax.vmap(lambda mu: jax.vmap(lambda k: one(k, mu))(keys))(mus)


def model_losses(p_MxTxT: jax.Array, s_MxNxKx1: jax.Array) -> jax.Array:
  """[M] loss (3) of each mu's PE-only model on its data, / (T_max - 1): loss (7) averaged over
  T = 2..T_max."""
  t = p_MxTxT.shape[-1]
  return jax.vmap(lambda p, s: ar.mean_loss(ar.PEOnlyParams(p=p), s))(p_MxTxT, s_MxNxKx1) / (t - 1)


def train(config, workdir, key: jax.Array, mesh: Optional[jax.sharding.Mesh] = None) -> dict:
  """GD from P = 0 for every mu at once, each stopped at its first step below the threshold; the
  sequences split over `mesh` (`distributed.shard_batch` on their axis 1, [M, N, ...])."""
  tr, t = config.train, config.t
  thr = float(tr.loss_threshold)
  k_data, k_fit = jax.random.split(key)
  sample = lambda _: make_dataset(k_data, config)   # a fixed dataset (the key of fit unused)

  def loss_fn(p_MxTxT, s):
    loss_M = model_losses(p_MxTxT, distributed.shard_batch(s, mesh, axis=1))
    # Early stopping per mu: a mu whose loss is below the threshold gets no gradient (its P
    # stays where it first went below); the value is still the sum of all the losses.
    active_M = jax.lax.stop_gradient(loss_M >= thr)
    return jnp.sum(jnp.where(active_M, loss_M, jax.lax.stop_gradient(loss_M)))

  m = len(all_mus(config))
  logging.info('training P (T_max = %d) for mu = %s and reference mu = %g: %d sequences each, '
               'GD lr %g, stop at loss < %g', t, tuple(config.mus), config.reference_mu,
               config.num_sequences, tr.lr, thr)
  p_final, hist = training.fit(
      loss_fn, jnp.zeros((m, t, t), jnp.float32), optax.sgd(tr.lr), key=k_fit,
      max_steps=tr.max_steps, log_every=tr.log_every, ckpt_every=tr.ckpt_every, workdir=workdir,
      grad_tol=0.0, sample_fn=sample, resample_every=tr.log_every, mesh=mesh)
  data = sample(None)
  traj_points = jnp.asarray(hist.trajectory)
  curve = jax.jit(lambda traj, s: jax.lax.map(lambda p: model_losses(p, s), traj))(traj_points,
                                                                                  data)
  curve = np.asarray(curve, np.float64)                      # [points, M]
  below = curve < thr
  steps = np.where(below.any(0), hist.trajectory_steps[np.argmax(below, 0)], np.nan)
  return {'p_trained': np.asarray(p_final, np.float64),
          'train_loss': np.asarray(jax.jit(model_losses)(p_final, data), np.float64),
          'loss_curve': curve, 'curve_steps': np.asarray(hist.trajectory_steps, np.float64),
          'stop_step': steps.astype(np.float64), 'steps_run': np.float64(len(hist.loss))}


def cosine_encoding(t: int, dim: int, base: float) -> np.ndarray:
  """p [T, dim]: p_{t, 2i} = sin(t / base^{2i/dim}), p_{t, 2i+1} = cos(...), t = 1..T
  (Vaswani et al. 2017, Sec. 3.5)."""
  pos = np.arange(1, t + 1, dtype=np.float64)[:, None]
  freq = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)[None, :]
  p = np.empty((t, dim))
  p[:, 0::2], p[:, 1::2] = np.sin(pos * freq), np.cos(pos * freq)
  return p


def measure(config, workdir):
  key = common.jax_key(config)
  logging.info('part 1 (Prop 7, float64): Hessian of loss (7) at T = %d for mu = %s, %d '
               'quadrature nodes', config.t, tuple(config.mus), quad_nodes(config))
  measured = {'hessian_autodiff': model_hessians(config)}
  th = closed_forms(config)
  measured.update(train(config, workdir, jax.random.fold_in(key, 2), distributed.data_mesh()))
  p = cosine_encoding(config.t, config.cosine.dim, config.cosine.base)
  th['cosine_ppt'] = p @ p.T
  return results.Evidence(measured=measured, theory=th), None


# --- claims ---------------------------------------------------------------------------------------

def used_mask(t: int) -> np.ndarray:
  """[T, T] bool: the entries of P the model reads, P_{T-1,T} masked (Fig 6): 0-based P[r, c]
  with c <= r (row r is the paper's P_{r+1}, read by the prefix r + 2; the last row never)."""
  r, c = np.indices((t, t))
  return (c <= r) & (r <= t - 2)


def explained_by_groups(p_TxT: np.ndarray, labels_TxT: np.ndarray) -> float:
  """1 - (within-group sum of squares) / (total sum of squares) over the used entries."""
  mask = used_mask(p_TxT.shape[0])
  x, g = p_TxT[mask], labels_TxT[mask]
  sums = np.bincount(g, weights=x)
  means = sums / np.maximum(np.bincount(g), 1)
  total = np.sum((x - x.mean()) ** 2)
  return float(1.0 - np.sum((x - means[g]) ** 2) / total) if total > 0 else float('nan')


def toeplitz_score(p_TxT: np.ndarray) -> float:
  """Fraction of the variance of the used entries explained by per-diagonal (t - T) means."""
  r, c = np.indices(p_TxT.shape)
  return explained_by_groups(p_TxT, r - c)


def column_score(p_TxT: np.ndarray) -> float:
  """The same with per-column (absolute position t) means: the alternative structure."""
  _, c = np.indices(p_TxT.shape)
  return explained_by_groups(p_TxT, c)


def roughness(p_TxT: np.ndarray, min_len: int) -> float:
  """Mean over used rows with >= min_len entries of mean((second difference)^2) / variance."""
  t = p_TxT.shape[0]
  out = []
  for r in range(min_len - 1, t - 1):       # row r has r + 1 used entries (c <= r)
    row = p_TxT[r, :r + 1]
    var = np.var(row)
    out.append(np.mean(np.diff(row, 2) ** 2) / var if var > 0 else np.inf)
  return float(np.mean(out))


def population_loss(p_TxT: np.ndarray, h_TxT: np.ndarray) -> float:
  """Loss (7) averaged over T = 2..T_max, exactly: mean_T (p - e_T)^T H_T (p - e_T), H_T the
  leading T x T block of Prop 7's H (its linear term Re E[lambda^{2(t-T)}] is H_{t,T})."""
  t = p_TxT.shape[0]
  total = 0.0
  for big_t in range(2, t + 1):
    e = np.array(p_TxT[big_t - 2, :big_t], np.float64)
    e[big_t - 1] -= 1.0
    total += e @ h_TxT[:big_t, :big_t] @ e
  return total / (t - 1)


def spectra(hessian_MxTxT: np.ndarray) -> np.ndarray:
  """[M, T] descending eigenvalues of H = autodiff / 2 (float64)."""
  h = 0.5 * np.asarray(hessian_MxTxT, np.float64)
  return np.linalg.eigvalsh(0.5 * (h + np.swapaxes(h, 1, 2)))[:, ::-1]


def check(config, ev):
  cl, mv, th = config.claims, ev.measured, ev.theory
  t, mus = config.t, tuple(config.mus)
  claims, met = [], {}
  mu_txt = ', '.join(f'{m:g}' for m in mus)

  # Prop 7: the Hessian.
  h_model = 0.5 * np.asarray(mv['hessian_autodiff'], np.float64)
  h_form = np.asarray(th['hessian'], np.float64)
  diff = float(np.max(np.abs(h_model - h_form)))
  met['hessian_max_abs_diff'] = diff
  claims.append(results.Claim(
      f'Prop 7: the Hessian of loss (7) (autodiff through the PE-only model, averaged over an '
      f'exact quadrature in theta, float64) equals 2H, H_tt\' = mu/(4 pi (t\'-t)) '
      f'sin(4 (t\'-t) pi/mu), T = {t}, mu in {{{mu_txt}}}: max |autodiff/2 - H|', diff, 0.0,
      cl.hessian_tol, 'at_most'))

  # Prop 7: the spectrum, from the model's Hessian.
  sig = spectra(mv['hessian_autodiff']) / t                     # [M, T], sigma_i / T
  form = np.asarray(th['spectrum'], np.float64) / t
  for i, mu in enumerate(mus):
    met[f'sigma1_over_T_mu{mu:g}'] = float(sig[i, 0])
    met[f'sigma2_over_T_mu{mu:g}'] = float(sig[i, 1])
    met[f'sigma1_over_T_closed_form_mu{mu:g}'] = float(form[i, 0])
    # Eigenvalues above 1e-12 sigma_1 (the rest are float64 rounding; the condition number
    # itself is past float64: sigma_T <= 0 there).
    met[f'num_sigma_above_1e-12_sigma1_mu{mu:g}'] = float(np.sum(form[i] > 1e-12 * form[i, 0]))
  tol1 = float(cl.sigma1_tol)
  # sigma_1 <= trace H = T: the interval [1 - tol, 1] as expected +- half its width.
  claims.append(results.Claim(
      f'Prop 7: sigma_1 / T -> 1 as mu grows: at the largest mu = {mus[-1]:g}, sigma_1 / T of '
      f'the model\'s Hessian / 2 lies in [1 - {tol1:g}, 1] (finite-mu bound, see config)',
      sig[-1, 0], 1.0 - tol1 / 2, tol1 / 2))
  claims.append(results.Claim(
      f'Prop 7: sigma_{{t>1}} -> 0 as mu grows: at the largest mu = {mus[-1]:g}, '
      f'sigma_2 / T of the model\'s Hessian / 2', sig[-1, 1], 0.0, cl.sigma_rest_tol,
      'at_most'))
  rises = np.minimum(np.diff(sig[:, 0]), -np.diff(sig[:, 1]))
  met['spectrum_trend_min_step'] = float(np.min(rises))
  claims.append(results.Claim(
      f'Prop 7: sigma_1 / T increases and sigma_2 / T decreases along mu = {mu_txt}: number of '
      f'consecutive mus where either does not', float(np.sum(~(rises > 0))), 0.0, 0.0,
      'at_most'))

  # Training (Sec. 6, Fig 6).
  p_all = np.asarray(mv['p_trained'], np.float64)
  loss = np.asarray(mv['train_loss'], np.float64)
  h_all = list(h_form) + [np.asarray(th['hessian_reference'], np.float64)]
  labels = [f'mu={m:g}' for m in mus] + [f'reference mu={config.reference_mu:g}']
  thr = float(config.train.loss_threshold)
  met['steps_run'] = float(mv['steps_run'])
  for i, lab in enumerate(labels):
    key = lab.replace('reference ', 'ref_').replace('=', '')
    p = p_all[i]
    pop = population_loss(p, h_all[i])
    rough = roughness(p, cl.min_row_len)
    met[f'train_loss_{key}'] = float(loss[i])
    met[f'population_loss_{key}'] = pop
    met[f'stop_step_{key}'] = float(mv['stop_step'][i])
    met[f'toeplitz_score_{key}'] = toeplitz_score(p)
    met[f'column_score_{key}'] = column_score(p)
    met[f'roughness_{key}'] = rough
    # mean of the masked P_{T-1,T} (Sec. 6: "close to 1 after training"; see the docstring)
    met[f'mean_last_token_weight_{key}'] = float(np.mean(np.diagonal(p, 1)[:t - 1]))
    claims.append(results.Claim(
        f'[{lab}] GD from P = 0 stopped at empirical loss (7) (averaged over T = 2..{t}) below '
        f'{thr:g} before the step cap', loss[i], thr, 0.0, 'at_most'))
    claims.append(results.Claim(
        f'[{lab}] population loss (7) of the trained P (exact, closed-form H, averaged over T)',
        pop, 0.0, cl.population_loss_tol, 'at_most'))
    if i == len(mus):   # the reference: a well-conditioned context
      claims.append(results.Claim(
          f'[{lab}] a well-conditioned context gives rough rows (row roughness = mean squared '
          f'second difference / variance, at least the smoothness bound)', rough,
          cl.roughness_max, 0.0, 'at_least'))
      continue
    claims.append(results.Claim(
        f'[{lab}] Fig 6: the trained P shows invariance across diagonals (Toeplitz score: '
        f'variance of the used entries, P_{{T-1,T}} masked, explained by per-diagonal means)',
        met[f'toeplitz_score_{key}'], cl.toeplitz_min, 0.0, 'at_least'))
    claims.append(results.Claim(
        f'[{lab}] Fig 6: smooth rows (row roughness = mean squared second difference / '
        f'variance, rows of >= {cl.min_row_len} used entries)', rough, cl.roughness_max, 0.0,
        'at_most'))
  cos = np.asarray(th['cosine_ppt'], np.float64)
  met['toeplitz_score_cosine_ppt'] = toeplitz_score(cos)
  met['roughness_cosine_ppt'] = roughness(cos, cl.min_row_len)
  return claims, met


# --- figures --------------------------------------------------------------------------------------

def fig6(config, ev):
  """Fig 6: trained P per mu (P_{T-1,T} and unused entries masked) and its last used row; the
  reference mu; the cosine encoding's p p^T and its last row."""
  t, mask = config.t, used_mask(config.t)
  p_all = np.asarray(ev.measured['p_trained'], np.float64)
  mats = [(f'mu = {m:g}', np.where(mask, p_all[i], np.nan), p_all[i, t - 2, :t - 1])
          for i, m in enumerate(config.mus)]
  mats.append((f'reference mu = {config.reference_mu:g}', np.where(mask, p_all[-1], np.nan),
               p_all[-1, t - 2, :t - 1]))
  cos = np.asarray(ev.theory['cosine_ppt'], np.float64)
  mats.append(('cosine PE: p p^T', cos, cos[-1]))
  fig, axes = plt.subplots(2, len(mats), figsize=(2.6 * len(mats), 5.2),
                           gridspec_kw={'height_ratios': [1.2, 1]})
  for j, (name, m, row) in enumerate(mats):
    # Each panel on its own scale (the encodings differ in size), as Fig 6 shows them.
    axes[0, j].imshow(m, cmap='viridis')
    axes[0, j].set_title(name, fontsize=9)
    axes[0, j].set_xticks([])
    axes[0, j].set_yticks([])
    axes[1, j].plot(np.arange(1, len(row) + 1), row, color='C3' if 'cosine' in name else 'C0')
    axes[1, j].grid(alpha=0.3)
    axes[1, j].set_xlabel("t'", fontsize=8)
    axes[1, j].tick_params(labelsize=7)
  axes[1, 0].set_ylabel('last row', fontsize=8)
  fig.suptitle(f'Fig 6: P trained by GD from 0 (stopped at loss < '
               f'{config.train.loss_threshold:g}; P_{{T-1,T}} masked), T_max = {t}; right: '
               'cosine positional encoding', fontsize=9)
  fig.tight_layout()
  return fig


def prop7_figure(config, ev):
  """Left: eigenvalues sigma_i / T of the model's Hessian / 2 (markers) and of the closed form
  (lines) per mu. Right: each mu's training loss along GD, with the stopping threshold."""
  sig = spectra(ev.measured['hessian_autodiff']) / config.t
  form = np.asarray(ev.theory['spectrum'], np.float64) / config.t
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  idx = np.arange(1, config.t + 1)
  for i, mu in enumerate(config.mus):
    ax1.plot(idx, np.maximum(form[i], 1e-18), color=f'C{i}', lw=1, label=f'mu = {mu:g}')
    ax1.plot(idx, np.maximum(sig[i], 1e-18), 'o', color=f'C{i}', ms=3, mfc='none')
  ax1.set_yscale('log')
  ax1.set_ylim(1e-18, 2)
  ax1.set(xlabel='i', ylabel='sigma_i / T', title='Prop 7: spectrum of H (T = %d)' % config.t)
  ax1.grid(alpha=0.3, which='both')
  ax1.legend(fontsize=7, title='lines: closed form; o: autodiff / 2', title_fontsize=7)
  curve = np.asarray(ev.measured['loss_curve'], np.float64)
  steps = np.asarray(ev.measured['curve_steps'], np.float64)
  labels = [f'mu = {m:g}' for m in config.mus] + [f'reference mu = {config.reference_mu:g}']
  for i, lab in enumerate(labels):
    ax2.plot(steps, curve[:, i], color=f'C{i}', label=lab)
  ax2.axhline(config.train.loss_threshold, ls='--', color='gray', lw=1, label='stop')
  ax2.set_yscale('log')
  ax2.set(xlabel='GD step', ylabel='loss (7), averaged over T',
          title='training (each mu frozen once below the threshold)')
  ax2.grid(alpha=0.3, which='both')
  ax2.legend(fontsize=7)
  fig.tight_layout()
  return fig


def run(config, workdir) -> results.Run:
  evidence, _ = measure(config, workdir)
  claims, met = check(config, evidence)
  mv, th = evidence.measured, evidence.theory
  arrays = {'hessian': 0.5 * np.asarray(mv['hessian_autodiff']),
            'hessian_closed_form': th['hessian'], 'spectrum_closed_form': th['spectrum'],
            'spectrum': spectra(mv['hessian_autodiff']),
            'mus': np.asarray(config.mus, np.float64), 'trained_mus': all_mus(config),
            'p_trained': mv['p_trained'], 'used_mask': used_mask(config.t),
            'train_loss': mv['train_loss'], 'loss_curve': mv['loss_curve'],
            'curve_steps': mv['curve_steps'], 'stop_step': mv['stop_step'],
            'cosine_ppt': th['cosine_ppt']}
  figures = {'fig6_positional_encoding.png': fig6(config, evidence),
             'prop7_spectrum_training.png': prop7_figure(config, evidence)}
  return results.Run(metrics=met, claims=claims, arrays=arrays, figures=figures,
                     evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=PAPER, reproduces='Prop 7, Fig 6')
