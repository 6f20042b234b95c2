"""Config: the trained LSA layer under distribution shift (Zhang, Frei & Bartlett 2023, Sec. 4.2).

Reproduces Theorem 5 (eq. (16)) under task shift (noisy labels, a nonlinear ReLU-network task, a
task vector of large norm) and the Sec. 4.2 statements on query shift (orthogonal query -> 0,
Gaussian query of another covariance -> still ~ <w, x_query>, eq. (18)) and covariate shift
(covariates scaled by c -> slope c^2, OLS unaffected), for the Theorem 4 optimum of eq. (11).

  python -m experiments.trained_lsa.distribution_shift \
      --config=experiments/trained_lsa/configs/distribution_shift.py:quick --workdir=/tmp/ds

Monte Carlo: the linear tasks of length M on reduced prompts (`regression.shift_prompts`, cost
free of M), the ReLU task (M = 2d) and orthogonal query (M < d) materialised, the covariate claims
on directly sampled prompts of length M; chunks sized from eval.chunk_mib, sharded on the mesh.

Measured here (2 shared CPU cores, 1 device, empty compilation cache; /usr/bin/time -v):
  smoke   22 s wall, 27 s CPU, 0.9 GB peak RSS at load average ~3.5 (38 s at load ~6.5);
          ~15 s with the compilation cache warm
  quick   27 s wall, 34 s CPU, 1.0 GB peak at load ~3.7 (65 s at load ~6); mostly compilation
  paper   1 min 34 s wall, 105 s CPU, 1.35 GiB peak at load ~3 (3 min 10 s at load ~6);
          13/13 claims hold. The previous version, drawing all 2.6e5 prompts of length 2000,
          ran past 15 min.
"""

from ml_collections import config_dict

from experiments import common


def _base():
  config = common.base_config()
  config.d = 5                                         # input dimension d
  config.n_context = 100                               # training prompt length N of the optimum
  config.covariance_diag = (0.5, 0.75, 1.0, 1.5, 2.0)  # diagonal of Lambda (training covariates)
  config.eval = config_dict.ConfigDict({
      'm_test': 200,               # test prompt length M
      'm_curve': (10, 20, 50, 100, 200),  # M values of the noisy-task error-vs-M curve (<= m_test)
      'num_prompts': 65_536,       # Monte-Carlo test prompts of each linear and short task
      'chunk_mib': 256,            # memory budget of one Monte-Carlo chunk, MiB (sizes chunks)
  })
  config.task = config_dict.ConfigDict({
      'noise_std': 0.5,            # label noise std of the noisy linear task, eps ~ N(0, s^2)
      'large_w_norm': 5.0,         # ||w|| = large_w_norm * sqrt(d) for the large-norm task
      'relu_width': 64,            # width of the fixed two-layer ReLU network of the nonlinear task
      # test prompt length M of the nonlinear task (2d at every preset): Thm 5's excess over the
      # best-linear error, ~ tr(Sigma Gamma^-2 Lambda) / M, is then 5-10x the claim's
      # Monte-Carlo tolerance (at M = 200 it was below it)
      'm_nonlinear': 10,
      'moment_samples': 1_048_576,  # (x, y) draws for E[y^2], E[xy], E[y^2 x x^T] of that task
  })
  config.query = config_dict.ConfigDict({
      'm_orthogonal': 3,           # M < d context points for the query orthogonal to their span
      'num_prompts': 16_384,       # Monte-Carlo prompts of each orthogonal-query claim
      'query_cov_diag': (2.0, 1.5, 1.0, 0.75, 0.5),  # diagonal of the shifted query covariance
  })
  config.covariate = config_dict.ConfigDict({
      'scales': (0.5, 1.0, 2.0, 3.0),  # c: test covariates ~ N(0, c^2 Lambda) (c = 1: no shift)
      'num_prompts': 8192,         # directly sampled prompts of length M (one draw, every c)
  })
  config.claims = config_dict.ConfigDict({
      'k_stderr': 4.0,             # Monte-Carlo comparisons hold within k standard errors
      # ReLU task: (LSA error - best-linear error) >= this x the Thm 5 claim's tolerance, so that
      # claim can tell eq. (16) from "error = best-linear error"
      'nonlinear_min_excess_tols': 3.0,
      # max |y_hat| / RMS(y_query) for the orthogonal query with Lambda = I: exact zero up to
      # float32 rounding of the O(d)-term sums in eq. (6) (~1e-6 relative at d = 5, ~1e-5 at 20).
      'orthogonal_rel_tol': 1e-4,
      # RMS(y_hat) / RMS(y_query) for the orthogonal query with anisotropic Lambda is at least
      # this: Gamma^-1 x_query is not orthogonal to span{x_i} (measured 0.73 at quick).
      'orthogonal_aniso_min_ratio': 0.05,
      # E(y_hat - <w, x_q>)^2 / E<w, x_q>^2 under the query shift: the zero predictor scores 1;
      # Theorem 5-type terms O(1/M + 1/N^2) give ~0.04 at quick, ~0.06 at paper and smoke.
      'query_normalized_error_tol': 0.1,
      # |OLS slope - 1| under covariate scaling: noiseless, M >= d, so OLS is exact up to float32
      # rounding; an LSA-like c^2 slope would miss by >= 0.75 at c = 0.5.
      'ols_slope_tol': 1e-3,
  })
  return config


_PAPER_D = 20
_PAPER_COV = tuple(0.5 + 1.5 * i / (_PAPER_D - 1) for i in range(_PAPER_D))

_PRESETS = {
    'smoke': {'d': 3, 'n_context': 50, 'covariance_diag': (0.5, 1.0, 2.0),
              'eval.m_test': 100, 'eval.m_curve': (10, 30, 100), 'eval.num_prompts': 65_536,
              'task.relu_width': 16, 'task.m_nonlinear': 6, 'task.moment_samples': 524_288,
              'query.m_orthogonal': 2, 'query.query_cov_diag': (2.0, 1.0, 0.5),
              'query.num_prompts': 4096, 'covariate.scales': (0.5, 2.0),
              'covariate.num_prompts': 4096},
    'quick': {},
    'paper': {'d': _PAPER_D, 'n_context': 100, 'covariance_diag': _PAPER_COV,
              'eval.m_test': 2000, 'eval.m_curve': (50, 100, 200, 500, 1000, 2000),
              'eval.num_prompts': 262_144, 'task.relu_width': 256,
              'task.m_nonlinear': 2 * _PAPER_D, 'task.moment_samples': 16_777_216,
              'covariate.num_prompts': 8192,
              'query.m_orthogonal': _PAPER_D - 2, 'query.query_cov_diag': _PAPER_COV[::-1]},
}


def get_config(arg=None):
  return common.get_preset(arg, _base, _PRESETS)
