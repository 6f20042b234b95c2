"""Config: augmented tokens and gradient descent, Prop 2 and Figs 5, 10 of Sander et al. (2024).

  python -m experiments.autoregressive.augmented_gd \
      --config=experiments/autoregressive/configs/augmented_gd.py:quick \
      --workdir=/tmp/augmented_gd

(a) one layer of eq. (4) under Assumption 2 trained on unitary contexts against Prop 2's optimum;
(b) L layers of eq. (4) with LayerNorm (Sec 6, Fig 5) and (c) GPT2-style softmax + MLP
transformers (App. B, Fig 10) on non-commuting orthogonal contexts, against L tuned steps of
gradient descent on the inner loss (5). See the app's docstring.

Runtime: see RUNTIME below (filled in from measured runs).
"""

from ml_collections import config_dict

from experiments import common

RUNTIME = """
Measured on the 2-core development CPU shared with three other jobs (CPU = user + sys, peak RSS
from /usr/bin/time -v; wall times inflated by the other jobs, load 3-5):
  smoke  ~9 s CPU warm (persistent compilation cache), 0.5 GB; ~15 s CPU cold.
  quick  seeds 0 / 1 / 2: 147 / 152 / 152 s CPU, 134 / 137 / 175 s run (wall), 1.0-1.13 GB
         (~105-110 s idle wall estimated): (a) ~8 s, GD grid + test ~4 s, the stack 1024 steps
         ~60 s (0.055 s a step), the full transformer 384 steps ~65 s (0.17 s a step).
  paper  not run here (2000 epochs of 2^14 sequences at batch 1024 for 6 + 6 models, 32000 steps
         each: an accelerator's job).
Claims at quick, seeds 0 / 1 / 2: 16 / 16 / 15 of 18 hold. Fails: the Fig 5 ratio (stack / GD
>= 10 for L = 4, 6: measured 0.72, 0.95 / 0.55, 0.84 / 0.39, 2.14; it cannot hold, see the app),
and on seed 2 the per-prefix GD 'beats' claim at L = 4 (the stack is better there, z = -13.6).
"""


def _base():
  config = common.base_config()
  config.seed = 0              # data, initialisations and epoch orders derive from it
  config.d = 5                 # d: dimension of s_t (Sec 6, Fig 5: d = 5, tokens in R^{3d})
  config.t_max = 50            # T_max (Sec 6: 50): loss (3) sums the prefixes T = 2..T_max
  # (a) Prop 2: one layer of eq. (4), Assumption 2 (a = (a1..a4), b = (b1, b2), real), unitary
  # contexts C_U (Assumption 1), tokens e_t = (0, s_t, s_{t-1}) with s_0 = 0. Adam on fresh
  # sequences every step (the population loss (3)), a cosine-decayed step size.
  config.one_layer = config_dict.ConfigDict({
      'batch_size': 128,       # sequences per step
      'steps': 600,
      'lr': 1e-2,              # Adam peak step (cosine decay to 0)
      'init_scale': 0.1,       # a, b ~ N(0, scale^2) (ar_attention.init_assumption2)
      'num_test': 1024,        # test sequences: losses, and predictions vs one GD step
      'log_every': 50,
      'ckpt_every': 300,
  })
  # (b) and (c): the training set of Sec 6 (non-commuting orthogonal contexts, Haar on O(d),
  # s_1 = 1_d), trained in epochs with Adam (training.epoch_batch); the test set is fresh.
  config.data = config_dict.ConfigDict({
      'num_train': 2**12,      # training sequences, a fixed set (Sec 6: 2^14)
      'num_test': 2**10,       # test sequences (Sec 6: 2^10)
  })
  config.train = config_dict.ConfigDict({
      'batch_size': 128,       # sequences per Adam step; num_train must be a multiple
      'schedule': 'constant',  # Adam's step: 'constant' (Sec 6) or 'cosine' decay to 0
      'log_every_epochs': 4,   # linear.epochs and full.epochs must be multiples
      'ckpt_every_epochs': 16,
  })
  # (b) Fig 5: L layers of eq. (4) on all 3d coordinates, full A_l, B_l, LayerNorm ('branch':
  # e <- e + LN(attention(e)), the authors' placement; ar_attention.deep_all).
  config.linear = config_dict.ConfigDict({
      'depths': (1, 2, 4, 6),  # L (Sec 6: 1..6); quick thins it but keeps L > 3
      'norm': 'branch',        # ar_attention.NORMS
      'epochs': 32,            # Sec 6: 2000
      'lr': 5e-3,              # Adam (Sec 6: 5e-3)
      'init_scale': 0.1,       # A_l, B_l ~ N(0, scale^2)
  })
  # (c) Fig 10: read-in R^{3d} -> R^width, the GPT2 blocks of icl_jax.models.transformer
  # (pre-LN causal softmax attention + GELU MLP of width 4 x width, final LayerNorm), read-out
  # to R^d, on the same augmented tokens; trained like (b).
  config.full = config_dict.ConfigDict({
      'depths': (1, 2, 4, 6),  # L of Fig 10 (1..6)
      'width': 16,             # residual width (the tokens have 3d = 15 coordinates)
      'heads': 2,
      'positions': 'none',     # transformer.POSITIONS; eq. (4) has no positional encoding
                               # ("the relative position is already stored in each token")
      'epochs': 12,            # App. B: as (b), 2000; quick: 3.5x the CPU of (b) per step
      'lr': 3e-3,              # Adam (Sec 6 / App. B: 5e-3)
  })
  # GD baseline: L steps of GD on the inner loss (5) from W_0 = 0 (estimators.ar_gd), one step
  # size per L tuned on num_tune training sequences for the lowest MSE ("a step size carefully
  # chosen to obtain the fastest decrease", Sec 6) over a geometric grid of num_etas points in
  # [eta_min, eta_max]. With s_1 = 1_d the tuned steps are ~0.010-0.015 (|s_t|^2 = d).
  config.gd = config_dict.ConfigDict({
      'eta_min': 1e-3,
      'eta_max': 1e-1,
      'num_etas': 49,          # ratio 1.10 between neighbours
      'num_tune': 2048,        # training sequences used for the grid search
  })
  # Tolerances, fixed before the runs. MSE = loss (3) / (T_max - 1): the mean over prefixes
  # T = 2..T_max and sequences of |prediction - s_{T+1}|^2 (the zero predictor's is d).
  config.claims = config_dict.ConfigDict({
      # (a) the issue's 2%: learned a3 b1 vs Prop 2's optimum for s_0 = 0 tokens.
      'a3b1_rel_tol': 0.02,
      # (a) a2 -> 0: |a2| / |a3|. a2's features X_{1,beta} in loss (9) are uncorrelated with
      # the optimum's X_{-1,0} (E[X_{a,b} conj X_{a',b'}] = 0 unless a - a' = b - b', App. A.3),
      # so the loss pulls a2 to 0 at its full curvature; measured 0.0003-0.005 (quick, seeds
      # 0-2), 0.002 (smoke).
      'a2_tol': 0.05,
      # (a) a1 + a4 -> 0 and b2 -> 0: |a1 + a4| / |a3| and |b2| / |b1|. The features of
      # c_{0,0} = (a1 + a4) b1 and c_{-1,-1} = a3 b2 are the same sums shifted by one token,
      # nearly collinear: along c_{0,0} + c_{-1,-1} = 0 a relative deviation delta raises loss
      # (3) by only ~0.15 delta^2 % (measured: +0.11% at delta ~ 0.13, against +4% for each
      # alone), so Adam's noise can leave delta ~ 0.1 there: measured 0.001-0.03 at quick
      # (seeds 0-2) and up to 0.14 in trial runs at other steps and inits; 0.3 is twice that.
      'flat_tol': 0.3,
      # (a) ... while their sum, the only direction the loss sees at first order, is tight:
      # |c_{0,0} + c_{-1,-1}| / |c_{-1,0}| (measured 0.001-0.006 at quick, up to 0.02 in trials).
      'flat_sum_tol': 0.05,
      # (a) "it equals one GD step": ||pred - GD_1(eta = learned a3 b1)|| / ||GD_1|| over the
      # test predictions. The flat-direction coefficients above move predictions by a few %
      # (measured 0.6-0.9% at quick, 1.2% at smoke, up to 2% in trials); a 10% error in the step
      # gives 10%.
      'gd_step_rel_tol': 0.05,
      # (a) the trained loss reaches Prop 2's minimum: (L_trained - L_Prop2) / L_Prop2 on the
      # same test sequences within loss_margin + k_se x stderr of the paired difference
      # (measured -0.003% to +0.03% at quick, +0.07% in trials: Adam's noise in the flat
      # direction).
      'loss_margin': 0.01,
      'k_se': 3.0,             # Monte-Carlo claims: this many stderr (one-sided p ~ 0.1%)
      # (b) Fig 5 as the issue states it: for every L > 3, MSE(linear stack) / MSE(L-step GD)
      # >= gd_wins_factor ("GD outperforms the Transformer by orders of magnitude when L > 3").
      'gd_wins_factor': 10.0,
      # (b) "the first Transformer layers are competitive with gradient descent": for L <= 3,
      # MSE(linear stack) <= competitive_factor x MSE(L-step GD) (a factor 2, well inside the
      # order of magnitude the paper's comparisons are made in).
      'competitive_factor': 2.0,
      # "Beats" (one-sided, paired per-sequence differences on the same test sequences):
      # (b) without the factor, for L > 3: (MSE(stack) - MSE(GD, step per prefix)) / stderr
      # >= k_beats; (c) Fig 10, "outperforms gradient descent": (MSE(GD) - MSE(full)) / stderr
      # >= k_beats for every L of config.full.depths (3 stderr: a 0.1% chance of a false pass
      # from test-set noise).
      'k_beats': 3.0,
  })
  return config


_PRESETS = {
    # Smoke: every part on a small scale (the tests run it); T_max 20 keeps the deep models'
    # and the transformer's programs small. Its claims hold except the Fig 5 ratio, which
    # fails here too (see the tests).
    'smoke': {'t_max': 20, 'one_layer.steps': 300, 'one_layer.batch_size': 64,
              'one_layer.num_test': 256, 'one_layer.ckpt_every': 300,
              'data.num_train': 512, 'data.num_test': 256, 'train.batch_size': 64,
              'linear.epochs': 20, 'full.epochs': 20, 'train.log_every_epochs': 10,
              'train.ckpt_every_epochs': 20,
              'linear.depths': (1, 4), 'full.depths': (1,),
              'gd.num_tune': 256, 'gd.num_etas': 25},
    'quick': {},
    # Sec 6 (augmented setting) and App. B: 2^14 training and 2^10 test sequences, Adam at
    # 5e-3 (constant), 2000 epochs, L = 1..6, batch 1024 (the authors' augmented.py default).
    'paper': {'data.num_train': 2**14, 'data.num_test': 2**10, 'train.batch_size': 1024,
              'linear.epochs': 2000, 'full.epochs': 2000, 'train.log_every_epochs': 10,
              'train.ckpt_every_epochs': 100, 'linear.depths': (1, 2, 3, 4, 5, 6),
              'full.depths': (1, 2, 3, 4, 5, 6), 'full.lr': 5e-3,
              'one_layer.steps': 5000, 'one_layer.batch_size': 1024, 'one_layer.num_test': 4096,
              'one_layer.log_every': 500, 'one_layer.ckpt_every': 2500, 'gd.num_tune': 2**14},
}


def get_config(arg=None):
  return common.get_preset(arg, _base, _PRESETS)
