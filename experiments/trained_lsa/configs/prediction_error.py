"""Config: test error of the trained LSA vs test length M and training length N.

Reproduces Theorem 5 / Corollary 6 of Zhang, Frei & Bartlett (2023): the error of the Theorem 4
optimum on noiseless linear prompts of length M is (1/M) tr(Sigma Gamma^-2 Lambda) plus an
N-dependent floor of order 1/N^2.

  python -m experiments.trained_lsa.prediction_error \
      --config=experiments/trained_lsa/configs/prediction_error.py:quick --workdir=/tmp/pe

Runtime: smoke ~10 s, quick ~40 s on 2 CPU cores; paper (d = 20, 2^20 prompts) minutes on a GPU.
"""

from ml_collections import config_dict

from experiments import common


def _base():
  config = common.base_config()
  config.d = 5                                        # input dimension d
  config.n_context = 20                               # training prompt length N
  config.covariance_diag = (0.5, 0.75, 1.0, 1.5, 2.0)  # diagonal of Lambda
  config.m_values = (10, 20, 50, 100, 200, 500, 1000)  # test prompt lengths M
  config.n_values = (200, 400, 800, 1600, 3200)       # training lengths N for the 1/N^2 floor
  config.eval = config_dict.ConfigDict({
      'num_prompts': 65536,    # Monte-Carlo prompts per M (and per N for the floor)
      'chunk': 4096,           # prompts per vmapped chunk (memory bound)
  })
  config.claims = config_dict.ConfigDict({
      'k_stderr': 3.0,         # MC within k standard errors of the closed form (issue: 3)
      'm_slope': -1.0,         # error - its M -> inf limit ~ 1/M (Theorem 5)
      'm_slope_tol': 0.05,     # issue: -1 +- 0.05
      'n_slope': -2.0,         # floor ~ 1/N^2 (Theorem 5)
      'n_slope_tol': 0.1,      # finite-N curvature of Gamma moves the slope by < 0.05 for N >= 200
  })
  return config


_PRESETS = {
    'smoke': {'d': 3, 'n_context': 10, 'covariance_diag': (0.5, 1.0, 2.0),
              'm_values': (10, 40, 160), 'n_values': (400, 800, 1600),
              'eval.num_prompts': 16384, 'eval.chunk': 2048},
    'quick': {},
    'paper': {'d': 20, 'n_context': 100,
              'covariance_diag': tuple(0.5 + 1.5 * i / 19 for i in range(20)),
              'm_values': (20, 50, 100, 200, 500, 1000, 2000),
              'n_values': (1000, 2000, 4000, 8000, 16000),
              'eval.num_prompts': 1 << 20, 'eval.chunk': 1 << 14},
}


def get_config(arg=None):
  return common.get_preset(arg, _base, _PRESETS)
