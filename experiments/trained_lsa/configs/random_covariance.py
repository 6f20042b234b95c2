"""Config: LSA trained on prompts with random covariances (Zhang, Frei & Bartlett 2023, Sec. 4.3).

Reproduces Theorem 8 and eq. (23): gradient flow on the population loss (20) with
Lambda_tau = scale * diag(lambda_i), lambda_i i.i.d. from covariance_law, converges to eq. (22);
on new random-covariance prompts the prediction's slope on <w, x_query> tends to
E L^2 [E L^3]^-1 E L (1/3 for Exp(1)) as N, M grow.

  python -m experiments.trained_lsa.random_covariance \
      --config=experiments/trained_lsa/configs/random_covariance.py:quick --workdir=/tmp/rc

The loss (20) is exact at any d: it is a polynomial of total degree 3 in the diagonal of
Lambda_tau, so a (2d + 1)-point rule (`theory.trained_lsa.sparse_rule`) integrates it exactly;
train.loss='monte_carlo' samples train.batch_size Lambda_tau per step instead (no convergence
claim then: the sampled gradient has a noise floor, and the run stops at train.max_steps).
Evaluation statistics come from the Wishart sampler (cost independent of M), plus one check on
eval.direct_prompts whole prompts (and OLS).

Measured here (2-core CPU shared with other jobs; /usr/bin/time -v, load = 1-min load average):
  smoke: 22 s wall (6.4 s CPU) with a warm compilation cache, 48 s (15 s CPU) cold, load 11;
         9 s warm at load 8.6. Peak RSS 0.65-0.75 GiB.
  quick: 89 s wall (31 s CPU), cold, load 11 (d = 10, float32; 1500 steps). Peak RSS 0.89 GiB.
  paper: 5 min 23 s wall (91 s CPU), load 10-14 (d = 20, float64; 7000 steps ~35 s, 2^20
         Wishart prompts ~2 min, 2^16 direct prompts of M = 400 ~70 s). Peak RSS 0.82 GiB.
"""

from ml_collections import config_dict

from experiments import common


def _base():
  config = common.base_config()
  config.d = 10                         # input dimension d
  config.n_context = 40                 # training prompt length N of the trained model
  config.covariance_law = 'exponential'  # law of the lambda_i (Sec. 4.3: Exp(1))
  config.covariance_scale = 1.0         # c in Lambda_tau = c diag(lambda_i)
  config.n_values = (10, 40, 160, 640, 2560)  # N of the Thm 8 optima for the slope trend
  config.m_test = 100                   # test prompt length M (>= d)
  config.model = config_dict.ConfigDict({'sigma': 0.1})   # Assumption 3 scale sigma
  config.train = config_dict.ConfigDict({
      'loss': 'exact',         # 'exact': (20) by a 2d+1-point rule over Lambda; 'monte_carlo'
      'batch_size': 4096,      # Lambda_tau draws per step for 'monte_carlo'
      'lr': 0.0,               # 0 = lr_fraction / largest Hessian eigenvalue at the optimum
      'lr_fraction': 0.5,
      'max_steps': 200_000,
      'grad_tol': 1e-4,        # float32 floor of |grad| ~2e-5 at d <= 10 (the rule's 1 - d weight
                               # cancels: paper's d = 20 runs in float64)
      'log_every': 500,
      'ckpt_every': 5000,
      'x64': False,
  })
  config.eval = config_dict.ConfigDict({
      'num_prompts': 1 << 18,     # Wishart-statistics prompts, each scored under both query laws
      'direct_prompts': 1 << 15,  # whole sampled prompts for the direct check (and OLS)
      'chunk_budget_mib': 512,    # memory one Monte-Carlo chunk may use; sizes the chunks
  })
  config.claims = config_dict.ConfigDict({
      'product_rel_tol': 0.02,   # learned w22 W11 vs [E Gamma L^2]^-1 E L^2
      'block_rel_tol': 0.05,     # each block vs eq. (22)
      # MC estimates within k standard errors of their closed forms. Up to ~16 such z-tests
      # run at once (one per N and query law, plus 4): 4 sigma keeps the chance that any
      # fails by chance near 0.1%.
      'k_stderr': 4.0,
      'limit_tol': 0.02,         # slope at the largest N vs the eq. (23) factor (MC + 1/N bias)
      # OLS on a noiseless prompt errs by rounding alone: the normalised squared error is
      # (relative error)^2 ~ (cond(X^T X) eps)^2, ~1e-10 in float32 for cond up to 1e3.
      'ols_tol': 1e-6,
  })
  return config


_PRESETS = {
    'smoke': {'d': 3, 'n_context': 10, 'n_values': (10, 100, 1000), 'm_test': 50,
              'train.max_steps': 20_000, 'train.log_every': 250, 'train.ckpt_every': 1000,
              'eval.num_prompts': 1 << 18, 'eval.direct_prompts': 1 << 16},
    'quick': {},
    'paper': {'d': 20, 'n_context': 100, 'n_values': (40, 70, 100, 400, 1600, 6400),
              # float64: |grad| < 1e-6 after ~7000 steps (~35 s); max_steps is a safety net.
              'm_test': 400, 'train.x64': True, 'train.grad_tol': 1e-6,
              'train.max_steps': 40_000, 'train.log_every': 1000, 'train.ckpt_every': 5000,
              'eval.num_prompts': 1 << 20, 'eval.direct_prompts': 1 << 16},
}


def get_config(arg=None):
  return common.get_preset(arg, _base, _PRESETS)
