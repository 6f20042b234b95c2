"""Config: the geometric in-context mapping of the diagonal multi-head model (6) — Props 3, 4, 6,
Lemma 3 and Fig 3 of Sander et al. (2024).

Model (6) under Assumption 3 (A^h, B^h diagonal, a free positional matrix P), trained by Adam on
loss (3) from random initialisations, on unitary contexts (H = 10 heads) and on orthogonal
(commuting, conjugate-pair) contexts (H = 8 < d heads), d = 10, T_max = 15; see the app's
docstring for the claims.

  python -m experiments.autoregressive.geometric_heads \
      --config=experiments/autoregressive/configs/geometric_heads.py:quick \
      --workdir=/tmp/geometric_heads

Runtime (results.json runtime_s; CPU = user + sys and peak RSS from /usr/bin/time -v), on the
2-core CPU shared with three other jobs (load ~6):
  smoke  ~8.5 s CPU, 0.47 GB (d = 4, T_max = 6; compilation is most of it)
  quick  38-43 s run, 30 s CPU, 1.08 GB (seeds 0-2; the measured numbers are in the app's
         docstring)
  paper  not run here (2^14 training sequences in epochs, 8 restarts per case, 12800 steps each).
"""

from ml_collections import config_dict

from experiments import common


def _base():
  config = common.base_config()
  config.seed = 0                     # every key (inits, sequences, random parameters) from it
  config.d = 10                       # dimension d of s_t (Fig 3: d = 10)
  config.t_max = 15                   # T_max (Fig 3's T = 15): prefixes T = 2..15, P [15, 15]
  # Unitary contexts C_U ('unitary' sampler kind): H >= d heads are needed for zero loss
  # (Prop 3); Fig 3 (left) uses H = d = 10.
  config.unitary = config_dict.ConfigDict({
      'heads': 10,
      'restarts': 4,                  # independent random inits trained side by side
      'steps': 800,                   # Adam steps (the loss is at float32 rounding by ~400)
  })
  # Orthogonal commuting contexts C_O ('orthogonal_commuting': conjugate pairs
  # (l_1, conj l_1, ...)), d/2 <= H < d heads: C = B^T A has rank <= H < d, the regime of
  # Lemma 3 and Prop 6's rank-d/2 solution; Fig 3 (right) uses H = 8.
  config.orthogonal = config_dict.ConfigDict({
      'heads': 8,
      # From random inits, Adam ends in the Lemma 3 basin for about two thirds of them (11/16
      # and 9/16 with the quick settings on the exact loss; 16/24 in the quick runs); the others
      # drift along a valley at infinity (P_{T-1,T-1} / P_{T-1,T} -> +inf, 2x2 blocks
      # c [[1, -1], [-1, 1]]) where the loss falls slowly (0.2 at 1500 steps). The claims are
      # checked on the restart with the lowest exact loss; P(no restart in the basin) ~ 0.35^8.
      'restarts': 8,
      'steps': 1500,
  })
  config.train = config_dict.ConfigDict({
      'batch_size': 32,               # sequences per step, shared by the restarts
      # 0: fresh sequences every step (Monte Carlo of the population loss (3)); > 0: a fixed
      # training set of that many sequences, visited in epochs (Sec 6: 2^14).
      'num_train': 0,
      'lr': 0.03,                     # Adam peak step; linear warmup, then cosine decay
      'warmup_fraction': 0.1,         # of the steps
      'end_lr': 1e-4,                 # the step at the end of the cosine decay
      # N(0, init_scale^2) entries of a, b, P. The authors' Fig 3 code uses 0.1; 0.3 reaches
      # the loss tolerance within the quick budget (exact-loss runs, 16 inits: 1500 steps at
      # 0.1 leave the Lemma 3 runs at 4e-6-1e-4, at 0.3 at 0-3e-6).
      'init_scale': 0.3,
      'log_every': 50,
      'ckpt_every': 500,
  })
  # Monte Carlo of loss (3) through the model code, float64, `num_sequences` fresh sequences per
  # parameter set: the closed forms vs Monte Carlo at `draws` random parameter sets per case
  # (a, b ~ N(0, param_scale^2 / sqrt(H)), so that C_ij ~ param_scale^2; P ~ N(0,
  # param_scale^2 / T_max)), and the test loss of every trained restart (reported; the claims
  # use the exact loss). Sec 6 tests on 2^10 sequences.
  config.closed_form = config_dict.ConfigDict({
      'draws': 4,
      # Relative stderr of the mean: ~0.4% at quick sizes (0.2% measured at 8192), ~1.3% at
      # smoke sizes (2048: a 10% error is still > 4 stderr).
      'num_sequences': 2048,
      'chunk': 1024,
      'param_scale': 1.0,
  })
  # Tolerances, fixed before the runs.
  config.claims = config_dict.ConfigDict({
      # 'loss -> ~0' (Fig 3: "arbitrarily small final loss"): the exact population loss (3)
      # (sum over the T_max - 1 prefixes; the zero predictor scores d (T_max - 1) = 140) of the
      # trained model is at most loss_tol. Fixed after exploratory runs on the exact loss (not
      # this app's), where float32 Adam runs in the basin ended at 1e-12-1e-4; 1e-6 makes
      # s = 1e-3 below, tight enough for every structure tolerance to notice a 10% error.
      'loss_tol': 1e-6,
      # Structure. Loss (3) is a sum of squared coefficients of distinct monomials in the
      # eigenvalues (Apps A.5, A.6, A.9), so each coefficient misses its optimum by at most
      # s = sqrt(loss) <= sqrt(loss_tol) = 1e-3. The app turns that into a bound per measure:
      # exact for unitary contexts (s / (1 - s), s / (1 - s - sqrt(d - 1) s), s), first-order
      # worst-case for the orthogonal ratio and block entries (3.3 s and 25 s at d = 10,
      # T_max = 15; see `structure_bounds`), each times `margin` (the dropped second-order
      # terms are ~25 s relative to the first-order ones: 2.5% at s = 1e-3).
      'margin': 1.5,
      # Numerical rank of C: # singular values > rank_threshold x the largest. At the optimum
      # 5 of them equal sigma_1 and 5 vanish; within the loss tolerance the small ones are at
      # most ~19 s sigma_1 = 0.019 sigma_1 and the large ones at least (1 - 38 s) sigma_1.
      'rank_threshold': 0.1,
      # Closed form vs Monte Carlo: |MC mean - closed form| / stderr <= k_mc for every draw
      # (4 draws x 2 cases: P(some |z| > 4) ~ 5e-4 under the hypothesis).
      'k_mc': 4.0,
  })
  return config


_PRESETS = {
    # Smoke: d = 4, T_max = 6, H = 4 (unitary) and H = 2 = d/2 (orthogonal; from a random
    # init about a third of the runs end in the Lemma 3 basin (4 of 12 measured), the others at
    # local minima of loss 3.5 and 5.8: 6 restarts). Same tolerances.
    'smoke': {'d': 4, 't_max': 6, 'unitary.heads': 4, 'unitary.restarts': 2,
              'unitary.steps': 300, 'orthogonal.heads': 2, 'orthogonal.restarts': 6,
              'orthogonal.steps': 400, 'train.batch_size': 16, 'train.ckpt_every': 400,
              'closed_form.chunk': 2048},   # one chunk: compiles faster
    'quick': {},
    # The paper's data protocol (Sec 6): 2^14 training sequences in epochs, 2^10 test, Adam at
    # lr 1e-2 (Sec 6's rate for model (6)), 200 epochs of 64 batches of 256 (the batch size is
    # not given), the authors' init scale 0.1 and cosine decay (untried guesses for reaching
    # loss_tol; the authors' own Fig 3 script runs gradient descent on a closed form).
    'paper': {'unitary.restarts': 8, 'unitary.steps': 12800, 'orthogonal.steps': 12800,
              'train.batch_size': 256, 'train.num_train': 2**14, 'train.lr': 1e-2,
              'train.end_lr': 1e-5, 'train.init_scale': 0.1, 'train.log_every': 100,
              'train.ckpt_every': 1000,
              'closed_form.num_sequences': 65536, 'closed_form.chunk': 4096},
}


def get_config(arg=None):
  return common.get_preset(arg, _base, _PRESETS)
