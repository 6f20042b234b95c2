"""Config: LSA trained on prompts with random covariances (Zhang, Frei & Bartlett 2023, Sec. 4.3).

Reproduces Theorem 8 and eq. (23): gradient flow on the population loss (20) with
Lambda_tau = scale * diag(lambda_i), lambda_i i.i.d. from covariance_law, converges to eq. (22);
on new random-covariance prompts the prediction's slope on <w, x_query> tends to
E L^2 [E L^3]^-1 E L (1/3 for Exp(1)) as N, M grow.

  python -m experiments.trained_lsa.random_covariance \
      --config=experiments/trained_lsa/configs/random_covariance.py:quick --workdir=/tmp/rc

Runtime: smoke ~15 s, quick ~1 min on 2 CPU cores; paper (d = 20, Monte-Carlo Lambda) minutes on
one GPU.
"""

from ml_collections import config_dict

from experiments import common


def _base():
  config = common.base_config()
  config.d = 5                          # input dimension d
  config.n_context = 20                 # training prompt length N of the trained model
  config.covariance_law = 'exponential'  # law of the lambda_i (Sec. 4.3: Exp(1))
  config.covariance_scale = 1.0         # c in Lambda_tau = c diag(lambda_i)
  config.n_values = (20, 100, 500, 2000)  # N of the Thm 8 optima for the slope trend
  config.m_test = 100                   # test prompt length M
  config.model = config_dict.ConfigDict({'sigma': 0.1})   # Assumption 3 scale sigma
  config.train = config_dict.ConfigDict({
      'loss': 'exact',         # 'exact': 2-point Gauss rule over Lambda (d <= 12); 'monte_carlo'
      'batch_size': 4096,      # Lambda_tau draws per step for 'monte_carlo'
      'lr': 0.0,               # 0 = lr_fraction / largest Hessian eigenvalue at the optimum
      'lr_fraction': 0.5,
      'max_steps': 200_000,
      'grad_tol': 1e-4,        # float32 rounding floor of |grad| is ~2e-5 here
      'log_every': 500,
      'ckpt_every': 5000,
      'x64': False,
  })
  config.eval = config_dict.ConfigDict({'num_prompts': 65536, 'chunk': 4096})
  config.claims = config_dict.ConfigDict({
      'product_rel_tol': 0.02,   # learned w22 W11 vs [E Gamma L^2]^-1 E L^2
      'block_rel_tol': 0.05,     # each block vs eq. (22)
      'zero_block_tol': 0.01,    # blocks eq. (22) sets to zero, relative to max |W*|
      'k_stderr': 3.0,           # MC slopes within k standard errors of their closed forms
      'limit_tol': 0.02,         # slope at the largest N vs the eq. (23) factor (MC + 1/N bias)
  })
  return config


_PRESETS = {
    'smoke': {'d': 3, 'n_context': 10, 'n_values': (10, 100, 1000), 'm_test': 50,
              'train.max_steps': 20_000, 'train.log_every': 250, 'train.ckpt_every': 1000,
              'eval.num_prompts': 16384, 'eval.chunk': 2048},
    'quick': {},
    'paper': {'d': 20, 'n_context': 100, 'n_values': (40, 70, 100, 400, 1600, 6400),
              'm_test': 400, 'train.loss': 'monte_carlo', 'train.x64': True,
              'train.max_steps': 400_000, 'train.log_every': 2000, 'train.ckpt_every': 20_000,
              'train.grad_tol': 1e-3, 'eval.num_prompts': 1 << 20, 'eval.chunk': 1 << 14},
}


def get_config(arg=None):
  return common.get_preset(arg, _base, _PRESETS)
