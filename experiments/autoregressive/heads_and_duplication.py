"""Sec. 6 "Non-Augmented setting", Figs 7 and 8 of Sander et al. (2024): MSE vs the number of heads
with plain and duplicated tokens, and orthogonality between heads, for two architectures: eq. (6)
as the paper writes it, and the model of the authors' script that produced Fig 7.

  python -m experiments.autoregressive.heads_and_duplication \
      --config=experiments/autoregressive/configs/heads_and_duplication.py:quick \
      --workdir=/tmp/ar_heads_and_duplication

Setting. Sequences s_1 = 1_d, s_{t+1} = W s_t with W Haar on O(d) (non-commuting, real:
`autoregressive.sequence(kind='orthogonal')`), d = 10, T_max = 50; one fixed training set and one
test set shared by every model of both architectures. Tokens are plain e_t = s_t (width d) or
duplicated e_t = (s_t, s_t) (width 2d). config.model.archs picks the architectures:

  'eq6': eq. (6) without Assumption 3,
    T(e_{1:T}) = sum_h sum_{t<=T} P_{T-1,t} <e_t | A^h e_{T-1}> B^h e_t,  A^h = W_K^hT W_Q^h,
    B^h = W_O^h W_V^h  (`ar_attention.StandardParams`, head width = token width),
    with P the masked softmax of a positional attention, P_{t,t'} = softmax_t'(<W_Qpos p_t |
    W_Kpos p_t'>) (`ar_attention.PositionalSoftmax`, Sec. 6), the prediction of s_{T+1} the first
    d output coordinates; init N(0, model.init_scale^2).
  'script': the one-layer model of the authors' script (github.com/michaelsdr/ical,
    non_augmented.py; `ar_script`): per-head Q, K, V with biases, the query at the current token
    (tau = T), token scores <q_T, k_t> / sqrt(D) times a per-head causal positional softmax built
    from the same Q, K maps applied to learned positions, heads summed, a shared output map W_O,
    LayerNorm (no residual) and a linear read-out D -> d; PyTorch's default init. `ar_script`'s
    docstring lists every departure from eq. (6).

Both are trained on loss (3) (summed over T = 2..T_max) with Adam in epochs
(`training.epoch_batch`). MSE = loss (3) / ((T_max - 1) d), per test sequence; predicting 0 gives
exactly 1 (||s_t||^2 = d). Per architecture, every (heads, encoding) model and the Fig 8 model
train as ONE program (`training.fit` on the sum of their losses: Adam is elementwise, so they do
not interact); both architectures get the same batches, so every test comparison is paired. The
eq6 program and its numbers are the same whether or not the script's models are trained; the
script's checkpoints are in workdir/script/checkpoints.

Names. Evidence, metrics, arrays and figures of eq6 keep the names this app had before it trained
the script's model ('mse', 'mse_plain_H1', 'fig8_m', 'params_duplicated_H4_w_q', figure8.png,
...); the script's carry the prefix 'script_' ('script_mse', 'script_mse_plain_H1',
'script_fig8_m', 'script_params_duplicated_H4_w_q', script_figure8.png, ...; its
'script_params_<enc>_H<h>_P' is the per-head positional softmax [H, T_max, T_max]). figure7.png has
one panel per architecture; train_loss.png one curve per architecture. Claims name their
architecture: 'Fig 7, eq. (6): ...', "Fig 7, authors' script: ...".

Fig 8: d = 5, duplicated tokens, so M = sum_h B_h^T B_h is 2d x 2d = 10 x 10, as the paper's
figure. eq6: B_h = W_O^h W_V^h, the whole [2d, 2d] value-output map; one head's draw is copied to
every head and each head parameter gets 0.05 N(0, 1) added (P is shared by the heads in eq. (6),
so it is not perturbed); metrics also give M over the read-out rows only, B_h[:d] (the rows the
prediction reads; rows d: of W_O get no gradient and keep their initial values). script: B_h =
W_O W_V^h with the shared W_O (`ar_script.value_output`; biases not included), the script's
`init_same` (W_Q, W_K, W_V and their biases copied across heads + 0.05 N(0, 1); positions, W_O,
LayerNorm and read-out as drawn).

Claims, for each architecture (tolerances in config.claims, fixed before the runs; see the config
for their sources):
  (1) Fig 7, duplicated tokens: MSE(H_max) / MSE(H = 1) <= claims.dup_fraction (0.8);
  (2) Fig 7, at H_max duplicated beats plain: mean(MSE_plain - MSE_dup) / stderr of the paired
      per-sequence difference >= claims.k_beats (3);
  (3) Fig 8: the mass of M between different coordinates of s, ||M_ij (i != j mod d)||_F /
      ||M||_F (`offcoord_ratio`), after training <= claims.offdiag_fraction (0.5) x its value at
      initialisation. The +-d stripes (i, i +- d) pair a coordinate with its own duplicate and
      are left out: W_V's two column halves see the same input, so they get the same gradient
      and a trained M tends to [[N, N], [N, N]], whose stripes equal its diagonal. Sec. 6 names
      them apart ("in addition, as we are duplicating the tokens ... heads become specialized in
      attending to some coordinates across tokens"). The plain off-diagonal mass
      ||offdiag(M)||_F / ||M||_F, the statistic of this claim until 2026-11-26, stays a metric
      (fig8_offdiag_*): it cannot tell Fig 8's pattern from a dense M (0.71 on [[D, D], [D, D]]
      for a diagonal D, 0.64-0.78 at init here), so it could not have passed on the paper's
      own result.
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
The script's model is not bound by that floor: LayerNorm makes it non-polynomial, the biases and
the read-out add affine terms, and with duplicated tokens its hidden width doubles (folding J into
W_Q, W_K, W_V turns a duplicated script model into a plain-token one of width 2d: heads, W_O,
LayerNorm and positions 2d wide), so there duplication adds width, i.e. expressivity, which eq. (6)
with full d x d heads does not need.

Measured (quick, seeds 0 / 1 / 2; 2-core CPU shared with other jobs; CPU = user + sys and peak
RSS from /usr/bin/time -v; stderr of each MSE 0.0014-0.0036):
  eq6 (unchanged by the script's models joining; same numbers as before):
  test MSE, plain H = 1, 4, 16: 0.970 0.971 0.979 / 0.982 0.982 0.970 / 0.984 0.978 0.971
            duplicated:        0.974 0.965 0.946 / 0.967 0.968 0.921 / 0.987 0.958 0.921
  (init ~1.00 plain, 1.01-1.29 duplicated; training is far from converged at 256 steps: the
  floor is ~0.89.)
  (1) MSE_dup(16) / MSE_dup(1) = 0.971 / 0.953 / 0.934: FAILS (<= 0.8); the plain trend
      1.009 / 0.987 / 0.987. Duplicated MSE falls with H and plain does not, as in Fig 7, but
      by 3-7%, not "significantly" (and it cannot, see above).
  (2) z(plain - dup) at H = 16: 19.5 / 24.8 / 19.3: holds (>= 3); at H = 1: -7.3 / 11.5 / -2.2,
      at H = 4: 5.2 / 11.9 / 16.0.
  (3) Fig 8 mass between coordinates 0.635 -> 0.524 / 0.563 -> 0.543 / 0.592 -> 0.607, ratio
      0.825 / 0.964 / 1.026: FAILS (<= 0.5); read-out rows 0.677 -> 0.597 / 0.499 -> 0.578 /
      0.702 -> 0.673. (The plain off-diagonal mass: 0.658 -> 0.573 / 0.645 -> 0.578 / 0.637 ->
      0.630.)
      The trained M is not diagonal: besides the +-d stripes it keeps a uniform positive
      background (Haar W is invariant under rotations fixing 1_d, so nothing singles out the
      coordinate axes; a*I + b*11^T is the symmetric form). At T_max = 20 and 64 epochs
      (seed 0): 0.658 -> 0.577.
  script:
  test MSE, plain H = 1, 4, 16: 0.861 0.842 0.834 / 0.857 0.852 0.828 / 0.862 0.835 0.839
            duplicated:        0.830 0.814 0.752 / 0.831 0.790 0.743 / 0.831 0.801 0.763
  (init 1.17-1.51: the read-out's initial output adds to the zero predictor's error.) Every
  script model beats every eq6 model, at every H, on every seed.
  (1) MSE_dup(16) / MSE_dup(1) = 0.905 / 0.894 / 0.918: FAILS (<= 0.8); the plain trend
      0.969 / 0.966 / 0.973. The direction is Fig 7's (duplicated falls 8-11%, plain 3%), the
      size is not, and longer training alone would not get there at H_max = 16: in the paper
      run below MSE_dup(16) / MSE_dup(1) = 0.817; only H = 64 passes.
  (2) z(plain - dup) at H = 16: 40.0 / 46.4 / 32.9: holds; at H = 1: 32.0 / 26.3 / 29.7, at
      H = 4: 18.0 / 41.1 / 24.8 (duplicated beats plain at every H, the extra width).
  (3) Fig 8 mass between coordinates 0.672 -> 0.595 / 0.699 -> 0.436 / 0.670 -> 0.481, ratio
      0.885 / 0.623 / 0.718: FAILS (<= 0.5). (The plain off-diagonal mass: 0.722 -> 0.715 /
      0.776 -> 0.641 / 0.693 -> 0.621. Fig 8 model MSE at d = 5: 1.35-1.68 -> 0.54.) Trained
      4x longer (--config.train.epochs=64 --config.heads='(1, 2)', seed 0): 0.672 -> 0.580,
      ratio 0.86 (MSE 0.47); eq6's 0.635 -> 0.464, ratio 0.73: falling slowly, still above 0.5.
  cost: 154 / 170 / 164 s CPU (seed 0 warm; seeds 1 and 2 the first runs after a code change,
  partly cold), 95-105 s wall at load ~2, peak RSS 1.1-1.5 GB; eq6 alone was 79-80 s CPU warm,
  100 s cold, so the script's grid adds ~75-85 s. Per step the script's largest model costs about
  what eq6's does (136 vs 135 ms CPU for the loss + gradient of duplicated H = 16 at batch 128,
  `ar_script.mean_loss`); its whole grid trains at ~4.8 steps/s against eq6's ~6.4 (wall).
  smoke (both architectures): ~8 s CPU warm, ~20 s cold (every program is kept in the
  compilation cache, as in augmented_gd; the same at the tests' -O0).

Paper preset (config :paper, heads 1..64, 2^14 sequences, 200 epochs of batch 1024, Fig 8 with 64
heads; seed 0; one NVIDIA H100, float32 at JAX's default matmul precision, which may use TF32
there; one architecture per run): script 200.6 s, eq6 159.6 s, compilation included.
  script: MSE plain H = 1, 2, 4, 8, 16, 32, 64: 0.852 0.833 0.778 0.762 0.739 0.732 0.730
          duplicated:                          0.823 0.771 0.724 0.706 0.673 0.654 0.643
    (1) 0.643 / 0.823 = 0.781: holds (<= 0.8; H = 16 alone: 0.817); the plain trend 0.857 (the
        paper: "no significant gain"; here plain gains 14%). (2) z = 54.8 at H = 64: holds.
    (3) (measured with the plain off-diagonal mass, before the claim left out the stripes)
        offdiag mass 0.717 -> 0.875, ratio 1.22 (it grows); the mass between coordinates was
        not measured at this preset.
  eq6:    MSE plain: 0.973 0.959 0.975 0.920 0.936 0.953 0.951
          duplicated: 0.963 0.960 0.907 0.950 0.889 0.977 0.885
    (1) 0.919: FAILS. (2) z = 26.6 at H = 64: holds (but -20.6 at H = 8 and -19.2 at H = 32:
    duplicated worse; the loss spikes late at lr 1e-2). (3) plain off-diagonal mass 0.625 ->
    0.506, ratio 0.81 (the mass between coordinates not measured at this preset).
So the authors' architecture reproduces Fig 7's first claim at the paper's scale and eq. (6)
does not; Fig 8's orthogonality was not reproduced at quick by either, and at the paper preset
only the plain off-diagonal statistic (which cannot show it) was measured.
"""

import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import common, registry
from icl_jax import distributed, metrics, plotting, results, training
from icl_jax.models import ar_attention as ar
from icl_jax.models import ar_script
from icl_jax.samplers import autoregressive as ar_sampler

EXPERIMENT = 'autoregressive/heads_and_duplication'
PAPER = registry.PAPERS['autoregressive']
ENCODINGS = ('plain', 'duplicated')
CONTEXTS = ('orthogonal', 'orthogonal_commuting')
# The two architectures: eq. (6) as the paper writes it, and the authors' script's model
# (`ar_script`). Evidence, metric, array and figure names of 'eq6' carry no prefix (the names this
# app had before it trained the script's model); those of 'script' start with 'script_'.
ARCHS = ('eq6', 'script')
ARCH_LABELS = {'eq6': 'eq. (6)', 'script': "authors' script"}
B_H = {'eq6': 'W_O^h W_V^h', 'script': 'W_O W_V^h'}   # Fig 8's B_h (see `head_gram`)


def prefix(arch: str) -> str:
  """The name prefix of an architecture's evidence, metrics, arrays and figures."""
  return '' if arch == 'eq6' else f'{arch}_'


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
  archs = config.model.archs
  if (not isinstance(archs, (tuple, list)) or not archs or len(set(archs)) != len(archs)
      or any(a not in ARCHS for a in archs)):
    raise common.ConfigError(f'config.model.archs={archs!r}: must be a non-empty tuple of '
                             f'distinct values from {", ".join(ARCHS)}')
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
  common.multiple_of_devices(config, 'train.batch_size')   # sharded over every device
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


def _pos_dim(config):
  return config.model.pos_dim or None


def sequences(key: jax.Array, context: str, d: int, t_max: int, num: int) -> jax.Array:
  """[num, T_max + 1, d] real sequences, one context W per sequence."""
  return ar_sampler.sequences(key, context, d, t_max, num, real=context == 'orthogonal_commuting')


def datasets(key: jax.Array, config, d: int):
  """(train [num_train, T_max + 1, d], test [num_test, ...]): one batched sampler call (one
  batched QR for Haar W; two concurrent ones can deadlock XLA's CPU LAPACK, DESIGN.md)."""
  dc = config.data
  both = sequences(key, dc.context, d, dc.t_max, dc.num_train + dc.num_test)
  return both[:dc.num_train], both[dc.num_train:]


def init_grid(key: jax.Array, config, arch: str = 'eq6') -> tuple:
  """One draw per (encoding, H) of `grid`, keys fold_in(key, index): `ar.init_standard`
  (eq6) or `ar_script.init` (script: PyTorch's default initialisation)."""
  dc = config.data
  if arch == 'script':
    return tuple(ar_script.init(jax.random.fold_in(key, i), dc.d, h, dc.t_max, encoding=enc)
                 for i, (enc, h) in enumerate(grid(config)))
  return tuple(
      ar.init_standard(jax.random.fold_in(key, i), ar_script.token_width(dc.d, enc), h,
                       dc.t_max, scale=config.model.init_scale, positional='softmax',
                       pos_dim=_pos_dim(config))
      for i, (enc, h) in enumerate(grid(config)))


def init_near_equal(key: jax.Array, config, arch: str = 'eq6'):
  """Fig 8's initialisation: one head's W_Q, W_K, W_V, W_O (eq6; the script: W_Q, W_K, W_V and
  their biases, `ar_script.init_near_equal`) copied to every head, plus fig8.noise x N(0, 1) per
  head and entry; the shared parts (eq6: the positional softmax) as drawn."""
  fc = config.fig8
  if arch == 'script':
    return ar_script.init_near_equal(key, fc.d, fc.heads, config.data.t_max, noise=fc.noise)
  k_one, k_noise = jax.random.split(key)
  one = ar.init_standard(k_one, 2 * fc.d, 1, config.data.t_max, scale=fc.init_scale,
                         positional='softmax', pos_dim=_pos_dim(config))
  keys = jax.random.split(k_noise, 4)

  def spread(w, k):
    return jnp.repeat(w, fc.heads, axis=0) + fc.noise * jax.random.normal(
        k, (fc.heads,) + w.shape[1:], w.dtype)

  return one._replace(w_q=spread(one.w_q, keys[0]), w_k=spread(one.w_k, keys[1]),
                      w_v=spread(one.w_v, keys[2]), w_o=spread(one.w_o, keys[3]))


def head_gram(params, rows=None) -> jax.Array:
  """M = sum_h B_h^T B_h: [D, D]. B_h = W_O^h W_V^h for eq. (6), W_O W_V^h (the shared output
  map, `ar_script.value_output`) for the script's model; rows `rows` of B_h when given."""
  if isinstance(params, ar_script.ScriptParams):
    b_HxDxD = ar_script.value_output(params)
  else:
    b_HxDxD = jnp.einsum('hik,hkj->hij', params.w_o, params.w_v)
  if rows is not None:
    b_HxDxD = b_HxDxD[:, :rows]
  return jnp.einsum('hki,hkj->ij', b_HxDxD, b_HxDxD)


def offdiag_ratio(m) -> float:
  """||offdiag(M)||_F / ||M||_F."""
  m = np.asarray(m, np.float64)
  return float(np.linalg.norm(m - np.diag(np.diag(m))) / np.linalg.norm(m))


def offcoord_ratio(m, d: int) -> float:
  """||M_ij for i != j mod d||_F / ||M||_F of a [2d, 2d] M over duplicated tokens (s, s): the
  mass between different coordinates of s (Fig 8's orthogonality between heads), with the
  diagonal and the +-d stripes (a coordinate and its duplicate) left out."""
  m = np.asarray(m, np.float64)
  idx = np.arange(m.shape[0]) % d
  return float(np.linalg.norm(m[idx[:, None] != idx[None, :]]) / np.linalg.norm(m))


def as_plain(params: ar.StandardParams, d: int) -> ar.StandardParams:
  """The plain-token model equal to a duplicated-token one: W' = W J, J = [I_d; I_d] (inputs),
  W_O' = W_O[:d] (outputs); head width unchanged (2d)."""
  fold = lambda w: w[..., :d] + w[..., d:]
  return params._replace(w_q=fold(params.w_q), w_k=fold(params.w_k), w_v=fold(params.w_v),
                         w_o=params.w_o[:, :d])


def _loss(params, s_Tp1xD: jax.Array, encoding: str) -> jax.Array:
  """Loss (3) of one sequence under either architecture (chosen by the params' type)."""
  if isinstance(params, ar_script.ScriptParams):
    return ar_script.loss(params, s_Tp1xD, encoding=encoding)
  return ar.loss(params, s_Tp1xD, encoding=encoding)


def _mean_loss(params, s_BxTp1xD: jax.Array, encoding: str) -> jax.Array:
  """Loss (3) averaged over a batch, the training loss of either architecture."""
  if isinstance(params, ar_script.ScriptParams):
    return ar_script.mean_loss(params, s_BxTp1xD, encoding=encoding)
  return ar.mean_loss(params, s_BxTp1xD, encoding=encoding)


def per_sequence_mse(params, s_NxTp1xD: jax.Array, encoding: str, chunk: int) -> jax.Array:
  """Loss (3) / ((T_max - 1) d) of each sequence: [N]."""
  t_max, d = s_NxTp1xD.shape[1] - 1, s_NxTp1xD.shape[2]
  one = lambda s: _loss(params, s, encoding) / ((t_max - 1) * d)
  return jax.lax.map(one, s_NxTp1xD, batch_size=chunk)


# --- training ------------------------------------------------------------------------------------

def train(config, workdir: str, key: jax.Array, params: dict, train7, train8, arch: str = 'eq6',
          mesh: Optional[jax.sharding.Mesh] = None):
  """Every model of one architecture (params {'fig7': tuple[, 'fig8': params]}) as one program.

  Each epoch's order of each training set is drawn once per epoch (fit's sample_fn with
  resample_every = steps per epoch); step s takes the (s mod per_epoch)-th batch of it, split
  over `mesh` (`distributed.shard_batch`). Both architectures get the same key, hence the same
  batches; the script's checkpoints live in workdir/script/checkpoints.
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
    batch7 = distributed.shard_batch(jax.lax.dynamic_slice_in_dim(epoch['fig7'], start, b), mesh)
    total = sum(_mean_loss(pm, batch7, enc) for pm, (enc, _) in zip(p['fig7'], models))
    if 'fig8' in p:
      batch8 = distributed.shard_batch(jax.lax.dynamic_slice_in_dim(epoch['fig8'], start, b),
                                       mesh)
      total = total + _mean_loss(p['fig8'], batch8, 'duplicated')
    return total

  logging.info('%s: training %d models (%s) %sas one program: %d sequences, %d epochs of %d '
               'steps, Adam lr %g', ARCH_LABELS[arch], len(models),
               ', '.join(f'{e} H={h}' for e, h in models),
               '+ the Fig 8 model ' if 'fig8' in params else '', num, tc.epochs,
               per_epoch, tc.lr)
  ckpt_dir = workdir if arch == 'eq6' else os.path.join(workdir, arch)
  return training.fit(loss_fn, params, optax.adam(tc.lr), key=key,
                      max_steps=tc.epochs * per_epoch, log_every=tc.log_every_epochs * per_epoch,
                      ckpt_every=tc.ckpt_every_epochs * per_epoch, workdir=ckpt_dir,
                      keep_trajectory=False, pass_step=True, sample_fn=epoch_order,
                      resample_every=per_epoch, mesh=mesh)


# --- measure / check / run -----------------------------------------------------------------------

def _evaluate_fn(config, arch: str):
  """The jitted evaluation of one architecture's initial and trained models (params stacked on a
  leading axis of 2): per-sequence test MSE, the positional attention of each Fig 7 model (eq6:
  P [T_max, T_max]; script: P^h [H, T_max, T_max]), the Fig 8 Gram matrices, and (eq6) each
  duplicated model against its plain equivalent (`as_plain`) on one chunk of test sequences
  (max |difference| / max |prediction|)."""
  models = grid(config)
  chunk, d, fc = config.eval.chunk, config.data.d, config.fig8

  def one(p, test7, test8):
    out = {'mse': jnp.stack([per_sequence_mse(pm, test7, enc, chunk)
                             for pm, (enc, _) in zip(p['fig7'], models)])}
    if arch == 'eq6':
      s = test7[:chunk]
      diffs = []
      for pm, (enc, _) in zip(p['fig7'], models):
        if enc == 'duplicated':
          dup = jax.vmap(lambda x, pm=pm: ar.predict_all(pm, x, encoding='duplicated'))(s)
          pla = jax.vmap(lambda x, pm=pm: ar.predict_all(as_plain(pm, d), x,
                                                         encoding='plain'))(s)
          diffs.append(jnp.max(jnp.abs(dup - pla)) / jnp.max(jnp.abs(dup)))
      out['dup_as_plain'] = jnp.max(jnp.stack(diffs))
    out['P'] = tuple(ar_script.positional_attention(pm, config.data.t_max) if arch == 'script'
                     else ar.positional_matrix(pm.p) for pm in p['fig7'])
    if 'fig8' in p:
      out['mse8'] = per_sequence_mse(p['fig8'], test8, 'duplicated', chunk)
      out['m'] = head_gram(p['fig8'])
      if arch == 'eq6':   # the script reads all of W_O's rows (LayerNorm, then its read-out)
        out['m_readout'] = head_gram(p['fig8'], fc.d)
    return out

  return jax.jit(lambda p_2, test7, test8: jax.vmap(lambda p: one(p, test7, test8))(p_2))


def measure(config, workdir):
  key = common.jax_key(config)
  # Keys 0-4 as before the script's model joined (the eq6 numbers are unchanged by it); the
  # script's inits take 5 and 6; both architectures train on the same batches (k_train).
  k_data7, k_data8, k_init7, k_init8, k_train, k_init7_script, k_init8_script = (
      jax.random.fold_in(key, i) for i in range(7))
  del key
  init_keys = {'eq6': (k_init7, k_init8), 'script': (k_init7_script, k_init8_script)}
  dc, fc = config.data, config.fig8
  train7, test7 = jax.jit(lambda k: datasets(k, config, dc.d))(k_data7)
  train8 = test8 = None
  if fc.enabled:
    train8, test8 = jax.jit(lambda k: datasets(k, config, fc.d))(k_data8)

  measured, aux = {}, {'params': {}, 'hist': {}, 'P': {}}
  mesh = distributed.data_mesh()   # training batches split over every device
  for arch in config.model.archs:
    def init(k7, k8, arch=arch):
      out = {'fig7': init_grid(k7, config, arch)}
      if fc.enabled:
        out['fig8'] = init_near_equal(k8, config, arch)
      return out

    params0 = jax.jit(init)(*init_keys[arch])
    params, hist = train(config, workdir, k_train, params0, train7, train8, arch, mesh)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params0, params)
    ev = jax.tree.map(lambda a: np.asarray(a, np.float64),
                      _evaluate_fn(config, arch)(stacked, test7, test8))
    p = prefix(arch)
    measured.update({f'{p}mse': ev['mse'][1], f'{p}mse_init': ev['mse'][0].mean(axis=1),
                     f'{p}train_loss_final': float(hist.loss[-1])})
    if fc.enabled:
      measured.update({f'{p}fig8_m_init': ev['m'][0], f'{p}fig8_m': ev['m'][1],
                       f'{p}fig8_mse_init': float(np.mean(ev['mse8'][0])),
                       f'{p}fig8_mse': float(np.mean(ev['mse8'][1]))})
      if 'm_readout' in ev:
        measured.update({f'{p}fig8_m_readout_init': ev['m_readout'][0],
                         f'{p}fig8_m_readout': ev['m_readout'][1]})
    if 'dup_as_plain' in ev:
      aux['dup_as_plain_max_abs_diff'] = float(ev['dup_as_plain'][1])
    aux['params'][arch], aux['hist'][arch], aux['P'][arch] = params, hist, ev['P']
  # Predicting 0 has MSE ||s_{T+1}||^2 / d = 1 exactly (W orthogonal, s_1 = 1_d).
  theory = {'mse_zero_predictor': 1.0}
  return results.Evidence(measured=measured, theory=theory), aux


def _check_arch(config, mv, zero: float, arch: str):
  """One architecture's three claims and its metrics (names with `prefix(arch)`)."""
  cl, p, label = config.claims, prefix(arch), ARCH_LABELS[arch]
  heads = list(config.heads)
  mse = np.asarray(mv[f'{p}mse'], np.float64)
  idx = {m: i for i, m in enumerate(grid(config))}
  h1, hmax = heads[0], heads[-1]
  claims, met = [], {}
  for (enc, h), i in idx.items():
    mean, se = map(float, metrics.mean_stderr(mse[i]))
    met[f'{p}mse_{enc}_H{h}'] = mean
    met[f'{p}mse_se_{enc}_H{h}'] = se
    met[f'{p}mse_init_{enc}_H{h}'] = float(np.asarray(mv[f'{p}mse_init'])[i])
    met[f'{p}mse_over_zero_predictor_{enc}_H{h}'] = mean / zero
  for h in heads:
    diff = mse[idx[('plain', h)]] - mse[idx[('duplicated', h)]]
    mean, se = map(float, metrics.mean_stderr(diff))
    met[f'{p}z_plain_minus_dup_H{h}'] = mean / se if se > 0 else float('nan')
  for enc in ENCODINGS:
    met[f'{p}trend_{enc}'] = met[f'{p}mse_{enc}_H{hmax}'] / met[f'{p}mse_{enc}_H{h1}']

  claims.append(results.Claim(
      f'Fig 7, {label}: with duplicated tokens the test MSE falls as heads grow: MSE(H = {hmax}) '
      f'/ MSE(H = {h1}) <= {cl.dup_fraction:g} (Sec. 6: a "significant improvement"; the '
      f'plain-token trend is a metric)', met[f'{p}trend_duplicated'], cl.dup_fraction, 0.0,
      'at_most'))
  claims.append(results.Claim(
      f'Fig 7, {label}: duplicated tokens beat plain ones at H = {hmax}: mean(MSE_plain - '
      f'MSE_dup) / stderr of the paired per-sequence difference >= {cl.k_beats:g}',
      met[f'{p}z_plain_minus_dup_H{hmax}'], cl.k_beats, 0.0, 'at_least'))
  if f'{p}fig8_m' in mv:
    d8 = config.fig8.d
    for stat, fn in (('offdiag', offdiag_ratio), ('offcoord', lambda m: offcoord_ratio(m, d8))):
      met[f'{p}fig8_{stat}_init'] = fn(mv[f'{p}fig8_m_init'])
      met[f'{p}fig8_{stat}_trained'] = fn(mv[f'{p}fig8_m'])
      if f'{p}fig8_m_readout' in mv:
        met[f'{p}fig8_{stat}_readout_init'] = fn(mv[f'{p}fig8_m_readout_init'])
        met[f'{p}fig8_{stat}_readout_trained'] = fn(mv[f'{p}fig8_m_readout'])
    before, after = met[f'{p}fig8_offcoord_init'], met[f'{p}fig8_offcoord_trained']
    met[f'{p}fig8_mse_init'] = float(mv[f'{p}fig8_mse_init'])
    met[f'{p}fig8_mse'] = float(mv[f'{p}fig8_mse'])
    claims.append(results.Claim(
        f'Fig 8, {label}: heads become orthogonal: ||M_ij (i != j mod d)||_F / ||M||_F of M = '
        f'sum_h B_h^T B_h (B_h = {B_H[arch]}; {config.fig8.heads} heads, d = {d8}, M is 2d x 2d; '
        f'the diagonal and the +-d stripes of the duplicates left out) after training / at init '
        f'<= {cl.offdiag_fraction:g}',
        after / before if before > 0 else math.inf, cl.offdiag_fraction, 0.0, 'at_most'))
  met[f'{p}train_loss_final'] = float(mv[f'{p}train_loss_final'])
  return claims, met


def check(config, ev):
  zero = float(np.asarray(ev.theory['mse_zero_predictor']))
  claims, met = [], {}
  for arch in config.model.archs:
    c, m = _check_arch(config, ev.measured, zero, arch)
    claims += c
    met.update(m)
  return claims, met


def figures(config, ev, hists) -> dict:
  heads = np.asarray(config.heads)
  models = grid(config)
  dc, mv = config.data, ev.measured
  zero = float(np.asarray(ev.theory['mse_zero_predictor']))
  curves, bands, hlines = {}, {}, {}
  for arch in config.model.archs:
    mse = np.asarray(mv[f'{prefix(arch)}mse'], np.float64)
    panel = f'{ARCH_LABELS[arch]} (bands: +-2 stderr)'
    curves[panel], bands[panel], hlines[panel] = {}, {}, {'predict 0': zero}
    for enc in ENCODINGS:
      rows = [i for i, (e, _) in enumerate(models) if e == enc]
      label = {'plain': 'plain e_t = s_t', 'duplicated': 'duplicated e_t = (s_t, s_t)'}[enc]
      y, se = metrics.mean_stderr(mse[rows], axis=1)
      curves[panel][label], bands[panel][label] = y, (y - 2 * se, y + 2 * se)
  # One y range for both panels, so the architectures compare by eye.
  low = min(float(np.min(b[0])) for bp in bands.values() for b in bp.values())
  high = max(zero, max(float(np.max(b[1])) for bp in bands.values() for b in bp.values()))
  fig7 = plotting.panels(heads, curves, bands=bands, hlines=hlines, xlabel='number of heads H',
                         ylabel='test MSE (predict 0: 1)', logy=True,
                         ylim=(0.97 * low, 1.03 * high),
                         title=f'Fig 7: Haar orthogonal W, d = {dc.d}, T_max = {dc.t_max}')
  for ax in fig7.axes:
    ax.set_xscale('log')
  out = {'figure7.png': fig7}
  scaled = lambda m: np.asarray(m) / np.abs(np.asarray(m)).max()
  for arch in config.model.archs:
    p = prefix(arch)
    if f'{p}fig8_m' not in mv:
      continue
    mats = {'init': scaled(mv[f'{p}fig8_m_init']), 'trained': scaled(mv[f'{p}fig8_m'])}
    if f'{p}fig8_m_readout' in mv:
      mats.update({'init, read-out rows': scaled(mv[f'{p}fig8_m_readout_init']),
                   'trained, read-out rows': scaled(mv[f'{p}fig8_m_readout'])})
    out[f'{p}figure8.png'] = plotting.heatmaps(
        mats, title=f'Fig 8, {ARCH_LABELS[arch]}: sum_h B_h^T B_h, B_h = {B_H[arch]} (d = '
                    f'{config.fig8.d}, duplicated, {config.fig8.heads} heads), each / its max '
                    '|entry|')
  n = max(len(h.loss) for h in hists.values())
  out['train_loss.png'] = plotting.curves(
      np.arange(1, n + 1), {ARCH_LABELS[a]: h.loss for a, h in hists.items()},
      xs={ARCH_LABELS[a]: np.arange(1, len(h.loss) + 1) for a, h in hists.items()},
      xlabel='step', ylabel='training loss (3), summed over the models', logy=True,
      title='Training (per architecture: all models one program, Adam)')
  return out


def run(config, workdir) -> results.Run:
  if jax.config.jax_compilation_cache_dir:
    # Keep every program in the persistent cache, not only those compiling in over 1 s (JAX's
    # default), as augmented_gd does: at the tests' -O0 the smoke run's programs compile in
    # 0.1-0.9 s each and were compiled again on every run.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  evidence, aux = measure(config, workdir)
  claims, met = check(config, evidence)
  if 'dup_as_plain_max_abs_diff' in aux:
    met['dup_as_plain_max_abs_diff'] = aux['dup_as_plain_max_abs_diff']
  mv = evidence.measured
  arrays = {'heads': np.asarray(config.heads)}
  for arch in config.model.archs:
    p = prefix(arch)
    mse = np.asarray(mv[f'{p}mse'])
    arrays.update({f'{p}mse': mse, f'{p}mse_mean': mse.mean(axis=1),
                   f'{p}mse_init': mv[f'{p}mse_init'], f'{p}train_loss': aux['hist'][arch].loss})
    for key in ('fig8_m_init', 'fig8_m', 'fig8_m_readout_init', 'fig8_m_readout'):
      if f'{p}{key}' in mv:
        arrays[f'{p}{key}'] = mv[f'{p}{key}']
    params = aux['params'][arch]
    for pm, p_trained, (enc, h) in zip(params['fig7'], aux['P'][arch], grid(config)):
      for field, value in pm._asdict().items():
        if field != 'p':
          arrays[f'{p}params_{enc}_H{h}_{field}'] = np.asarray(value)
      arrays[f'{p}params_{enc}_H{h}_P'] = p_trained[1]
    if 'fig8' in params:
      for field, value in params['fig8']._asdict().items():
        if field != 'p':
          arrays[f'{p}params_fig8_{field}'] = np.asarray(value)
  return results.Run(metrics=met, claims=claims, arrays=arrays,
                     figures=figures(config, evidence, aux['hist']), evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=PAPER, reproduces='Sec 6, Figs 7 and 8')
