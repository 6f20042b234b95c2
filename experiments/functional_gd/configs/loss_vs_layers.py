"""Config: in-context loss against the number of layers (Cheng, Chen & Sra 2024, Figure 2).

  python -m experiments.functional_gd.loss_vs_layers \
      --config=experiments/functional_gd/configs/loss_vs_layers.py:quick --workdir=/tmp/lvl

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
  config.kernels = ('relu', 'exp')                # label kernels K (Fig 2 (a)-(d))
  # Fig 2's caption: "3 plots corresponding to three choices of h~"; the text discusses relu,
  # exp and softmax on these panels (Fig 2 (a)-(d)), so those three.
  config.activations = ('relu', 'exp', 'softmax')
  config.n_values = (6, 14)                        # context lengths n
  config.layers_values = (1, 2, 3, 4)              # depths L (paper: 1..8)
  config.train = config_dict.ConfigDict({
      'layers': 4,               # L_max = max(layers_values): the grid's depth
      'batch_size': 512,         # prompts per model per step (paper: 30000)
      'resample_every': 10,      # steps per minibatch (Appendix H.1: every 10)
      'steps': 200,
      'log_every': 50,
      'ckpt_every': 100,
  })
  # Per activation (replacing nothing in config.train: these live only here): the Adam step,
  # the global-norm gradient clip per model and the N(0, init_scale^2) initial entries of A, r,
  # B, C. See the module docstring for how they were chosen.
  config.by_activation = config_dict.ConfigDict({
      'linear': {'lr': 0.005, 'clip': 0.1, 'init_scale': 0.1},
      'relu': {'lr': 0.005, 'clip': 0.1, 'init_scale': 0.1},
      'exp': {'lr': 0.002, 'clip': 0.1, 'init_scale': 0.02},
      'softmax': {'lr': 0.005, 'clip': 0.1, 'init_scale': 0.1},
  })
  config.eval = config_dict.ConfigDict({
      'num_prompts': 4000,       # fresh test prompts per model (the same for every activation)
      'chunk': 2000,
  })
  config.claims = config_dict.ConfigDict({
      'k_bayes': 3.0,            # trained loss >= Bayes within k_bayes x paired stderr
      'exp_factor': 0.5,         # h~_exp excess at L_max <= exp_factor x excess at L = 1
      'k_closed': 4.0,           # Bayes estimator's squared error = its risk within k x stderr
      'zero_floor': 1e-9,        # ... plus this (float64 rounding)
  })
  return config


_PRESETS = {
    'smoke': {'kernels': ('relu',), 'n_values': (6,), 'layers_values': (1, 2), 'train.layers': 2,
              'activations': ('relu', 'exp'), 'train.batch_size': 64, 'train.steps': 100,
              'train.log_every': 50, 'train.ckpt_every': 100, 'eval.num_prompts': 2000,
              'eval.chunk': 1000},
    'quick': {},
    'paper': {'num_seeds': 3, 'layers_values': (1, 2, 3, 4, 5, 6, 7, 8), 'train.layers': 8,
              'train.batch_size': 30000, 'train.steps': 20000, 'train.log_every': 500,
              'train.ckpt_every': 2000, 'eval.num_prompts': 100000, 'eval.chunk': 10000},
}


def get_config(arg=None):
  return common.get_preset(arg, _base, _PRESETS)
