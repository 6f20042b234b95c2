"""Theorems 4.5 and 4.6 of Cheng, Chen & Sra (2024), Figures 3, 5 and 6: trained weights reach
the predicted stationary points.

  python -m experiments.functional_gd.stationary_points \
      --config=experiments/functional_gd/configs/stationary_points.py:quick --workdir=/tmp/fgd_sp

3-layer transformers (eq. (3), V_l = [[A_l, 0], [0, r_l]], Assumption 4.4) are trained on K-GP
prompts with n = 30 (Appendix H.2, H.3) for every pair of label kernel K (eq. (11)) and attention
activation h~ (eq. (12)), once with A_l = 0 (Theorem 4.5 / E.1) and once with A_l free
(Theorem 4.6 / F.1). The theorems' stationary points have B_l = b_l Sigma^{-1/2},
C_l = c_l Sigma^{-1/2} and, with A free, A_l = a_l I. Only B_l^T C_l is identified (Remark E.2:
(Lambda^T B, Lambda^{-1} C) gives the same model), so what is measured, as in the paper's
figures, is dist(Sigma^{1/2} B_l^T C_l Sigma^{1/2}, I) and dist(A_l, I), with
dist(M, I) = min_alpha ||M - alpha I||_F / ||M||_F (Appendix H.2). With A_l = 0, dist(A_l, I)
is undefined (0 / 0) and not reported. A of the last layer is not reported either (Figs 3 and
6 plot A_0, A_1 only): it moves only the covariates after the last layer, which the read-out
TF = [Z]_{d+1, n+1} of eq. (4) never sees, so its gradient is exactly 0 and it stays at its
random initialisation.

Training objective. The in-context loss (5) is E (TF + y_query)^2. Given X, the labels are
Y ~ N(0, K_+(X)) (Definition 3.3), and TF is linear in Y: the covariate path of eq. (20),
X_{l+1} = X_l + sum_s A_l^s X_l M h~^s, never reads Y, and the label path is
Y_{l+1} = Y_l (I + sum_s r_l^s M h~^s(B_l^s X_l, C_l^s X_l)), so TF = sum_{i<=n} y_i u_i with
u = prod_l (I + sum_s r_l^s W_l^s) e_{n+1}. Hence E[(TF + y_query)^2 | X] = v^T K_+(X) v,
v = (u_1 .. u_n, 1) (`conditional_loss`), the same objective with the label noise integrated
out exactly (Rao-Blackwell). At the quick preset's budget (64 prompts per model and step where
the paper draws 30000) sampled labels left the gradient noise-dominated: dist stalled at
0.4-0.6 for K_relu, K_exp labels (see the config). train.loss = 'sampled' trains on sampled
labels through `fgd_common.train_grid` instead (Appendix H.1's recipe, the paper preset).

Other departures of the quick preset from Appendix H.1, each measured in the config: a fresh
batch every step (shared by all groups, so drawing it is cheap), Adam with beta_2 = 0.99, and
a constant step for half the run followed by a cosine decay to 1%. The activations are linear,
ReLU and softmax (Appendix H.1; Figs 5 and 6 have 3 x 3 panels); `config.activations` also
takes exp.

Claims (tolerances fixed in the config): per setting (A = 0, A free), the distances fall over
training (median final / initial distance at most claims.fall_ratio), at least
claims.min_fraction of the Sigma^{1/2} B^T C matrices end within claims.bound of a multiple of
I, and likewise the A_0, A_1 matrices with A free. The matrices that stall (the paper sees a few
near 0.2) are reported per (K, h~, layer) in the metrics.
"""

import os
import types
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import common
from experiments.functional_gd import fgd_common as fc
from icl_jax import distributed, kernels, metrics, plotting, results, training
from icl_jax.models import kernel_attention as ka
from icl_jax.samplers import kernel_gp

EXPERIMENT = 'functional_gd/stationary_points'
A_MODES = ('zero', 'free')       # A_l = 0 (Theorem 4.5) or free (Theorem 4.6)
LOSSES = ('conditional', 'sampled')


# --- the in-context loss with the labels integrated out ----------------------------------------

def attention_matrices(params: ka.Params, x_TxD: jax.Array, key_mask_T: jax.Array, *,
                       activations: Sequence[str], free_a: bool) -> jax.Array:
  """W_l^s = M h~^s(B_l^s X_l, C_l^s X_l) of eq. (3) along the covariate path, [L, H, T, T].

  X_{l+1} = X_l + sum_s A_l^s X_l W_l^s (eq. (20)); token-major as in `kernel_attention`,
  whose layer this follows operation by operation (a test checks TF against `ka.apply`).
  """

  def layer(x, p):
    ws, dx = [], jnp.zeros_like(x)
    for s, act in enumerate(activations):
      scores_TxT = (x @ p.b[s].T) @ (x @ p.c[s].T).T
      w_TxT = kernels.attention_weights(act, scores_TxT, key_mask_T)
      ws.append(w_TxT)
      if free_a:
        dx = dx + (w_TxT.T @ x) @ p.a[s].T
    return x + dx, jnp.stack(ws)

  _, w_LxHxTxT = jax.lax.scan(layer, x_TxD, params)
  return w_LxHxTxT


def readout_weights(params: ka.Params, x_TxD: jax.Array, *, activations: Sequence[str],
                    free_a: bool) -> jax.Array:
  """u with TF_{k+1} = sum_i y_i u_i (eq. (4)) for any labels y: [T], the query last.

  Y_{l+1} = Y_l (I + sum_s r_l^s W_l^s), so u = (I + R_0)(I + R_1)...(I + R_k) e_{n+1}, applied
  right to left (matrix-vector products only). u's last entry multiplies the query's label slot,
  which holds 0 in Z_0 (eq. (1)).
  """
  t = x_TxD.shape[0]
  key_mask_T = jnp.arange(t) < t - 1   # the mask M: the query never acts as a key
  w = attention_matrices(params, x_TxD, key_mask_T, activations=activations, free_a=free_a)

  def back(v, lw):
    r_H, w_HxTxT = lw
    return v + jnp.einsum('h,hij,j->i', r_H, w_HxTxT, v), None

  u, _ = jax.lax.scan(back, jnp.zeros((t,)).at[-1].set(1.0), (params.r, w), reverse=True)
  return u


def conditional_loss(params: ka.Params, x_TxD: jax.Array, k_plus_TxT: jax.Array, *,
                     activations: Sequence[str], free_a: bool) -> jax.Array:
  """E[(TF_{k+1} + y_query)^2 | X] = v^T K_+ v, v = (u_1..u_n, 1): the loss (5) given X.

  Args:
    params: one model.
    x_TxD: [n+1, d] covariates, the query last.
    k_plus_TxT: [n+1, n+1] K_+(X), the covariance of (y_1..y_n, y_query) (Definition 3.3).
  """
  u = readout_weights(params, x_TxD, activations=activations, free_a=free_a)
  v = u.at[-1].set(1.0)
  return v @ k_plus_TxT @ v


# K_+ = K when K is positive semi-definite (Definition 3.3): K_linear is a Gram matrix, and
# exp(<u, w> / s^2) = sum_k <u, w>^k / (k! s^{2k}) is a sum of PSD kernels (Schur product
# theorem), as is the composite of Appendix D. K_relu is not PSD: its K_+ needs the
# eigendecomposition, the costly part of a prompt (one 31 x 31 eigh, ~70 us of CPU).
PSD_KERNELS = ('linear', 'exp', 'composite')


def sample_covariates(key: jax.Array, *, n: int, cov: kernel_gp.Covariance, kernel: str,
                      kernel_kw: dict) -> tuple:
  """One prompt's covariates x = Sigma^{1/2} xi [n+1, d] (query last) and K_+(X) [n+1, n+1]
  (Definition 3.3, Example 7, Appendix H.1); the labels are not drawn (`conditional_loss`)."""
  xi_TxD = kernel_gp.sphere(key, n + 1, cov.sigma.shape[0])
  k_TxT = kernels.gram(kernel, xi_TxD, **kernel_kw)
  k_plus = k_TxT if kernel in PSD_KERNELS else kernel_gp.psd_part(k_TxT)
  return xi_TxD @ cov.sqrt, k_plus


def sample_models(key: jax.Array, models: Sequence[tuple], covs, *, n: int, batch: int,
                  kernel_kw: dict) -> tuple:
  """batch covariate sets and K_+ per model: x [M, B, n+1, d], k_plus [M, B, n+1, n+1].

  Model m = models[m] = (kernel, seed) draws from fold_in(key, m).
  """
  xs, ks = [], []
  for m, (kernel, seed) in enumerate(models):
    cov = jax.tree.map(lambda a, s=seed: a[s], covs)
    keys = jax.random.split(jax.random.fold_in(key, m), batch)
    x, k = jax.vmap(lambda k_, kernel=kernel, cov=cov: sample_covariates(
        k_, n=n, cov=cov, kernel=kernel, kernel_kw=kernel_kw))(keys)
    xs.append(x)
    ks.append(k)
  return jnp.stack(xs), jnp.stack(ks)


# --- training ----------------------------------------------------------------------------------

def groups(config) -> list:
  """The (A mode, activation) settings, each a grid of models (kernel, seed)."""
  return [(mode, act) for mode in config.a_modes for act in config.activations]


def group_name(mode: str, act: str) -> str:
  return f'a_{mode}_{act}'


def models(config) -> list:
  """(kernel, seed) of each model of a group, kernel-major: index k * num_seeds + s."""
  return [(kernel, seed) for kernel in config.kernels for seed in range(config.num_seeds)]


def _per_group(txs: dict) -> optax.GradientTransformation:
  """One optax transformation per key of a dict of parameter groups (each group its own clip)."""

  def init(params):
    return {g: tx.init(params[g]) for g, tx in txs.items()}

  def update(updates, state, params=None):
    out = {g: tx.update(updates[g], state[g], None if params is None else params[g])
           for g, tx in txs.items()}
    return {g: o[0] for g, o in out.items()}, {g: o[1] for g, o in out.items()}

  return optax.GradientTransformation(init, update)


def learning_rate(tc):
  """Adam's step: tc.lr for the first tc.decay_from of the steps, then a cosine decay to
  tc.lr * tc.lr_final (lr_final = 1.0: constant).

  The decay lets the iterates settle where constant-step Adam keeps jittering around the
  stationary point; the constant phase keeps the slow directions moving (see the config)."""
  if tc.lr_final == 1.0:
    return tc.lr
  start = int(tc.decay_from * tc.steps)
  return optax.join_schedules(
      [optax.constant_schedule(tc.lr),
       optax.cosine_decay_schedule(tc.lr, tc.steps - start, alpha=tc.lr_final)], [start])


def train_conditional(key: jax.Array, config, covs, workdir: str, mesh=None):
  """Every group trained as ONE program on the loss (5) given X (`conditional_loss`).

  As `fgd_common.train_grid` (init N(0, init_scale^2), Adam with a per-model global-norm clip,
  a batch per block of resample_every steps, checkpoints), except that the groups share each
  batch of covariates (model m of every group sees the same X, K_+): drawing a batch costs
  about a step of one group, so one draw for all groups makes a fresh batch every step cheap.
  Each batch is split over `mesh` (`distributed.shard_batch` on the prompt axis).

  Returns:
    ({group name: Params with leading model axis}, training.History).
  """
  tc = config.train
  d = config.d
  gs, ms = groups(config), models(config)
  k_init, k_data = jax.random.split(key)
  init = jax.jit(lambda k, free: fc.init_grid(k, len(ms), d=d, layers=tc.layers, heads=1,
                                              scale=tc.init_scale, free_a=free),
                 static_argnums=1)
  params = {group_name(mode, act): init(jax.random.fold_in(k_init, i), mode == 'free')
            for i, (mode, act) in enumerate(gs)}
  kernel_kw = fc.kernel_kwargs(config)

  def sample_fn(k):
    return sample_models(k, ms, covs, n=config.n, batch=tc.batch_size, kernel_kw=kernel_kw)

  def loss_fn(p, batch):
    x, k = distributed.shard_batch(batch, mesh, axis=1)   # [M, batch, ...]
    total = 0.0
    for mode, act in gs:
      one = lambda pm, xb, kb, act=act, free=(mode == 'free'): conditional_loss(
          pm, xb, kb, activations=(act,), free_a=free)
      per = lambda pm, xm, km, one=one: jnp.mean(jax.vmap(one, in_axes=(None, 0, 0))(pm, xm, km))
      total = total + jnp.sum(jax.vmap(per)(p[group_name(mode, act)], x, k))
    return total

  tx = training.per_model(optax.chain(optax.clip_by_global_norm(tc.clip),
                                      optax.adam(learning_rate(tc), b2=tc.b2)))
  logging.info('training %d groups x %d models (%d layers, n = %d, labels integrated out) as '
               'one program', len(gs), len(ms), tc.layers, config.n)
  return training.fit(loss_fn, params, _per_group({g: tx for g in params}), key=k_data,
                      max_steps=tc.steps, log_every=tc.log_every, ckpt_every=tc.ckpt_every,
                      workdir=os.path.join(workdir, 'conditional'), keep_trajectory=True,
                      sample_fn=sample_fn, resample_every=tc.resample_every, mesh=mesh)


def train_sampled(key: jax.Array, config, covs, workdir: str, mesh=None):
  """Appendix H.1's recipe: sampled labels, one `fgd_common.train_grid` program per group."""
  tc = types.SimpleNamespace(**config.train.to_dict())
  tc.lr = learning_rate(config.train)   # optax.adam takes a schedule as well as a number
  specs = [fc.Spec(kernel, config.n, seed) for kernel, seed in models(config)]
  params, trajectories, losses = {}, {}, []
  for i, (mode, act) in enumerate(groups(config)):
    name = group_name(mode, act)
    params[name], hist = fc.train_grid(
        jax.random.fold_in(key, i), specs, covs, activations=(act,), tc=tc,
        kernel_kw=fc.kernel_kwargs(config), workdir=workdir, name=name, free_a=mode == 'free',
        keep_trajectory=True, mesh=mesh)
    trajectories[name] = hist.trajectory
    losses.append(hist.loss)
  hist = hist._replace(trajectory=trajectories, loss=np.sum(losses, axis=0))
  return params, hist


# --- config checks -----------------------------------------------------------------------------

def _unique_subset(config, field: str, allowed) -> None:
  values = common._get(config, field)
  if (isinstance(values, str) or not values or len(set(values)) != len(values)
      or any(v not in allowed for v in values)):
    raise common.ConfigError(f'config.{field}={values!r}: need a non-empty tuple of distinct '
                             f'names from {", ".join(allowed)}')


def validate(config) -> None:
  fc.validate_problem(config)
  fc.validate_kernels(config, 'kernels')
  fc.validate_activations(config, 'activations')
  _unique_subset(config, 'kernels', kernels.KERNELS)
  _unique_subset(config, 'activations', kernels.ACTIVATIONS)
  _unique_subset(config, 'a_modes', A_MODES)
  common.positive_int(config, 'n')
  fc.validate_train(config)
  common.multiple_of(config, 'train.log_every', 'train.resample_every')
  common.one_of(config, 'train.loss', LOSSES)
  common.positive_float(config, 'train.lr_final')
  if config.train.lr_final > 1.0:
    raise common.ConfigError(f'config.train.lr_final={config.train.lr_final}: must be in (0, 1] '
                             '(the final step as a fraction of train.lr; 1 = constant)')
  if not 0.0 <= config.train.decay_from < 1.0:
    raise common.ConfigError(f'config.train.decay_from={config.train.decay_from}: must be in '
                             '[0, 1) (the fraction of the steps before the decay starts)')
  if 'free' in config.a_modes and config.train.layers < 2:
    raise common.ConfigError(f'config.train.layers={config.train.layers}: A free needs at least '
                             '2 layers (A of the last layer never reaches the read-out)')
  for field in ('fall_ratio', 'bound', 'a_bound', 'min_fraction', 'a_min_fraction'):
    common.positive_float(config, f'claims.{field}')
  for field in ('min_fraction', 'a_min_fraction'):
    value = common._get(config, f'claims.{field}')
    if value > 1.0:
      raise common.ConfigError(f'config.claims.{field}={value}: must be in (0, 1]')


# --- measurement -------------------------------------------------------------------------------

def dist_to_identity(mats) -> np.ndarray:
  """dist(M, I) = min_alpha ||M - alpha I||_F / ||M||_F (Appendix H.2) over leading axes."""
  mats = np.asarray(mats, np.float64)
  flat = mats.reshape((-1,) + mats.shape[-2:])
  return np.asarray([metrics.distance_to_scaled_identity(m) for m in flat]).reshape(
      mats.shape[:-2])


def _btc(p: ka.Params) -> np.ndarray:
  """B_l^T C_l of head 0 over any leading axes: [..., L, d, d] (single-head models)."""
  b, c = np.asarray(p.b[..., 0, :, :]), np.asarray(p.c[..., 0, :, :])
  return np.einsum('...ki,...kj->...ij', b, c)


def measure(config, workdir):
  covs = fc.covariances(config)
  key = jax.random.fold_in(common.jax_key(config), 1)   # fold 0 drew Sigma (fc.covariances)
  train = train_conditional if config.train.loss == 'conditional' else train_sampled
  _, hist = train(key, config, covs, workdir, distributed.data_mesh())
  k, s = len(config.kernels), config.num_seeds
  layers = config.train.layers
  measured, trajectories = {}, {}
  for mode in config.a_modes:
    # [P, M, L, d, d] per activation -> [P, K, A, S, L, d, d]
    btc = np.stack([_btc(hist.trajectory[group_name(mode, act)]) for act in config.activations])
    btc = btc.reshape((len(config.activations), -1, k, s) + btc.shape[3:])
    btc = np.moveaxis(btc, 0, 2)
    trajectories[f'btc_{mode}'] = btc
    measured[f'btc_{mode}'], measured[f'btc_init_{mode}'] = btc[-1], btc[0]
    if mode == 'free':
      a = np.stack([np.asarray(hist.trajectory[group_name(mode, act)].a[..., :layers - 1, 0, :, :])
                    for act in config.activations])
      a = np.moveaxis(a.reshape((len(config.activations), -1, k, s) + a.shape[3:]), 0, 2)
      trajectories['a_free'] = a
      measured['a_free'], measured['a_init_free'] = a[-1], a[0]
  theory = {'sigma_sqrt': np.asarray(covs.sqrt)}
  aux = {'hist': hist, 'trajectories': trajectories}
  return results.Evidence(measured=measured, theory=theory), aux


# --- claims ------------------------------------------------------------------------------------

MODE_TEXT = {'zero': 'A_l = 0 (Thm 4.5)', 'free': 'A_l free (Thm 4.6)'}


def sandwich(btc, sigma_sqrt) -> np.ndarray:
  """Sigma^{1/2} B^T C Sigma^{1/2} for btc [..., S, L, d, d] and sigma_sqrt [S, d, d]."""
  sq = np.asarray(sigma_sqrt, np.float64)[:, None]
  return sq @ np.asarray(btc, np.float64) @ sq


def _claims_for(text: str, final, initial, *, bound: float, min_fraction: float,
                fall_ratio: float) -> tuple:
  """'falls over training' and 'ends near a multiple of I' for dist arrays of one kind."""
  num = final.size
  ratio = float(np.median(final / initial))
  frac = float(np.mean(final <= bound))
  return [
      results.Claim(f'{text}: dist(M, I) falls over training (median over the {num} matrices of '
                    'final / initial dist)', ratio, 0.0, fall_ratio, 'at_most'),
      results.Claim(f'{text}: fraction of the {num} matrices that end with dist(M, I) <= '
                    f'{bound:g}', frac, min_fraction, 0.0, 'at_least'),
  ], ratio, frac


def check(config, ev):
  c, mv, th = config.claims, ev.measured, ev.theory
  claims, met = [], {}
  layers = config.train.layers
  for mode in config.a_modes:
    final = dist_to_identity(sandwich(mv[f'btc_{mode}'], th['sigma_sqrt']))   # [K, A, S, L]
    initial = dist_to_identity(sandwich(mv[f'btc_init_{mode}'], th['sigma_sqrt']))
    text = f'{MODE_TEXT[mode]}, M = Sigma^1/2 B_l^T C_l Sigma^1/2 (l = 0..{layers - 1})'
    new, ratio, frac = _claims_for(text, final, initial, bound=c.bound,
                                   min_fraction=c.min_fraction, fall_ratio=c.fall_ratio)
    claims += new
    met[f'btc_{mode}_median_fall_ratio'] = ratio
    met[f'btc_{mode}_fraction_within_bound'] = frac
    met[f'btc_{mode}_num_above_bound'] = int(np.sum(final > c.bound))
    met[f'btc_{mode}_median_final_dist'] = float(np.median(final))
    met[f'btc_{mode}_max_final_dist'] = float(np.max(final))
    kinds = [('btc', final)]
    if mode == 'free':
      a_final, a_initial = dist_to_identity(mv['a_free']), dist_to_identity(mv['a_init_free'])
      text = f'{MODE_TEXT[mode]}, M = A_l (l = 0..{layers - 2}; A_{layers - 1} never reaches TF)'
      new, ratio, frac = _claims_for(text, a_final, a_initial, bound=c.a_bound,
                                     min_fraction=c.a_min_fraction, fall_ratio=c.fall_ratio)
      claims += new
      met['a_free_median_fall_ratio'] = ratio
      met['a_free_fraction_within_bound'] = frac
      met['a_free_num_above_bound'] = int(np.sum(a_final > c.a_bound))
      met['a_free_median_final_dist'] = float(np.median(a_final))
      met['a_free_max_final_dist'] = float(np.max(a_final))
      kinds.append(('a', a_final))
    # One number per (K, h~, matrix): the median over seeds of the final distance.
    for name, dist in kinds:
      for i, kernel in enumerate(config.kernels):
        for j, act in enumerate(config.activations):
          for l in range(dist.shape[-1]):
            met[f'dist_{mode}_{kernel}_{act}_{name}{l}'] = float(np.median(dist[i, j, :, l]))
  return claims, met


# --- figures and the app -----------------------------------------------------------------------

def _grid_figure(config, steps, curves, *, bound: float, title: str):
  """Figs 5 / 6: a panel per (K, h~) (rows K, columns h~), log dist(M, I) against the training
  step, a line per matrix M (the mean over seeds of dist, as the paper averages its 3 runs).

  curves: {matrix name: [P, K, A, S] dist}.
  """
  plt = plotting.plt
  rows, cols = len(config.kernels), len(config.activations)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 1.6, 2.6 * rows), squeeze=False,
                           sharex=True)
  for i, kernel in enumerate(config.kernels):
    for j, act in enumerate(config.activations):
      ax = axes[i][j]
      for n_, (name, dist) in enumerate(curves.items()):
        ax.plot(steps, np.mean(dist[:, i, j], axis=-1), label=name, color=f'C{n_}')
      ax.axhline(bound, ls='--', lw=1, color='gray', label=f'claims bound {bound:g}')
      ax.set_yscale('log')
      ax.set_title(f'(K_{kernel}, h~_{act})', fontsize=9)
      ax.grid(alpha=0.3, which='both')
      if j == 0:
        ax.set_ylabel('dist(M, I)')
      if i == rows - 1:
        ax.set_xlabel('training step')
  axes[0][-1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1.0))
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def dist_trajectories(config, trajectories, sigma_sqrt) -> dict:
  """{name: [P, K, A, S] dist(M, I)} for each plotted matrix: '<mode>_btc<l>', 'free_a<l>'."""
  out = {}
  for mode in config.a_modes:
    dist = dist_to_identity(sandwich(trajectories[f'btc_{mode}'], sigma_sqrt))
    for l in range(dist.shape[-1]):
      out[f'{mode}_btc{l}'] = dist[..., l]
  if 'free' in config.a_modes:
    dist = dist_to_identity(trajectories['a_free'])
    for l in range(dist.shape[-1]):
      out[f'free_a{l}'] = dist[..., l]
  return out


def run(config, workdir) -> results.Run:
  evidence, aux = measure(config, workdir)
  claims, met = check(config, evidence)
  hist = aux['hist']
  steps = hist.trajectory_steps
  dists = dist_trajectories(config, aux['trajectories'], evidence.theory['sigma_sqrt'])
  arrays = {'trajectory_steps': steps, 'loss': hist.loss,
            'sigma_sqrt': evidence.theory['sigma_sqrt'],
            **{f'dist_{name}': v for name, v in dists.items()},
            **{f'final_{k}': v for k, v in evidence.measured.items() if 'init' not in k}}
  label = lambda name: (f'Sigma^1/2 B{name[-1]}^T C{name[-1]} Sigma^1/2' if 'btc' in name
                        else f'A{name[-1]}')
  figures = {}
  n = config.n
  for mode, fig_no, thm in (('zero', 5, '4.5'), ('free', 6, '4.6')):
    if mode not in config.a_modes:
      continue
    curves = {label(k): v for k, v in dists.items() if k.startswith(f'{mode}_')}
    figures[f'fig{fig_no}_a_{mode}.png'] = _grid_figure(
        config, steps, curves, bound=config.claims.bound,
        title=f'Fig {fig_no}: dist(M, I) over training, {MODE_TEXT[mode]}, n = {n}, '
              f'{config.train.layers} layers (mean of {config.num_seeds} seed(s))')
  if 'exp' in config.kernels and 'softmax' in config.activations:
    i, j = config.kernels.index('exp'), config.activations.index('softmax')
    panels = {f'({a}) {MODE_TEXT[mode]}': {label(k): np.mean(v[:, i, j], -1)
                                          for k, v in dists.items() if k.startswith(f'{mode}_')}
              for a, mode in zip('ab', config.a_modes)}
    figures['fig3_exp_softmax.png'] = plotting.panels(
        steps, panels, xlabel='training step', ylabel='dist(M, I)', logy=True,
        title=f'Fig 3: (K_exp, h~_softmax), n = {n}')
  figures['loss.png'] = plotting.curves(
      np.arange(1, hist.loss.shape[0] + 1), {'sum over models': hist.loss}, xlabel='step',
      ylabel='in-context loss (5)' + (' given X' if config.train.loss == 'conditional' else ''),
      logy=True, title='Training loss')
  return results.Run(metrics=met, claims=claims, arrays=arrays, figures=figures,
                     evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=fc.PAPER, reproduces='Thms 4.5, 4.6; Figs 3, 5, 6')
