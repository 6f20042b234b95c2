"""Config: in-context loss against context length, per label kernel and attention activation
(Cheng, Chen & Sra 2024, Figure 1, Proposition 3.4).

  python -m experiments.functional_gd.loss_vs_context \
      --config=experiments/functional_gd/configs/loss_vs_context.py:quick --workdir=/tmp/lvc

TO BE FILLED: runtimes.
"""

from ml_collections import config_dict

from experiments import common
from icl_jax.samplers import kernel_gp


def _base():
  config = common.base_config()
  config.d = 5                                      # covariate dimension d (Appendix H.1)
  config.num_seeds = 1                              # Sigma = U^T D U per seed (config.seed picks U)
  config.covariance_diag = kernel_gp.PAPER_DIAG     # D of Appendix H.1
  config.kernel = config_dict.ConfigDict({
      'bandwidth': 1.0,                  # K_exp(u, w) = exp(<u, w> / bandwidth^2), eq. (11)
      'alpha': 0.5,                      # composite kernel (unused here; validate_problem)
      'g1': (1.0, 1.0, 0.0, 0.0, 0.0),
      'g2': (0.0, 0.0, 1.0, 1.0, 1.0),
  })
  config.kernels = ('linear', 'relu', 'exp')                # label kernels K of eq. (11)
  config.activations = ('linear', 'relu', 'exp', 'softmax')  # attention h~ of eq. (12)
  config.n_values = (2, 4, 6, 10, 14)                       # context lengths n
  config.train = config_dict.ConfigDict({
      'layers': 3,               # L: the 3-layer transformer of Figure 1
      'batch_size': 512,         # prompts per model per step (paper: 30000)
      'resample_every': 10,      # steps per minibatch (Appendix H.1: every 10)
      'steps': 300,
      'log_every': 50,
      'ckpt_every': 150,
  })
  # Per activation (replacing nothing in config.train: these live only here): the Adam step,
  # the global-norm gradient clip per model and the N(0, init_scale^2) initial entries of A, r,
  # B, C. See the module docstring for how they were chosen.
  config.by_activation = config_dict.ConfigDict({
      'linear': {'lr': 0.01, 'clip': 0.1, 'init_scale': 0.1},
      'relu': {'lr': 0.01, 'clip': 0.1, 'init_scale': 0.1},
      'exp': {'lr': 0.002, 'clip': 0.1, 'init_scale': 0.1},
      'softmax': {'lr': 0.01, 'clip': 0.1, 'init_scale': 0.1},
  })
  config.eval = config_dict.ConfigDict({
      'num_prompts': 8000,       # fresh test prompts per model (the same for every activation)
      'chunk': 2000,
  })
  config.claims = config_dict.ConfigDict({
      'k_bayes': 3.0,            # trained loss >= Bayes within k_bayes x paired stderr
      'k_best': 2.0,             # 'beats' = paired difference >= k_best x its stderr
      'best_n': (6, 10, 14),     # n where the matching activation must be best (Fig 1(a),(b))
      'softmax_n': (6, 10, 14),  # n where softmax beats exp on K_exp labels (Fig 1(c))
      'k_closed': 4.0,           # Bayes risk vs 1 - n/d (K_lin), and vs the Bayes estimator's
                                 # squared error (every kernel), within k_closed x stderr
      'zero_floor': 1e-9,        # ... and vs 0 (n >= d) within this (float64 rounding)
  })
  return config


_PRESETS = {
    'smoke': {'kernels': ('linear',), 'activations': ('linear', 'relu'), 'n_values': (2, 6),
              'train.batch_size': 64, 'train.steps': 100, 'train.log_every': 50,
              'train.ckpt_every': 100, 'eval.num_prompts': 2000, 'eval.chunk': 1000,
              'claims.best_n': (2, 6), 'claims.softmax_n': ()},
    'quick': {},
    'paper': {'num_seeds': 3, 'n_values': (2, 4, 6, 8, 10, 12, 14),
              'train.batch_size': 30000, 'train.steps': 20000, 'train.log_every': 500,
              'train.ckpt_every': 2000, 'eval.num_prompts': 100000, 'eval.chunk': 10000,
              'claims.best_n': (2, 4, 6, 8, 10, 12, 14), 'claims.softmax_n': (6, 8, 10, 12, 14)},
}


def get_config(arg=None):
  return common.get_preset(arg, _base, _PRESETS)
