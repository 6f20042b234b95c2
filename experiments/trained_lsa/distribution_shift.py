"""Sec. 4.2 of Zhang, Frei & Bartlett (2023): the trained LSA layer under distribution shift.

  python -m experiments.trained_lsa.distribution_shift \
      --config=experiments/trained_lsa/configs/distribution_shift.py:quick --workdir=/tmp/ds

The Theorem 4 optimum (eq. (11)) on test prompts off its training law, Monte Carlo vs closed
forms. Task shift: noisy labels, ||w|| = 5 sqrt(d) (Thm 5); a ReLU network at M = 2d (Thm 5 from
its moments, sampled independently; its excess over the best linear error must clear the
tolerance). Query shift: x_query ~ N(0, Q) (exact error); orthogonal to span{x_i}, M < d
(y_hat = 0 for Lambda = I, not for an anisotropic Lambda, which the paper's wording omits).
Covariate shift: x ~ N(0, c^2 Lambda) (slope c^2 tr(Gamma^-1 Lambda^2) / tr(Lambda), OLS 1).
Linear tasks use reduced prompts (`regression.shift_prompts`: X^T X, X^T y at a cost free of M;
the optimum reads only (1/M) X^T y, eq. (13)); the ReLU and orthogonal prompts are short; the
covariate claims run `lsa.predict`, `estimators.ols` on direct length-M prompts.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.trained_lsa import lsa_common
from icl_jax import distributed, estimators, plotting, population, results, theory
from icl_jax.models import lsa
from icl_jax.samplers import regression

T = theory.trained_lsa
EXPERIMENT = 'trained_lsa/distribution_shift'
MOMENT_BATCH = 64   # (x, y) draws per Monte-Carlo unit of the moment pass (matmul-sized work)


def _chunks(config) -> dict:
  """Chunk of each Monte-Carlo pass from its per-sample float32 footprint (x4 for temporaries)."""
  d, w, e, c = config.d, config.task.relu_width, config.eval, config.covariate
  passes = {'moments': (config.task.moment_samples // MOMENT_BATCH, MOMENT_BATCH * (w + 2 * d)),
            'test': (e.num_prompts, (len(e.m_curve) + 5) * (d + 2)**2
                     + (config.task.m_nonlinear + 1) * (w + 2 * d)),
            'orth': (config.query.num_prompts, 4 * config.query.m_orthogonal * d),
            'covariate': (c.num_prompts, (len(c.scales) + 1) * (e.m_test + 1) * (d + 1))}
  return {k: population.chunk_size(num, 16 * b, budget_bytes=config.eval.chunk_mib << 20,
                                   multiple_of=jax.device_count())
          for k, (num, b) in passes.items()}


def validate(config) -> None:
  lsa_common.validate_problem(config)
  for f in ('eval.m_test', 'eval.num_prompts', 'eval.chunk_mib', 'task.relu_width',
            'task.m_nonlinear', 'task.moment_samples', 'query.m_orthogonal', 'query.num_prompts',
            'covariate.num_prompts'):
    common.positive_int(config, f)
  for f in ('task.noise_std', 'task.large_w_norm', 'claims.k_stderr', 'claims.ols_slope_tol',
            'claims.nonlinear_min_excess_tols', 'claims.orthogonal_rel_tol',
            'claims.orthogonal_aniso_min_ratio', 'claims.query_normalized_error_tol'):
    common.positive_float(config, f)
  common.positive_ints(config, 'eval.m_curve')
  common.positive_floats(config, 'covariate.scales')
  d, e, m_orth, n_mom = config.d, config.eval, config.query.m_orthogonal, config.task.moment_samples
  common.covariance_diag(config, 'query.query_cov_diag', d)
  for bad, msg in ((min(*e.m_curve, e.m_test) < d, f'config.eval.m_curve={e.m_curve!r}, '
                    f'config.eval.m_test={e.m_test}: every length must be >= d = {d}'),
                   (not 0 < m_orth < d, f'config.query.m_orthogonal={m_orth}: must be in 1..d-1 '
                    f'= 1..{d - 1} (a query orthogonal to the context span must exist)'),
                   (n_mom % MOMENT_BATCH, f'config.task.moment_samples={n_mom}: must be a '
                    f'multiple of {MOMENT_BATCH}')):
    if bad:
      raise common.ConfigError(msg)
  try:
    _chunks(config)
  except ValueError as err:
    raise common.ConfigError(f'config.eval.chunk_mib={config.eval.chunk_mib} with '
                             f'{jax.device_count()} devices: {err}') from None


def _errors(params, p, ols=True) -> dict:
  """Squared errors of the optimum, OLS and zero. A reduced prompt goes through eq. (13),
  x_q^T (w22 W11) (1/M) X^T y (the optimum has no other block), and its triangular solve."""
  if isinstance(p, regression.ReducedPrompt):
    y_lsa = p.x_query @ lsa.product(params) @ (p.x.T @ p.y) / p.n
    y_ols = lambda: p.x_query @ p.least_squares()  # noqa: E731
  else:
    y_lsa, y_ols = lsa.predict(params, p), lambda: estimators.ols(p)
  out = {'lsa': jnp.square(y_lsa - p.y_query), 'zero': jnp.square(p.y_query)}
  return {**out, 'ols': jnp.square(y_ols() - p.y_query)} if ols else out


def _test_prompts(key, *, m_curve, m, cov, q_cov, w_noisy, w_large, noise_std, m_nl, label_fn):
  """Reduced task- and query-shift prompts at M = m (one draw), the noisy task at every M of the
  curve, and the ReLU task at M = m_nl (materialised)."""
  k_shift, k_nl, *k_curve = jax.random.split(key, 2 + len(m_curve))
  p = regression.shift_prompts(k_shift, n=m, cov=cov, query_covs={'query_shift': q_cov},
                               tasks={'noisy': (w_noisy, noise_std), 'large': (w_large, 0.0)})
  p['noisy_curve'] = [p['noisy'] if mi == m else regression.reduced_linear_prompt(
      k, n=mi, cov=cov, w=w_noisy, noise_std=noise_std) for k, mi in zip(k_curve, m_curve)]
  p['nonlinear'] = regression.labelled_prompt(k_nl, n=m_nl, cov=cov, label_fn=label_fn)
  return p


def _test_stats(p, params):
  curve = [_errors(params, q) for q in p['noisy_curve']]
  return {'noisy_curve': jax.tree.map(lambda *v: jnp.stack(v), *curve),
          **{k: _errors(params, p[k], ols=k in ('noisy', 'nonlinear')) for k in (
              'noisy', 'large', 'query_shift', 'nonlinear')}}


def _orth_stats(p, params):   # [Lambda = I, Lambda]
  return {'yhat2': jnp.square(jax.vmap(lsa.predict)(params, p)), 'yq2': jnp.square(p.y_query)}


def _covariate_stats(prompt, params, scales):
  """Slope numerator a = y_hat y, denominator b = y^2, and the moments of its delta method."""
  def one(c):
    p = regression.scale_covariates(prompt, c)
    a, b = lsa.predict(params, p) * p.y_query, jnp.square(p.y_query)
    return {'a': a, 'b': b, 'aa': a * a, 'ab': a * b, 'bb': b * b,
            'ols': estimators.ols(p) * p.y_query}
  return jax.vmap(one)(scales)


def _moment_stats(x_BxD, coeffs, label_fn):
  """Batch means of (y^2, x y, y^2 x x^T) of the ReLU task, and coeffs . them (delta method)."""
  phi = T.label_moment_estimates(x_BxD, jax.vmap(label_fn)(x_BxD))
  return {'phi': phi, 'lin': sum(jnp.sum(coeffs[k] * phi[k]) for k in phi)}


@functools.partial(jax.jit, static_argnames=('n', 'm', 'm_curve'))
def _theory(cov, q_cov, w_noisy, w_large, noise_std, scales, *, n, m, m_curve):
  """Every closed form of the linear claims, in one compiled call."""
  return {'noisy': T.test_error_linear(cov, n, m, w_noisy, noise_std),
          'noisy_curve': jnp.stack([T.test_error_linear(cov, n, mi, w_noisy, noise_std)
                                    for mi in m_curve]),
          'large': T.test_error_linear(cov, n, m, w_large, 0.0),
          'query_shift': T.shifted_query_error(cov, n, m, q_cov),
          'slope': jax.vmap(lambda s: T.covariate_shift_slope(cov, n, s))(jnp.square(scales))}


def measure(config, workdir):
  del workdir  # nothing to checkpoint: a closed-form model and Monte Carlo
  d, n, m, m_nl = config.d, config.n_context, config.eval.m_test, config.task.m_nonlinear
  k_w, k_large, k_net, k_mom, k_test, k_orth, k_cov = jax.random.split(common.jax_key(config), 7)
  u, cov = jax.random.normal(k_large, (d,)), jnp.asarray(config.covariance_diag, jnp.float32)
  s = {'covariance_diag': cov, 'w_noisy': jax.random.normal(k_w, (d,)),
       'query_cov_diag': jnp.asarray(config.query.query_cov_diag, jnp.float32),
       'w_large': config.task.large_w_norm * np.sqrt(d) * u / jnp.linalg.norm(u)}
  label_fn = regression.relu_network(k_net, d, config.task.relu_width)
  m_curve, chunks, mesh = tuple(config.eval.m_curve), _chunks(config), distributed.data_mesh()
  scales = jnp.asarray(config.covariate.scales, jnp.float32)
  th = _theory(cov, s['query_cov_diag'], s['w_noisy'], s['w_large'], config.task.noise_std,
               scales, n=n, m=m, m_curve=m_curve)
  params, iso = lsa.Params(*T.optimum(cov, n)), lsa.Params(*T.optimum(jnp.ones_like(cov), n))

  def mc(name, stat_fn, sample, key, args, num, fn=population.mc_stats):
    return jax.device_get(fn(stat_fn, sample, key, args, num_samples=num, chunk=chunks[name],
                             mesh=mesh))

  with population.progress('stage 1/4: ReLU-task moments (mean, then delta-method stderr)'):
    stat = functools.partial(_moment_stats, label_fn=label_fn)
    num = config.task.moment_samples // MOMENT_BATCH
    sample = lambda k: regression.gaussian(k, MOMENT_BATCH, cov)  # noqa: E731
    zeros = {'yy': jnp.zeros(()), 'xy': jnp.zeros(d), 'yyxx': jnp.zeros((d, d))}
    mom = mc('moments', stat, sample, k_mom, (zeros,), num)[0]['phi']
    nl, grad = jax.value_and_grad(lambda phi: T.test_error_moments(
        cov, n, m_nl, phi['yy'], phi['xy'], phi['yyxx']))(mom)
    nl_se = mc('moments', stat, sample, k_mom, (grad,), num)[1]['lin']
  a_nl, sigma_nl, best_nl = T.label_moments(cov, mom['yy'], mom['xy'], mom['yyxx'])
  th.update(nonlinear=nl, nonlinear_stderr=nl_se, nonlinear_best=best_nl,
            nonlinear_second_moment=mom['yy'], nonlinear_a=a_nl, nonlinear_sigma=sigma_nl)
  with population.progress(f'stage 2/4: linear tasks (reduced, M <= {m}), ReLU (M = {m_nl})'):
    sample = functools.partial(
        _test_prompts, m_curve=m_curve, m=m, cov=cov, q_cov=s['query_cov_diag'], m_nl=m_nl,
        w_noisy=s['w_noisy'], w_large=s['w_large'], noise_std=config.task.noise_std,
        label_fn=label_fn)
    mean, se = mc('test', _test_stats, sample, k_test, (params,), config.eval.num_prompts)
  with population.progress(f'stage 3/4: orthogonal query (M = {config.query.m_orthogonal})'):
    sample = functools.partial(regression.orthogonal_query_prompts, n=config.query.m_orthogonal,
                               covs=jnp.stack([jnp.ones_like(cov), cov]))
    both = jax.tree.map(lambda *v: jnp.stack(v), iso, params)   # each Lambda with its optimum
    orth = [mc('orth', _orth_stats, sample, k_orth, (both,), config.query.num_prompts, f)
            for f in (population.mc_stats, population.mc_max)]
  with population.progress(f'stage 4/4: covariate shift, direct prompts of length M = {m}'):
    sample = functools.partial(regression.linear_prompt, n=m, cov=cov)
    cv = mc('covariate', _covariate_stats, sample, k_cov, (params, scales),
            config.covariate.num_prompts)[0]
  measured = {'orth_max_abs_yhat': np.sqrt(orth[1]['yhat2']),
              **{f'orth_{k}': v for k, v in orth[0][0].items()},
              **{f'{name}_{est}{sfx}': v for sfx, part in (('', mean), ('_stderr', se))
                 for name in part for est, v in part[name].items()}}
  slope = cv['a'] / cv['b']   # the delta method for a ratio of means, at the measured ratio
  var = cv['aa'] - 2 * slope * cv['ab'] + slope**2 * cv['bb']
  measured.update(slope_lsa=slope, slope_ols=cv['ols'] / cv['b'],
                  slope_lsa_stderr=np.sqrt(var / config.covariate.num_prompts) / cv['b'])
  return results.Evidence(measured=jax.tree.map(np.asarray, measured),
                          theory=jax.tree.map(np.asarray, jax.device_get(th))), s


def check(config, evidence):
  me, th, cl, m, m_nl = (evidence.measured, evidence.theory, config.claims, config.eval.m_test,
                         config.task.m_nonlinear)
  Claim = results.Claim  # noqa: N806

  def mc(text, name, **kw):
    return results.stderr_claim(text, me[f'{name}_lsa'], me[f'{name}_lsa_stderr'], th[name],
                                cl.k_stderr, **kw)

  nl = mc(f'task shift, ReLU-network labels (width {config.task.relu_width}): LSA error = Thm 5 '
          f'at M={m_nl} with a, Sigma, best-linear error from {config.task.moment_samples} '
          'independent draws (stderr combines both samples; delta method)', 'nonlinear',
          expected_stderr=th['nonlinear_stderr'])
  met = {'nonlinear_excess_lsa': me['nonlinear_lsa'] - th['nonlinear_best'],
         'nonlinear_excess_theory': th['nonlinear'] - th['nonlinear_best'],
         'orthogonal_iso_max_rel': me['orth_max_abs_yhat'][0] / np.sqrt(me['orth_yq2'][0]),
         'orthogonal_aniso_rms_rel': np.sqrt(me['orth_yhat2'][1] / me['orth_yq2'][1]),
         'query_shift_normalized_error_lsa': me['query_shift_lsa'] / me['query_shift_zero']}
  claims = [
      mc(f'task shift, noisy labels (s={config.task.noise_std:g}, fixed w): LSA error = Thm 5 '
         f'eq. (16) at M={m}, N={config.n_context}', 'noisy'),
      nl,
      Claim('task shift, ReLU-network labels: the LSA error exceeds the best-linear error by at '
            f'least {cl.nonlinear_min_excess_tols:g} x the tolerance of the claim above (Thm 5 '
            f'predicts {met["nonlinear_excess_theory"]:.3g} at M={m_nl}), so that claim tells '
            'eq. (16) apart from "LSA error = best-linear error"', met['nonlinear_excess_lsa'],
            cl.nonlinear_min_excess_tols * nl.tolerance, 0.0, 'at_least'),
      mc(f'task shift, fixed w with ||w|| = {config.task.large_w_norm:g} sqrt(d): LSA error = '
         'Thm 5', 'large'),
      Claim(f'query shift, query orthogonal to the span of M={config.query.m_orthogonal} < '
            f'd={config.d} points, Lambda = I: y_hat = 0 (max |y_hat| / RMS y_query; float32 '
            'rounding)', met['orthogonal_iso_max_rel'], 0.0, cl.orthogonal_rel_tol, 'at_most'),
      Claim('query shift, orthogonal query, anisotropic Lambda: y_hat is NOT 0 (RMS y_hat / RMS '
            'y_query): the paper says 0 without requiring Lambda = I, but Gamma^-1 x_query is '
            'not orthogonal to span{x_i}', met['orthogonal_aniso_rms_rel'],
            cl.orthogonal_aniso_min_ratio, 0.0, 'at_least'),
      mc('query shift, x_query ~ N(0, diag(query_cov_diag)), w ~ N(0, I): LSA error = exact '
         'shifted-query error', 'query_shift'),
      Claim(f'query shift: y_hat still ~ <w, x_query> at M={m} (E(y_hat - y)^2 / E y^2; the '
            'zero predictor scores 1)', met['query_shift_normalized_error_lsa'], 0.0,
            cl.query_normalized_error_tol, 'at_most')]
  claims += [results.stderr_claim(
      f'covariate shift c={c:g}: slope of y_hat on <w, x_q> = c^2 tr(Gamma^-1 Lambda^2) / '
      f'tr(Lambda) (c^2 = {c**2:g} as N -> inf; direct prompts, delta-method stderr)',
      me['slope_lsa'][i], me['slope_lsa_stderr'][i], th['slope'][i], cl.k_stderr)
             for i, c in enumerate(config.covariate.scales)]
  claims.append(Claim(f'covariate shift: the OLS slope stays 1 for every c in '
                      f'{tuple(config.covariate.scales)} (max |slope - 1|)',
                      np.max(np.abs(me['slope_ols'] - 1.0)), 0.0, cl.ols_slope_tol, 'at_most'))
  scalars = {**me, **{f'{k}_theory': v for k, v in th.items()}, **met}
  return claims, {k: float(v) for k, v in scalars.items() if np.ndim(v) == 0}


def run(config, workdir) -> results.Run:
  evidence, arrays = measure(config, workdir)
  claims, met = check(config, evidence)
  me, th, n, s = evidence.measured, evidence.theory, config.n_context, config.task.noise_std
  c2 = np.square(config.covariate.scales)
  grid = np.linspace(0.0, 1.05 * c2.max(), 50)
  slope_grid = grid * float(T.covariate_shift_slope(arrays['covariance_diag'], n, 1.0))
  lsa_mc, ols_mc, theory, limit = 'LSA (Monte Carlo)', 'OLS (Monte Carlo)', f'theory, N={n}', \
      'c^2 (N -> inf)'
  dots = {lsa_mc: {'marker': 'o', 'ls': 'none'}, ols_mc: {'marker': 's', 'ls': '--'},
          theory: {'color': 'k', 'lw': 1}, limit: {'color': 'gray', 'ls': ':'}}
  figures = {
      'covariate_shift.png': plotting.curves(
          c2, {lsa_mc: me['slope_lsa'], ols_mc: me['slope_ols'], theory: slope_grid,
               limit: grid}, xs={theory: grid, limit: grid}, errs={lsa_mc: me['slope_lsa_stderr']},
          styles=dots, xlabel='c^2 (test covariates ~ N(0, c^2 Lambda))',
          ylabel='slope of y_hat on <w, x_query>',
          title=f'Covariate shift, d={config.d}, N={n}, M={config.eval.m_test} (Sec. 4.2)'),
      'noisy_error_vs_m.png': plotting.curves(
          config.eval.m_curve, {lsa_mc: me['noisy_curve_lsa'], theory: th['noisy_curve'],
                                ols_mc: me['noisy_curve_ols']},
          errs={lsa_mc: me['noisy_curve_lsa_stderr'], ols_mc: me['noisy_curve_ols_stderr']},
          styles=dots, hlines={'best linear error s^2': s**2}, logx=True, logy=True,
          xlabel='test prompt length M', ylabel='E (y_hat - y_query)^2',
          title=f'Task shift: noisy labels s={s:g}, d={config.d}, N={n} (Thm 5)')}
  arrays.update(c2=c2, c2_grid=grid, slope_theory_grid=slope_grid,
                m_curve=np.asarray(config.eval.m_curve),
                **{f'{part}_{k}': v for part in ('measured', 'theory')
                   for k, v in getattr(evidence, part).items()})
  return results.Run(metrics=met, claims=claims, arrays=arrays, figures=figures,
                     evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=lsa_common.PAPER, reproduces='Thm 5, Sec. 4.2')
