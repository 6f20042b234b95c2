"""Theorem 5 / Corollary 6 of Zhang, Frei & Bartlett (2023): error vs test and training length.

  python -m experiments.trained_lsa.prediction_error \
      --config=experiments/trained_lsa/configs/prediction_error.py:quick --workdir=/tmp/pe

For each test length M: Monte-Carlo error of the Theorem 4 optimum (the model f_LSA applied to
directly sampled prompts) against the closed form, with OLS and the zero predictor on the same
prompts. The excess over the M -> infinity limit is measured per prompt against the limit
predictor x_q^T Gamma^-1 Lambda w on the same (w, x_q), and its log-log slope in M compared
with -1; the floor (the M -> infinity error) is measured for several N and its slope compared
with -2.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.trained_lsa import lsa_common
from icl_jax import estimators, metrics, plotting, population, results, theory
from icl_jax.models import lsa
from icl_jax.samplers import regression

T = theory.trained_lsa
EXPERIMENT = 'trained_lsa/prediction_error'


def validate(config) -> None:
  lsa_common.validate_problem(config)
  common.positive_ints(config, 'm_values', min_len=2)
  common.positive_ints(config, 'n_values', min_len=2)
  common.positive_int(config, 'eval.num_prompts')
  common.positive_int(config, 'eval.chunk')
  common.multiple_of(config, 'eval.num_prompts', 'eval.chunk')
  common.positive_float(config, 'claims.k_stderr')


def _task_and_prompt(key, *, m, cov):
  """(w, prompt of length m with labels <w, x_i>): w is returned for the paired limit predictor."""
  k_w, k_p = jax.random.split(key)
  w = jax.random.normal(k_w, (cov.shape[0],))
  return w, regression.linear_prompt(k_p, n=m, cov=cov, w=w)


def _errors(sample, params, limit):
  """Squared errors of the LSA, OLS and zero on one prompt, and the paired excess over the limit."""
  w, prompt = sample
  y = prompt.y_query
  sq_lsa = jnp.square(lsa.predict(params, prompt) - y)
  sq_limit = jnp.square(prompt.x_query @ limit @ w - y)
  return {'lsa': sq_lsa, 'ols': jnp.square(estimators.ols(prompt) - y), 'zero': jnp.square(y),
          'excess': sq_lsa - sq_limit}


def _task_and_query(key, *, cov):
  """(w ~ N(0, I), x_q ~ N(0, Lambda)): all the M -> infinity error depends on."""
  k_w, k_q = jax.random.split(key)
  return jax.random.normal(k_w, (cov.shape[0],)), regression.gaussian(k_q, 1, cov)[0]


def _floor(sample, limit_minus_identity):
  """(x_q^T (Gamma^-1 Lambda - I) w)^2: the M -> infinity error of the optimum for one (w, x_q)."""
  w, x_q = sample
  return jnp.square(x_q @ limit_minus_identity @ w)


def run(config, workdir) -> dict:
  d, n = config.d, config.n_context
  cov = jnp.asarray(config.covariance_diag, jnp.float32)
  lam = jnp.diag(cov)
  key = common.jax_key(config)
  k_m, k_n = jax.random.split(key)
  del key
  w_kq, w_pv = T.optimum(cov, n)
  params = lsa.Params(w_kq=w_kq, w_pv=w_pv)
  limit = jnp.linalg.inv(T.gamma(cov, n)) @ lam
  ev = dict(num_samples=config.eval.num_prompts, chunk=config.eval.chunk)

  m_values = np.asarray(config.m_values)
  per_m = []
  for i, m in enumerate(m_values):
    sample = functools.partial(_task_and_prompt, m=int(m), cov=cov)
    mean, se = population.mc_stats(_errors, sample, jax.random.fold_in(k_m, i), (params, limit),
                                   **ev)
    per_m.append((jax.device_get(mean), jax.device_get(se)))
  get = lambda part, name: np.array([float(p[part][name]) for p in per_m])  # noqa: E731
  error_mc, error_se = get(0, 'lsa'), get(1, 'lsa')
  error_theory = np.array([float(T.test_error_expected(cov, n, int(m))) for m in m_values])
  floor_theory_n = float(T.error_floor_expected(cov, n))
  excess_mc, excess_se = get(0, 'excess'), get(1, 'excess')
  excess_theory = error_theory - floor_theory_n

  n_values = np.asarray(config.n_values)
  floor_mc, floor_se = [], []
  sample = functools.partial(_task_and_query, cov=cov)   # one object: one compilation for all N
  for i, nn in enumerate(n_values):
    lmi = jnp.linalg.inv(T.gamma(cov, int(nn))) @ lam - jnp.eye(d)
    mean, se = population.mc_stats(_floor, sample, jax.random.fold_in(k_n, i), (lmi,), **ev)
    floor_mc.append(float(mean))
    floor_se.append(float(se))
  floor_mc, floor_se = np.array(floor_mc), np.array(floor_se)
  floor_theory = np.array([float(T.error_floor_expected(cov, int(nn))) for nn in n_values])

  z_error = np.abs(error_mc - error_theory) / error_se
  z_floor = np.abs(floor_mc - floor_theory) / floor_se
  m_slope = metrics.loglog_slope(m_values, excess_mc)
  n_slope = metrics.loglog_slope(n_values, floor_mc)
  met = {
      'max_z_error_vs_theory': float(z_error.max()),
      'max_z_floor_vs_theory': float(z_floor.max()),
      'excess_loglog_slope_m': m_slope,
      'excess_loglog_slope_m_stderr': metrics.loglog_slope_stderr(m_values, excess_mc, excess_se),
      'excess_loglog_slope_m_theory': metrics.loglog_slope(m_values, excess_theory),
      'floor_loglog_slope_n': n_slope,
      'floor_loglog_slope_n_stderr': metrics.loglog_slope_stderr(n_values, floor_mc, floor_se),
      'floor_loglog_slope_n_theory': metrics.loglog_slope(n_values, floor_theory),
      'floor_theory_at_n_context': floor_theory_n,
  }
  for m, e, t, o, z in zip(m_values, error_mc, error_theory, get(0, 'ols'), get(0, 'zero')):
    met.update({f'error_mc_M{m}': e, f'error_theory_M{m}': t, f'error_ols_M{m}': o,
                f'error_zero_M{m}': z})
  c = config.claims
  claims = [
      results.Claim(f'Thm 5: MC error of the optimum within {c.k_stderr:g} stderr of the closed '
                    f'form at every M in {tuple(int(m) for m in m_values)} (max |z|)',
                    met['max_z_error_vs_theory'], 0.0, c.k_stderr, 'at_most'),
      results.Claim('Thm 5: error minus its M -> inf limit falls as 1/M (log-log slope in M)',
                    m_slope, c.m_slope, c.m_slope_tol),
      results.Claim(f'Thm 5: the M -> inf floor matches its closed form within {c.k_stderr:g} '
                    f'stderr at every N in {tuple(int(x) for x in n_values)} (max |z|)',
                    met['max_z_floor_vs_theory'], 0.0, c.k_stderr, 'at_most'),
      results.Claim('Thm 5: the N-dependent floor shrinks as 1/N^2 (log-log slope in N)',
                    n_slope, c.n_slope, c.n_slope_tol),
  ]
  arrays = {'m_values': m_values, 'error_theory': error_theory, 'error_mc': error_mc,
            'error_mc_stderr': error_se, 'error_ols': get(0, 'ols'),
            'error_ols_stderr': get(1, 'ols'), 'error_zero': get(0, 'zero'),
            'error_zero_stderr': get(1, 'zero'), 'excess_mc': excess_mc,
            'excess_mc_stderr': excess_se, 'excess_theory': excess_theory,
            'n_values': n_values, 'floor_mc': floor_mc, 'floor_mc_stderr': floor_se,
            'floor_theory': floor_theory, 'covariance_diag': np.asarray(cov)}
  figures = {
      'error_vs_m.png': plotting.curves(
          m_values, {'LSA (Monte Carlo)': error_mc, 'Thm 5 closed form': error_theory,
                     'OLS (exact once M >= d: below the axis)': get(0, 'ols'),
                     'zero': get(0, 'zero')},
          ylim=(0.3 * min(error_mc.min(), floor_theory_n), 2.0 * get(0, 'zero').max()),
          errs={'LSA (Monte Carlo)': error_se},
          styles={'Thm 5 closed form': {'ls': '--', 'color': 'k'}, 'LSA (Monte Carlo)':
                  {'marker': 'o'}},
          hlines={f'floor (N={n})': floor_theory_n}, xlabel='test prompt length M',
          ylabel='E (y_hat - y)^2', logx=True, logy=True, title=f'Thm 5, d={d}, N={n}'),
      'excess_vs_m.png': plotting.curves(
          m_values, {'MC excess over limit': excess_mc, 'Thm 5: tr(Sigma G^-2 L)/M':
                     excess_theory}, errs={'MC excess over limit': excess_se},
          xlabel='M', ylabel='error - floor', logx=True, logy=True,
          title=f'slope {m_slope:.3f} (expected -1)'),
      'floor_vs_n.png': plotting.curves(
          n_values, {'MC floor': floor_mc, 'Thm 5 floor': floor_theory},
          errs={'MC floor': floor_se}, xlabel='training prompt length N',
          ylabel='M -> inf error', logx=True, logy=True,
          title=f'slope {n_slope:.3f} (expected -2)'),
  }
  return results.Run(metrics=met, claims=claims, arrays=arrays, figures=figures)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=lsa_common.PAPER,
                 reproduces='Thm 5, Cor 6')
