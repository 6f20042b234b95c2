"""Sec. 6 "Non-Augmented setting", Figs 7 and 8 of Sander et al. (2024): MSE vs the number of heads
with plain and duplicated tokens, and orthogonality between heads.

  python -m experiments.autoregressive.heads_and_duplication \
      --config=experiments/autoregressive/configs/heads_and_duplication.py:quick \
      --workdir=/tmp/ar_heads_and_duplication

Setting. Sequences s_1 = 1_d, s_{t+1} = W s_t with W Haar on O(d) (non-commuting, real:
`autoregressive.sequence(kind='orthogonal')`), d = 10, T_max = 50; one fixed training set and one
test set shared by every model. The model is eq. (6) without Assumption 3,

  T(e_{1:T}) = sum_h sum_{t<=T} P_{T-1,t} <e_t | A^h e_{T-1}> B^h e_t,  A^h = W_K^hT W_Q^h,
  B^h = W_O^h W_V^h  (`ar_attention.StandardParams`, head width = token width),

with P the masked softmax of a positional attention, P_{t,t'} = softmax_t'(<W_Qpos p_t |
W_Kpos p_t'>) (`ar_attention.PositionalSoftmax`, Sec. 6), tokens plain e_t = s_t (width d) or
duplicated e_t = (s_t, s_t) (width 2d), the prediction of s_{T+1} the first d output coordinates,
trained on loss (3) (summed over T = 2..T_max) with Adam in epochs (`training.epoch_batch`). MSE
= loss (3) / ((T_max - 1) d), per test sequence; predicting 0 gives exactly 1 (||s_t||^2 = d).
Every (heads, encoding) model and the Fig 8 model train as ONE program (`training.fit` on the sum
of their losses: Adam is elementwise, so they do not interact) on the same batches, so the test
comparisons are paired.

Fig 8: d = 5, duplicated tokens, so M = sum_h B_h^T B_h is 2d x 2d = 10 x 10, as the paper's
figure; B_h = W_O^h W_V^h the whole [2d, 2d] value-output map. One head's draw is copied to every
head and each head parameter gets 0.05 N(0, 1) added (P is shared by the heads in eq. (6), so it
is not perturbed). Metrics also give M over the read-out rows only, B_h[:d] (the rows the
prediction reads; rows d: of W_O get no gradient and keep their initial values).

Claims (tolerances in config.claims, fixed before the runs; see the config for their sources):
  (1) Fig 7, duplicated tokens: MSE(H_max) / MSE(H = 1) <= claims.dup_fraction (0.8);
  (2) Fig 7, at H_max duplicated beats plain: mean(MSE_plain - MSE_dup) / stderr of the paired
      per-sequence difference >= claims.k_beats (3);
  (3) Fig 8: the off-diagonal mass ||offdiag(M)||_F / ||M||_F after training <=
      claims.offdiag_fraction (0.5) x its value at initialisation.
The plain-token trend MSE_plain(H_max) / MSE_plain(1) (the paper: "no significant gain"), every
MSE, the paired z at every H and the checks below are metrics.

What eq. (6) can and cannot do here:
  * Duplication adds no function. With J = [I_d; I_d], e_t = J s_t, so a duplicated model's
    prediction is sum_h (W_O^h[:d] W_V^h J) M_T (J^T W_K^hT W_Q^h J) s_{T-1}, M_T = sum_t P s_t
    s_t^T: exactly the plain model with W' = W J (inputs) and W_O' = W_O[:d] (`as_plain`; metric
    dup_as_plain_max_abs_diff ~2e-7 relative, float32). The function class is the plain one;
    duplication changes only the parameterisation, i.e. the optimisation: W_V's two column
    halves get the same gradient, which is the +-d stripes of the trained M in Fig 8.
  * The model is cubic in the tokens, and for Haar W its best predictor is poor: a least-squares
    fit of the full tensor C_ijkl = sum_h B^h_ij A^h_kl (any C: H >= d^2 heads) with P on the last
    token gives MSE 0.88 (in sample) to 0.90 (held out) of the zero predictor at d = 10 (prefixes
    T = 12 and 40, 6e4 sequences; P on the last two tokens with a C each: no better), ~0.77 at
    d = 5 (measured offline here). Trained to convergence at T_max = 20 (this app with
    --config.data.t_max=20 --config.data.num_train=4096 --config.train.batch_size=256
    --config.heads='(1, 2, 4, 8, 16)', seeds 0-2; the test MSE is flat from epoch ~4 of 16)
    every model, plain or duplicated, 1 to 16 heads, ends at MSE 0.888-0.903 at d = 10: the
    floor. So MSE(H_max) / MSE(1) cannot fall below ~0.88 with this
    model, whatever the training: claim (1)'s 0.8 is out of reach of eq. (6) at d = 10. What
    duplication changes is the speed of training with many heads, which is what quick shows.
The paper's Fig 7 comes from the authors' code, which is not eq. (6): biases in Q, K, V, the
query at the current token (tau = T), per-head positional softmaxes from the token W_Q, W_K, a
shared output layer, LayerNorm and a linear read-out. A small replica of that script (PyTorch,
d = 10, T = 50, 2^12 sequences, 30 epochs of batch 256, seed 0; run offline here) gave test MSE
/ zero predictor: plain H = 1 0.865, H = 8 0.812; duplicated H = 1 0.836, H = 8 0.740 (still
falling), i.e. below eq. (6)'s floor.

Measured (quick, seeds 0 / 1 / 2; 2-core CPU shared with other jobs; CPU = user + sys and peak
RSS from /usr/bin/time -v; cold = empty compilation cache):
  test MSE, plain H = 1, 4, 16: 0.970 0.971 0.979 / 0.982 0.982 0.970 / 0.984 0.978 0.971
            duplicated:        0.974 0.965 0.946 / 0.967 0.968 0.921 / 0.987 0.958 0.921
  (stderr 0.003-0.004; init ~1.00 plain, 1.01-1.29 duplicated; training is far from converged
  at 256 steps: the floor is ~0.89.)
  (1) MSE_dup(16) / MSE_dup(1) = 0.971 / 0.953 / 0.934: FAILS (<= 0.8); the plain trend
      1.009 / 0.987 / 0.987. Duplicated MSE falls with H and plain does not, as in Fig 7, but
      by 3-7%, not "significantly" (and it cannot, see above).
  (2) z(plain - dup) at H = 16: 19.5 / 24.8 / 19.3: holds (>= 3); at H = 1: -7.3 / 11.5 / -2.2,
      at H = 4: 5.2 / 11.9 / 16.0.
  (3) Fig 8 offdiag mass 0.658 -> 0.573 / 0.645 -> 0.578 / 0.637 -> 0.630, ratio 0.871 / 0.897
      / 0.989: FAILS (<= 0.5); read-out rows 0.703 -> 0.686 / 0.623 -> 0.634 / 0.745 -> 0.729.
      The trained M is not diagonal: besides the +-d stripes it keeps a uniform positive
      background (Haar W is invariant under rotations fixing 1_d, so nothing singles out the
      coordinate axes; a*I + b*11^T is the symmetric form). At T_max = 20 and 64 epochs
      (seed 0): 0.658 -> 0.577.
  cost: 100.4 s CPU cold (158 s wall at load 4-5), 79.0 / 80.2 s CPU warm (81 s wall at load
  ~2), peak RSS 1.08-1.16 GB; 256 steps of the 7 models at ~0.3 s CPU each, ~20 s compiling.
  One program trains the grid; a padded head axis (every model at 16 heads, masked) would cost
  2.3x the step (5.2 vs 2.3 ms of CPU per sequence-step at T = 50, measured per model).
  smoke: ~7 s CPU warm, ~12 s cold. paper: not run (no accelerator here; ~7e14 FLOP).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import common
from icl_jax import plotting, results, training
from icl_jax.models import ar_attention as ar
from icl_jax.samplers import autoregressive as ar_sampler

EXPERIMENT = 'autoregressive/heads_and_duplication'
PAPER = ('Sander, Giryes, Suzuki, Blondel & Peyre, How do Transformers Perform In-Context '
         'Autoregressive Learning? (ICML 2024)')
ENCODINGS = ('plain', 'duplicated')
CONTEXTS = ('orthogonal', 'orthogonal_commuting')


# --- config checks -------------------------------------------------------------------------------

def _fraction(config, field: str) -> None:
  value = common._get(config, field)
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
      or not 0 < value <= 1):
    raise common.ConfigError(f'config.{field}={value!r}: must be a number in (0, 1]')


def _non_negative(config, field: str) -> None:
  value = common._get(config, field)
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
      or value < 0):
    raise common.ConfigError(f'config.{field}={value!r}: must be a number >= 0')


def validate(config) -> None:
  common.positive_int(config, 'data.d')
  t = config.data.t_max
  if isinstance(t, bool) or not isinstance(t, int) or t < 3:
    raise common.ConfigError(f'config.data.t_max={t!r}: must be an integer >= 3 (T_max)')
  common.one_of(config, 'data.context', CONTEXTS)
  common.positive_int(config, 'data.num_train')
  common.positive_int(config, 'data.num_test')
  heads = config.heads
  common.positive_ints(config, 'heads', min_len=2)
  if heads[0] != 1 or any(b <= a for a, b in zip(heads[:-1], heads[1:])):
    raise common.ConfigError(f'config.heads={tuple(heads)!r}: must be increasing and start at 1 '
                             '(the claims compare the largest H with H = 1)')
  common.positive_float(config, 'model.init_scale')
  pos = config.model.pos_dim
  if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
    raise common.ConfigError(f'config.model.pos_dim={pos!r}: must be an integer >= 0 (0: T_max)')
  if not isinstance(config.fig8.enabled, bool):
    raise common.ConfigError(f'config.fig8.enabled={config.fig8.enabled!r}: must be True or '
                             'False')
  common.positive_int(config, 'fig8.d')
  common.positive_int(config, 'fig8.heads')
  _non_negative(config, 'fig8.noise')
  common.positive_float(config, 'fig8.init_scale')
  if config.data.context == 'orthogonal_commuting':
    for field in ('data.d',) + (('fig8.d',) if config.fig8.enabled else ()):
      if common._get(config, field) % 2:
        raise common.ConfigError(f'config.{field}={common._get(config, field)}: must be even '
                                 "for data.context='orthogonal_commuting' (rotation blocks)")
  for field in ('epochs', 'batch_size', 'log_every_epochs', 'ckpt_every_epochs'):
    common.positive_int(config, f'train.{field}')
  common.positive_float(config, 'train.lr')
  if config.train.batch_size > config.data.num_train:
    raise common.ConfigError(f'config.train.batch_size={config.train.batch_size}: must be at '
                             f'most config.data.num_train={config.data.num_train}')
  common.multiple_of(config, 'train.epochs', 'train.log_every_epochs')
  common.multiple_of(config, 'train.ckpt_every_epochs', 'train.log_every_epochs')
  common.positive_int(config, 'eval.chunk')
  common.multiple_of(config, 'data.num_test', 'eval.chunk')
  if config.data.num_test < 2:
    raise common.ConfigError(f'config.data.num_test={config.data.num_test}: must be >= 2 (a '
                             'standard error)')
  _fraction(config, 'claims.dup_fraction')
  _non_negative(config, 'claims.k_beats')
  _fraction(config, 'claims.offdiag_fraction')


# --- models and data -----------------------------------------------------------------------------

def grid(config) -> list:
  """[(encoding, H)]: plain for every H, then duplicated for every H (the order of 'mse')."""
  return [(enc, h) for enc in ENCODINGS for h in config.heads]


def token_width(encoding: str, d: int) -> int:
  return 2 * d if encoding == 'duplicated' else d


def _pos_dim(config):
  return config.model.pos_dim or None


def sequences(key: jax.Array, context: str, d: int, t_max: int, num: int) -> jax.Array:
  """[num, T_max + 1, d] real sequences, one context W per sequence."""
  return jax.vmap(lambda k: ar_sampler.sequence(k, context, d, t_max,
                                                real=context == 'orthogonal_commuting'))(
      jax.random.split(key, num))


def datasets(key: jax.Array, config, d: int):
  """(train [num_train, T_max + 1, d], test [num_test, ...]): one batched sampler call (one
  batched QR for Haar W; two concurrent ones can deadlock XLA's CPU LAPACK, DESIGN.md)."""
  dc = config.data
  both = sequences(key, dc.context, d, dc.t_max, dc.num_train + dc.num_test)
  return both[:dc.num_train], both[dc.num_train:]


def init_grid(key: jax.Array, config) -> tuple:
  """One `init_standard` draw per (encoding, H) of `grid`, keys fold_in(key, index)."""
  return tuple(
      ar.init_standard(jax.random.fold_in(key, i), token_width(enc, config.data.d), h,
                       config.data.t_max, scale=config.model.init_scale, positional='softmax',
                       pos_dim=_pos_dim(config))
      for i, (enc, h) in enumerate(grid(config)))


def init_near_equal(key: jax.Array, config) -> ar.StandardParams:
  """Fig 8's initialisation: one head's W_Q, W_K, W_V, W_O copied to every head, plus
  fig8.noise x N(0, 1) per head and entry; the shared positional softmax as drawn."""
  fc = config.fig8
  k_one, k_noise = jax.random.split(key)
  one = ar.init_standard(k_one, 2 * fc.d, 1, config.data.t_max, scale=fc.init_scale,
                         positional='softmax', pos_dim=_pos_dim(config))
  keys = jax.random.split(k_noise, 4)

  def spread(w, k):
    return jnp.repeat(w, fc.heads, axis=0) + fc.noise * jax.random.normal(
        k, (fc.heads,) + w.shape[1:], w.dtype)

  return one._replace(w_q=spread(one.w_q, keys[0]), w_k=spread(one.w_k, keys[1]),
                      w_v=spread(one.w_v, keys[2]), w_o=spread(one.w_o, keys[3]))


def head_gram(params: ar.StandardParams, rows=None) -> jax.Array:
  """M = sum_h B_h^T B_h, B_h = W_O^h W_V^h (rows `rows` of B_h when given): [D, D]."""
  b_HxDxD = jnp.einsum('hik,hkj->hij', params.w_o, params.w_v)
  if rows is not None:
    b_HxDxD = b_HxDxD[:, :rows]
  return jnp.einsum('hki,hkj->ij', b_HxDxD, b_HxDxD)


def offdiag_ratio(m) -> float:
  """||offdiag(M)||_F / ||M||_F."""
  m = np.asarray(m, np.float64)
  return float(np.linalg.norm(m - np.diag(np.diag(m))) / np.linalg.norm(m))


def as_plain(params: ar.StandardParams, d: int) -> ar.StandardParams:
  """The plain-token model equal to a duplicated-token one: W' = W J, J = [I_d; I_d] (inputs),
  W_O' = W_O[:d] (outputs); head width unchanged (2d)."""
  fold = lambda w: w[..., :d] + w[..., d:]
  return params._replace(w_q=fold(params.w_q), w_k=fold(params.w_k), w_v=fold(params.w_v),
                         w_o=params.w_o[:, :d])


def per_sequence_mse(params, s_NxTp1xD: jax.Array, encoding: str, chunk: int) -> jax.Array:
  """Loss (3) / ((T_max - 1) d) of each sequence: [N]."""
  t_max, d = s_NxTp1xD.shape[1] - 1, s_NxTp1xD.shape[2]
  one = lambda s: ar.loss(params, s, encoding=encoding) / ((t_max - 1) * d)
  return jax.lax.map(one, s_NxTp1xD, batch_size=chunk)


# --- training ------------------------------------------------------------------------------------

def train(config, workdir: str, key: jax.Array, params: dict, train7, train8):
  """Every model of params ({'fig7': tuple[, 'fig8': StandardParams]}) as one program.

  Each epoch's order of each training set is drawn once per epoch (fit's sample_fn with
  resample_every = steps per epoch); step s takes the (s mod per_epoch)-th batch of it.
  """
  tc = config.train
  num, b = config.data.num_train, tc.batch_size
  per_epoch = num // b
  models = grid(config)

  def epoch_order(k):
    orders = {'fig7': training.epoch_batch(train7, 0, jax.random.fold_in(k, 7), num)}
    if train8 is not None:
      orders['fig8'] = training.epoch_batch(train8, 0, jax.random.fold_in(k, 8), num)
    return orders

  def loss_fn(p, epoch, step):
    start = (step % per_epoch) * b
    batch7 = jax.lax.dynamic_slice_in_dim(epoch['fig7'], start, b)
    total = sum(ar.mean_loss(pm, batch7, encoding=enc) for pm, (enc, _) in zip(p['fig7'], models))
    if 'fig8' in p:
      batch8 = jax.lax.dynamic_slice_in_dim(epoch['fig8'], start, b)
      total = total + ar.mean_loss(p['fig8'], batch8, encoding='duplicated')
    return total

  logging.info('training %d models (%s) %sas one program: %d sequences, %d epochs of %d steps, '
               'Adam lr %g', len(models), ', '.join(f'{e} H={h}' for e, h in models),
               '+ the Fig 8 model ' if 'fig8' in params else '', num, tc.epochs,
               per_epoch, tc.lr)
  return training.fit(loss_fn, params, optax.adam(tc.lr), key=key,
                      max_steps=tc.epochs * per_epoch, log_every=tc.log_every_epochs * per_epoch,
                      ckpt_every=tc.ckpt_every_epochs * per_epoch, workdir=workdir,
                      keep_trajectory=False, pass_step=True, sample_fn=epoch_order,
                      resample_every=per_epoch)


# --- measure / check / run -----------------------------------------------------------------------

def measure(config, workdir):
  key = common.jax_key(config)
  k_data7, k_data8, k_init7, k_init8, k_train = (jax.random.fold_in(key, i) for i in range(5))
  del key
  dc, fc = config.data, config.fig8
  train7, test7 = jax.jit(lambda k: datasets(k, config, dc.d))(k_data7)
  train8 = test8 = None
  if fc.enabled:
    train8, test8 = jax.jit(lambda k: datasets(k, config, fc.d))(k_data8)
  def init(k7, k8):
    out = {'fig7': init_grid(k7, config)}
    if fc.enabled:
      out['fig8'] = init_near_equal(k8, config)
    return out

  params0 = jax.jit(init)(k_init7, k_init8)
  params, hist = train(config, workdir, k_train, params0, train7, train8)

  models = grid(config)
  chunk = config.eval.chunk

  @jax.jit
  def evaluate(p_2, test7, test8):
    """Initial and trained models (params stacked on a leading axis of 2): per-sequence test
    MSE, the Fig 8 Gram matrices, and each duplicated model against its plain equivalent
    (`as_plain`) on one chunk of test sequences (max |difference| / max |prediction|)."""

    def one(p):
      out = {'mse': jnp.stack([per_sequence_mse(pm, test7, enc, chunk)
                               for pm, (enc, _) in zip(p['fig7'], models)])}
      s = test7[:chunk]
      diffs = []
      for pm, (enc, _) in zip(p['fig7'], models):
        if enc == 'duplicated':
          dup = jax.vmap(lambda x, pm=pm: ar.predict_all(pm, x, encoding='duplicated'))(s)
          pla = jax.vmap(lambda x, pm=pm: ar.predict_all(as_plain(pm, dc.d), x,
                                                         encoding='plain'))(s)
          diffs.append(jnp.max(jnp.abs(dup - pla)) / jnp.max(jnp.abs(dup)))
      out['dup_as_plain'] = jnp.max(jnp.stack(diffs))
      if 'fig8' in p:
        out['mse8'] = per_sequence_mse(p['fig8'], test8, 'duplicated', chunk)
        out['m'] = head_gram(p['fig8'])
        out['m_readout'] = head_gram(p['fig8'], fc.d)
      return out

    return jax.vmap(one)(p_2)

  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params0, params)
  ev = jax.tree.map(lambda a: np.asarray(a, np.float64), evaluate(stacked, test7, test8))
  measured = {'mse': ev['mse'][1], 'mse_init': ev['mse'][0].mean(axis=1),
              'train_loss_final': float(hist.loss[-1])}
  if fc.enabled:
    measured.update({
        'fig8_m_init': ev['m'][0], 'fig8_m': ev['m'][1],
        'fig8_m_readout_init': ev['m_readout'][0], 'fig8_m_readout': ev['m_readout'][1],
        'fig8_mse_init': float(np.mean(ev['mse8'][0])),
        'fig8_mse': float(np.mean(ev['mse8'][1]))})
  # Predicting 0 has MSE ||s_{T+1}||^2 / d = 1 exactly (W orthogonal, s_1 = 1_d).
  theory = {'mse_zero_predictor': 1.0}
  aux = {'params': params, 'hist': hist,
         'dup_as_plain_max_abs_diff': float(ev['dup_as_plain'][1])}
  return results.Evidence(measured=measured, theory=theory), aux


def _mean_se(x) -> tuple:
  x = np.asarray(x, np.float64)
  return float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(x.size))


def check(config, ev):
  cl, mv = config.claims, ev.measured
  heads = list(config.heads)
  models = grid(config)
  mse = np.asarray(mv['mse'], np.float64)
  idx = {m: i for i, m in enumerate(models)}
  h1, hmax = heads[0], heads[-1]
  zero = float(np.asarray(ev.theory['mse_zero_predictor']))
  claims, met = [], {}
  for (enc, h), i in idx.items():
    mean, se = _mean_se(mse[i])
    met[f'mse_{enc}_H{h}'] = mean
    met[f'mse_se_{enc}_H{h}'] = se
    met[f'mse_init_{enc}_H{h}'] = float(np.asarray(mv['mse_init'])[i])
    met[f'mse_over_zero_predictor_{enc}_H{h}'] = mean / zero
  for h in heads:
    diff = mse[idx[('plain', h)]] - mse[idx[('duplicated', h)]]
    mean, se = _mean_se(diff)
    met[f'z_plain_minus_dup_H{h}'] = mean / se if se > 0 else float('nan')
  for enc in ENCODINGS:
    met[f'trend_{enc}'] = met[f'mse_{enc}_H{hmax}'] / met[f'mse_{enc}_H{h1}']

  claims.append(results.Claim(
      f'Fig 7: with duplicated tokens the test MSE falls as heads grow: MSE(H = {hmax}) / '
      f'MSE(H = {h1}) <= {cl.dup_fraction:g} (Sec. 6: a "significant improvement"; the '
      f'plain-token trend is a metric)', met['trend_duplicated'], cl.dup_fraction, 0.0,
      'at_most'))
  claims.append(results.Claim(
      f'Fig 7: at H = {hmax} duplicated tokens beat plain ones: mean(MSE_plain - MSE_dup) / '
      f'stderr of the paired per-sequence difference >= {cl.k_beats:g}',
      met[f'z_plain_minus_dup_H{hmax}'], cl.k_beats, 0.0, 'at_least'))
  if 'fig8_m' in mv:
    before, after = offdiag_ratio(mv['fig8_m_init']), offdiag_ratio(mv['fig8_m'])
    met['fig8_offdiag_init'], met['fig8_offdiag_trained'] = before, after
    met['fig8_offdiag_readout_init'] = offdiag_ratio(mv['fig8_m_readout_init'])
    met['fig8_offdiag_readout_trained'] = offdiag_ratio(mv['fig8_m_readout'])
    met['fig8_mse_init'], met['fig8_mse'] = float(mv['fig8_mse_init']), float(mv['fig8_mse'])
    claims.append(results.Claim(
        f'Fig 8: heads become orthogonal: ||offdiag(M)||_F / ||M||_F of M = sum_h B_h^T B_h '
        f'({config.fig8.heads} heads, d = {config.fig8.d}, M is 2d x 2d) after training / at '
        f'init <= {cl.offdiag_fraction:g}', after / before if before > 0 else math.inf,
        cl.offdiag_fraction, 0.0,
        'at_most'))
  met['train_loss_final'] = float(mv['train_loss_final'])
  return claims, met


def figures(config, ev, hist) -> dict:
  heads = np.asarray(config.heads)
  models = grid(config)
  mse = np.asarray(ev.measured['mse'], np.float64)
  ys, errs = {}, {}
  for enc in ENCODINGS:
    rows = [i for i, (e, _) in enumerate(models) if e == enc]
    label = {'plain': 'plain e_t = s_t', 'duplicated': 'duplicated e_t = (s_t, s_t)'}[enc]
    ys[label] = mse[rows].mean(axis=1)
    errs[label] = mse[rows].std(axis=1, ddof=1) / np.sqrt(mse.shape[1])
  dc = config.data
  out = {'figure7.png': plotting.curves(
      heads, ys, errs=errs, xlabel='number of heads H', ylabel='test MSE', logx=True, logy=True,
      hlines={'predict 0': float(np.asarray(ev.theory['mse_zero_predictor']))},
      title=f'Fig 7: eq. (6), Haar orthogonal W, d = {dc.d}, T_max = {dc.t_max} '
            '(bands: +-2 stderr)')}
  mv = ev.measured
  if 'fig8_m' in mv:
    scaled = lambda m: np.asarray(m) / np.abs(np.asarray(m)).max()
    out['figure8.png'] = plotting.heatmaps(
        {'init': scaled(mv['fig8_m_init']), 'trained': scaled(mv['fig8_m']),
         'init, read-out rows': scaled(mv['fig8_m_readout_init']),
         'trained, read-out rows': scaled(mv['fig8_m_readout'])},
        title=f'Fig 8: sum_h B_h^T B_h (d = {config.fig8.d}, duplicated, '
              f'{config.fig8.heads} heads), each / its max |entry|')
  out['train_loss.png'] = plotting.curves(
      np.arange(1, len(hist.loss) + 1), {'sum over the models': hist.loss}, xlabel='step',
      ylabel='training loss (3), summed over the models', logy=True,
      title='Training (all models: one program, Adam)')
  return out


def run(config, workdir) -> results.Run:
  evidence, aux = measure(config, workdir)
  claims, met = check(config, evidence)
  met['dup_as_plain_max_abs_diff'] = aux['dup_as_plain_max_abs_diff']
  mse = np.asarray(evidence.measured['mse'])
  arrays = {'heads': np.asarray(config.heads), 'mse': mse, 'mse_mean': mse.mean(axis=1),
            'mse_init': evidence.measured['mse_init'], 'train_loss': aux['hist'].loss}
  for key in ('fig8_m_init', 'fig8_m', 'fig8_m_readout_init', 'fig8_m_readout'):
    if key in evidence.measured:
      arrays[key] = evidence.measured[key]
  params = aux['params']
  for pm, (enc, h) in zip(params['fig7'], grid(config)):
    for field in ('w_q', 'w_k', 'w_v', 'w_o'):
      arrays[f'params_{enc}_H{h}_{field}'] = np.asarray(getattr(pm, field))
    arrays[f'params_{enc}_H{h}_P'] = np.asarray(ar.positional_matrix(pm.p))
  if 'fig8' in params:
    for field in ('w_q', 'w_k', 'w_v', 'w_o'):
      arrays[f'params_fig8_{field}'] = np.asarray(getattr(params['fig8'], field))
  return results.Run(metrics=met, claims=claims, arrays=arrays,
                     figures=figures(config, evidence, aux['hist']), evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=PAPER, reproduces='Sec 6, Figs 7 and 8')
