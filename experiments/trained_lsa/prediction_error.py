"""Theorem 5 / Corollary 6 of Zhang, Frei & Bartlett (2023): error vs test and training length.

  python -m experiments.trained_lsa.prediction_error \
      --config=experiments/trained_lsa/configs/prediction_error.py:quick --workdir=/tmp/pe

The Theorem 4 optimum predicts y_hat = x_q^T Gamma^-1 S w on a noiseless linear prompt, where
S = (1/M) sum x_i x_i^T: the prediction and its error depend on the prompt only through
(S, w, x_q). So for each test length M the Monte-Carlo error draws those statistics
(`regression.sample_linear_stats`, Wishart S, a cost independent of M) and applies the model
through `lsa.predict_stats`; one check at the smallest M applies `lsa.predict` to directly
sampled prompts instead (with OLS beside it as a metric: exact in exact arithmetic once M >= d,
though float32 normal equations lose it on the ill-conditioned square X of M = d). The excess over the M -> infinity limit is
measured per prompt against the limit predictor x_q^T Gamma^-1 Lambda w on the same (w, x_q),
and its log-log slope in M compared with -1; the floor (the M -> infinity error) is measured for
several N and its slope compared with -2.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import common
from experiments.trained_lsa import lsa_common
from icl_jax import distributed, estimators, metrics, plotting, population, results, theory
from icl_jax.models import lsa
from icl_jax.samplers import regression

T = theory.trained_lsa
EXPERIMENT = 'trained_lsa/prediction_error'


def _chunks(config) -> dict:
  """Chunk of each pass: divides its prompt count, splits over the devices, fits eval.chunk_mib.

  Peak bytes per sample (float32, with room for temporaries): the Bartlett factor, its draws and
  the chi-square rounds per M; the prompt, its embedding, Gram and OLS system; (w, x_q) per N.
  """
  d, m0, budget = config.d, min(config.m_values), int(config.eval.chunk_mib * 2**20)
  per_sample = {'num_prompts': 4 * 8 * (d + 1) ** 2 * len(config.m_values),
                'num_direct': 4 * (6 * (m0 + 1) * (d + 1) + 8 * (d + 1) ** 2),
                'num_floor': 4 * 8 * d * len(config.n_values)}
  sizes = {}
  for field, size in per_sample.items():
    try:
      sizes[field] = population.chunk_size(config.eval[field], size, budget_bytes=budget,
                                           multiple_of=jax.device_count())
    except ValueError as e:
      raise common.ConfigError(f'config.eval.{field}={config.eval[field]}: must be a multiple of '
                               f'the device count {jax.device_count()} with chunks that fit '
                               f'config.eval.chunk_mib={config.eval.chunk_mib} ({e})') from e
  return sizes


def validate(config) -> None:
  lsa_common.validate_problem(config)
  common.positive_ints(config, 'm_values', min_len=2)
  if min(config.m_values) < config.d:
    raise common.ConfigError(f'config.m_values={config.m_values!r}: every M must be >= '
                             f'd={config.d} (the Wishart draw of S needs M >= d)')
  common.positive_ints(config, 'n_values', min_len=2)
  for field in ('num_prompts', 'num_direct', 'num_floor'):
    common.positive_int(config, f'eval.{field}')
  for field in ('eval.chunk_mib', 'claims.k_stderr', 'claims.m_slope_tol', 'claims.n_slope_tol'):
    common.positive_float(config, field)
  _chunks(config)


def _stats_each_m(key, *, m_values, cov):
  """Independent (S, w, x_q), one noiseless prompt per M: n is static, so unrolled over M."""
  return tuple(regression.sample_linear_stats(jax.random.fold_in(key, i), n=m, cov=cov)
               for i, m in enumerate(m_values))


def _errors_each_m(stats, params, limit_DxD):
  """[len(M)] squared errors of f_LSA and zero, and f_LSA's paired excess over the M -> inf limit.

  The limit predictor x_q^T Gamma^-1 Lambda w is the optimum with S replaced by E S = Lambda.
  """
  def one(s):
    y = s.y_query
    sq_lsa = jnp.square(lsa.predict_stats(params, s) - y)
    sq_limit = jnp.square(s.x_query @ limit_DxD @ s.w - y)
    return sq_lsa, sq_lsa - sq_limit, jnp.square(y)
  sq_lsa, excess, zero = (jnp.stack(v) for v in zip(*map(one, stats)))
  return {'lsa': sq_lsa, 'excess': excess, 'zero': zero}


def _direct_errors(prompt, params):
  """Squared errors of f_LSA (eq. (6) on the prompt itself) and OLS on one sampled prompt."""
  y = prompt.y_query
  return {'lsa': jnp.square(lsa.predict(params, prompt) - y),
          'ols': jnp.square(estimators.ols(prompt) - y)}


def _task_and_query(key, *, cov_sqrt, count):
  """count independent (w ~ N(0, I), x_q ~ N(0, Lambda)), [count, d] each, from one normal draw."""
  z_Lx2xD = jax.random.normal(key, (count, 2, cov_sqrt.shape[0]))
  return z_Lx2xD[:, 0], z_Lx2xD[:, 1] * cov_sqrt[None]


def _floor(sample, lmi_LxDxD):
  """[len(N)] (x_q^T (Gamma_N^-1 Lambda - I) w)^2: the M -> inf error of the optimum per N."""
  w_LxD, q_LxD = sample
  return jnp.square(jnp.einsum('ld,lde,le->l', q_LxD, lmi_LxDxD, w_LxD))


def _theory(config) -> dict:
  """Closed forms of Thm 5 / Cor 6 in float64, and the limit matrices the estimators apply."""
  with jax.enable_x64(True):
    cov, n = np.asarray(config.covariance_diag, np.float64), config.n_context
    lam = np.diag(cov)
    f = lambda fn, *a: np.asarray(fn(cov, *a), np.float64)  # noqa: E731
    error = np.array([f(T.test_error_expected, n, m) for m in config.m_values])
    floor_n = float(f(T.error_floor_expected, n))
    lmi = np.stack([np.linalg.inv(f(T.gamma, nn)) @ lam - np.eye(config.d)
                    for nn in config.n_values])
    return {'error': error, 'excess': error - floor_n, 'floor_at_n_context': floor_n,
            'floor': np.array([f(T.error_floor_expected, nn) for nn in config.n_values]),
            'limit': np.linalg.inv(f(T.gamma, n)) @ lam,
            'limit_minus_identity': lmi}


def measure(config, workdir):
  """Monte Carlo: error per M (Wishart statistics), direct prompts at min M, floor per N."""
  del workdir  # nothing to checkpoint: three Monte-Carlo passes
  cov = jnp.asarray(config.covariance_diag, jnp.float32)
  m_values, n_values, m0 = tuple(config.m_values), tuple(config.n_values), min(config.m_values)
  theo, chunks, mesh = _theory(config), _chunks(config), distributed.data_mesh()
  params = lsa.Params(*T.optimum(cov, config.n_context))
  k_m, k_direct, k_n = jax.random.split(common.jax_key(config), 3)
  ev = config.eval
  stages = [
      (f'Thm 5 error at M in {m_values} (Wishart statistics, one prompt per M per draw)',
       _errors_each_m,
       functools.partial(_stats_each_m, m_values=m_values, cov=cov), k_m,
       (params, jnp.asarray(theo['limit'], jnp.float32)), ev.num_prompts, chunks['num_prompts']),
      (f'f_LSA and OLS on directly sampled prompts, M={m0}', _direct_errors,
       functools.partial(regression.linear_prompt, n=m0, cov=cov), k_direct, (params,),
       ev.num_direct, chunks['num_direct']),
      (f'M -> inf floor at N in {n_values}', _floor,
       functools.partial(_task_and_query, cov_sqrt=jnp.sqrt(cov), count=len(n_values)), k_n,
       (jnp.asarray(theo['limit_minus_identity'], jnp.float32),), ev.num_floor,
       chunks['num_floor']),
  ]
  out = []
  for i, (what, stat, sample, key, args, num, chunk) in enumerate(stages):
    label = f'stage {i + 1}/{len(stages)}: {what}'
    logging.info('%s: %d prompts in chunks of %d', label, num, chunk)
    with population.progress(label):
      out.append(jax.device_get(population.mc_stats(stat, sample, key, args, num_samples=num,
                                                    chunk=chunk, mesh=mesh)))
  (wm, ws), (dm, ds), (fm, fs) = out
  measured = {'error': wm['lsa'], 'error_stderr': ws['lsa'], 'excess': wm['excess'],
              'excess_stderr': ws['excess'], 'zero': wm['zero'], 'zero_stderr': ws['zero'],
              'direct_error': dm['lsa'], 'direct_error_stderr': ds['lsa'],
              'direct_ols': dm['ols'], 'direct_ols_stderr': ds['ols'],
              'floor': fm, 'floor_stderr': fs}
  keep = ('error', 'excess', 'floor', 'floor_at_n_context')
  evidence = results.Evidence(
      measured={k: np.asarray(v, np.float64) for k, v in measured.items()},
      theory={k: np.asarray(theo[k], np.float64) for k in keep})
  return evidence, None


def check(config, evidence):
  """Claims of Thm 5 / Cor 6 on the evidence; tolerances from config.claims."""
  me, th, c = evidence.measured, evidence.theory, config.claims
  m_values, n_values = np.asarray(config.m_values), np.asarray(config.n_values)
  i0 = int(np.argmin(m_values))
  z_error = np.abs(me['error'] - th['error']) / me['error_stderr']
  z_floor = np.abs(me['floor'] - th['floor']) / me['floor_stderr']
  m_slope = metrics.loglog_slope(m_values, me['excess'])
  n_slope = metrics.loglog_slope(n_values, me['floor'])
  met = {
      'max_z_error_vs_theory': float(np.max(z_error)),
      'max_z_floor_vs_theory': float(np.max(z_floor)),
      'z_direct_vs_theory': float(abs(me['direct_error'] - th['error'][i0])
                                  / me['direct_error_stderr']),
      'error_ols_direct': float(me['direct_ols']),
      'excess_loglog_slope_m': m_slope,
      'excess_loglog_slope_m_stderr': metrics.loglog_slope_stderr(m_values, me['excess'],
                                                                  me['excess_stderr']),
      'excess_loglog_slope_m_theory': metrics.loglog_slope(m_values, th['excess']),
      'floor_loglog_slope_n': n_slope,
      'floor_loglog_slope_n_stderr': metrics.loglog_slope_stderr(n_values, me['floor'],
                                                                 me['floor_stderr']),
      'floor_loglog_slope_n_theory': metrics.loglog_slope(n_values, th['floor']),
      'floor_theory_at_n_context': float(th['floor_at_n_context']),
  }
  met['error_zero'] = float(np.mean(me['zero']))   # E y^2 = tr(Lambda) at every M
  for m, e, t in zip(m_values, me['error'], th['error']):
    met.update({f'error_mc_M{m}': float(e), f'error_theory_M{m}': float(t)})
  claims = [
      results.Claim(f'Thm 5: MC error of the optimum within {c.k_stderr:g} stderr of the closed '
                    f'form at every M in {tuple(int(m) for m in m_values)} (max |z|)',
                    met['max_z_error_vs_theory'], 0.0, c.k_stderr, 'at_most'),
      results.stderr_claim(f'Thm 5 on directly sampled prompts (M={m_values[i0]}): MC error of '
                           'f_LSA equals the closed form', me['direct_error'],
                           me['direct_error_stderr'], th['error'][i0], c.k_stderr),
      results.Claim('Thm 5: error minus its M -> inf limit falls as 1/M (log-log slope in M)',
                    m_slope, c.m_slope, c.m_slope_tol),
      results.Claim(f'Thm 5: the M -> inf floor matches its closed form within {c.k_stderr:g} '
                    f'stderr at every N in {tuple(int(x) for x in n_values)} (max |z|)',
                    met['max_z_floor_vs_theory'], 0.0, c.k_stderr, 'at_most'),
      results.Claim('Thm 5: the N-dependent floor shrinks as 1/N^2 (log-log slope in N)',
                    n_slope, c.n_slope, c.n_slope_tol),
  ]
  return claims, met


def _figures(config, me, th, met):
  d, n = config.d, config.n_context
  m_values, n_values = np.asarray(config.m_values), np.asarray(config.n_values)
  floor_n = float(th['floor_at_n_context'])
  return {
      'error_vs_m.png': plotting.curves(
          m_values, {'LSA (Monte Carlo)': me['error'], 'Thm 5 closed form': th['error'],
                     'zero': me['zero']},
          ylim=(0.3 * min(me['error'].min(), floor_n), 2.0 * me['zero'].max()),
          errs={'LSA (Monte Carlo)': me['error_stderr']},
          styles={'Thm 5 closed form': {'ls': '--', 'color': 'k'}, 'LSA (Monte Carlo)':
                  {'marker': 'o'}},
          hlines={f'floor (N={n})': floor_n}, xlabel='test prompt length M',
          ylabel='E (y_hat - y)^2', logx=True, logy=True,
          title=f'Thm 5, d={d}, N={n}'),
      'excess_vs_m.png': plotting.curves(
          m_values, {'MC excess over limit': me['excess'], 'Thm 5: tr(Sigma G^-2 L)/M':
                     th['excess']}, errs={'MC excess over limit': me['excess_stderr']},
          xlabel='M', ylabel='error - floor', logx=True, logy=True,
          title=f'slope {met["excess_loglog_slope_m"]:.3f} (expected -1)'),
      'floor_vs_n.png': plotting.curves(
          n_values, {'MC floor': me['floor'], 'Thm 5 floor': th['floor']},
          errs={'MC floor': me['floor_stderr']}, xlabel='training prompt length N',
          ylabel='M -> inf error', logx=True, logy=True,
          title=f'slope {met["floor_loglog_slope_n"]:.3f} (expected -2)'),
  }


def run(config, workdir) -> results.Run:
  evidence, _ = measure(config, workdir)
  claims, met = check(config, evidence)
  me, th = evidence.measured, evidence.theory
  arrays = {'m_values': np.asarray(config.m_values), 'error_theory': th['error'],
            'error_mc': me['error'], 'error_mc_stderr': me['error_stderr'],
            'error_zero': me['zero'], 'error_zero_stderr': me['zero_stderr'],
            'excess_mc': me['excess'], 'excess_mc_stderr': me['excess_stderr'],
            'excess_theory': th['excess'], 'n_values': np.asarray(config.n_values),
            'floor_mc': me['floor'], 'floor_mc_stderr': me['floor_stderr'],
            'floor_theory': th['floor'],
            'covariance_diag': np.asarray(config.covariance_diag, np.float64)}
  return results.Run(metrics=met, claims=claims, arrays=arrays,
                     figures=_figures(config, me, th, met), evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=lsa_common.PAPER, reproduces='Thm 5, Cor 6')
