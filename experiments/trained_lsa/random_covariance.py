"""Theorem 8 and eq. (23) of Zhang, Frei & Bartlett (2023): training on random covariances.

  python -m experiments.trained_lsa.random_covariance \
      --config=experiments/trained_lsa/configs/random_covariance.py:quick --workdir=/tmp/rc

Trains the LSA layer by gradient flow on the population loss (20), exact at any d (a 2d + 1
point rule over Lambda_tau, `theory.trained_lsa.sparse_rule`) or with Lambda_tau sampled, checks
the weights against eq. (22), then scores the trained layer on new random-covariance prompts of
length M: the slope E[y_hat y] / E[y^2] of its prediction on y = <w, x_query> and its error,
each against the closed form of the Theorem 8 optimum at N = n_context.

Two readings of eq. (23) are measured. The paper averages Lambda_new with (x_query, w) fixed,
i.e. x_query independent of Lambda_new; that slope is m1 mean(D_N) -> 1/3 for Exp(1). With
x_query ~ N(0, Lambda_new), as in the training prompts (20), x_query carries Lambda_new and the
slope is m2 mean(D_N) / m1 -> 2/3 for Exp(1). Both are reported against their closed forms.

The evaluation statistics of a noiseless prompt depend on it only through S = X^T X / M, w and
x_query, so they are drawn by the Wishart sampler (`regression.random_covariance_stats`, cost
independent of M); one check samples whole prompts instead, and runs OLS on them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import common
from experiments.trained_lsa import lsa_common
from icl_jax import distributed, estimators, plotting, population, results, theory, training
from icl_jax.models import lsa
from icl_jax.samplers import regression

T = theory.trained_lsa
EXPERIMENT = 'trained_lsa/random_covariance'
QUERIES = {'independent': 'x_q independent of Lambda_new (the paper\'s reading of (23))',
           'same': 'x_q ~ N(0, Lambda_new) as in (20)'}


def validate(config) -> None:
  common.positive_int(config, 'd')
  common.positive_int(config, 'n_context')
  common.one_of(config, 'covariance_law', regression.COVARIANCE_LAWS)
  common.positive_float(config, 'covariance_scale')
  common.positive_ints(config, 'n_values', min_len=2)
  common.positive_int(config, 'm_test')
  if config.m_test < config.d:
    raise common.ConfigError(f'config.m_test={config.m_test}: must be >= config.d={config.d} '
                             '(Wishart draw of S; OLS exact on a noiseless prompt)')
  common.positive_float(config, 'model.sigma')
  lsa_common.validate_train(config)
  for field in ('eval.num_prompts', 'eval.direct_prompts', 'eval.chunk_budget_mib'):
    common.positive_int(config, field)
  sharded = ['eval.num_prompts', 'eval.direct_prompts']
  if config.train.loss == 'monte_carlo':
    sharded.append('train.batch_size')
  for field in sharded:   # Monte-Carlo batches are sharded over every device
    common.multiple_of_devices(config, field)


def _loss(config, moments, dtype, mesh):
  """(params, key) -> loss (20): exact (2d + 1 points) or over train.batch_size Lambda draws."""
  d, n = config.d, config.n_context
  if config.train.loss == 'exact':
    return lambda p, key: T.random_covariance_loss_sparse(p.w_kq, p.w_pv, moments, d, n)

  def mc(p, key):
    keys = jax.lax.with_sharding_constraint(jax.random.split(key, config.train.batch_size),
                                            distributed.batch_sharding(mesh))
    lams = jax.vmap(lambda k: regression.random_diagonal(
        k, d, config.covariance_law, config.covariance_scale))(keys).astype(dtype)
    return jnp.mean(jax.vmap(lambda lam: T.population_loss(p.w_kq, p.w_pv, lam, n))(lams))
  return mc


def _sample_both(key, **kw):
  """One prompt's statistics under each query law of QUERIES: one key, so the same Lambda, S
  and w (drawn once: XLA merges the identical draws) and a query of each law."""
  return {q: regression.random_covariance_stats(key, query=q, **kw) for q in QUERIES}


def _wishart_stats(both, params, prods_KxD, prod_fixed_D):
  """For each query law: y_hat y of x_q^T diag(D_N) S w for each N; y_hat y and (y_hat - y)^2
  of the trained layer (eq. (6), every block); (y_hat - y)^2 of the fixed-covariance optimum."""
  out = {}
  for query, stats in both.items():
    y, q = stats.y_query, stats.x_query
    s_w = stats.x_factor @ (stats.x_factor.T @ stats.w)
    y_n = (prods_KxD * q[None, :]) @ s_w
    y_t = lsa.predict_stats(params, stats)
    y_f = jnp.dot(prod_fixed_D * q, s_w)
    out.update({f'slope_n_{query}': y_n * y, f'slope_trained_{query}': y_t * y,
                f'error_trained_{query}': jnp.square(y_t - y),
                f'error_fixed_{query}': jnp.square(y_f - y)})
  return out


def _direct_stats(prompt, params):
  """The trained layer's and OLS's squared errors on a whole sampled prompt."""
  return {'direct_error_trained': jnp.square(lsa.predict(params, prompt) - prompt.y_query),
          'direct_error_ols': jnp.square(estimators.ols(prompt) - prompt.y_query)}


@functools.partial(jax.jit, static_argnames=('moments', 'd', 'n', 'n_values', 'dtype'))
def _theory(*, moments, d, n, n_values, dtype):
  """The closed forms of Theorem 8 (one compiled program, not dozens of eager ops)."""
  w_kq, w_pv = T.random_covariance_optimum(moments, d, n)
  star = lsa.Params(w_kq.astype(dtype), w_pv.astype(dtype))
  return {'w_kq_star': star.w_kq, 'w_pv_star': star.w_pv,
          'loss_optimum': T.random_covariance_loss_sparse(star.w_kq, star.w_pv, moments, d, n),
          'product': T.random_covariance_product(moments, d, n),
          'product_n': jnp.stack([T.random_covariance_product(moments, d, nn) for nn in n_values]),
          'product_fixed': 1.0 / jnp.diag(T.gamma(jnp.full((d,), moments[0]), n))}


@functools.partial(jax.jit, static_argnames=('moments', 'm'))
def _closed_forms(product, product_n, product_fixed, *, moments, m):
  """Slopes and errors the closed forms give for the theory products (for `check`)."""
  out = {}
  for i, q in enumerate(QUERIES):
    out[f'slope_trained_{q}'] = T.random_covariance_product_slopes(product, moments)[i]
    out[f'slope_n_{q}'] = T.random_covariance_product_slopes(product_n, moments)[i]
    out[f'error_trained_{q}'] = T.random_covariance_error(product, moments, m, q)
    out[f'error_fixed_{q}'] = T.random_covariance_error(product_fixed, moments, m, q)
  return out


def measure(config, workdir):
  jax.config.update('jax_enable_x64', config.train.x64)
  dtype = jnp.float64 if config.train.x64 else jnp.float32
  d, n, m = config.d, config.n_context, config.m_test
  moments = regression.law_moments(config.covariance_law, config.covariance_scale)
  mesh = distributed.data_mesh()
  key = common.jax_key(config)
  k_init, k_train, k_eval = jax.random.split(key, 3)
  del key
  theory_ = jax.tree.map(np.asarray, _theory(moments=moments, d=d, n=n, dtype=dtype,
                                             n_values=tuple(config.n_values)))
  theory_['limit_factor'] = T.limit_factor(moments)
  star = lsa.Params(theory_['w_kq_star'], theory_['w_pv_star'])
  exact = jax.jit(lambda p: T.random_covariance_loss_sparse(p.w_kq, p.w_pv, moments, d, n))
  lr = training.auto_lr(exact, star, config.train.lr, config.train.lr_fraction)
  logging.info('stage 1/3: gradient flow on (20) (%s loss), lr %.4g', config.train.loss, lr)
  params0 = jax.jit(lambda k: jax.tree.map(lambda x: x.astype(dtype),
                                           lsa.init(k, d, config.model.sigma)))(k_init)
  params, hist = training.gradient_flow(
      _loss(config, moments, dtype, mesh), params0, lr=lr, key=k_train,
      max_steps=config.train.max_steps, log_every=config.train.log_every,
      ckpt_every=config.train.ckpt_every, workdir=workdir, grad_tol=config.train.grad_tol)
  meas = {'w_kq': np.asarray(params.w_kq), 'w_pv': np.asarray(params.w_pv),
          'steps': len(hist.loss), 'grad_norm_final': float(hist.grad_norm[-1]),
          'loss_final': float(exact(params))}

  ey2 = moments[0] * d   # E y^2 = tr(E Sigma_q) = m1 d for either query
  budget, size = config.eval.chunk_budget_mib << 20, jnp.dtype(dtype).itemsize
  law = dict(d=d, law=config.covariance_law, scale=config.covariance_scale)
  passes = [  # (label, stat, sampler, args, num_samples, bytes per sample)
      (f'Wishart S, both query laws, M={m}', _wishart_stats,
       functools.partial(_sample_both, n=m, **law),
       (params, jnp.asarray(theory_['product_n'], dtype),
        jnp.asarray(theory_['product_fixed'], dtype)),
       config.eval.num_prompts, 16 * size * (d * d + len(config.n_values) * d)),
      (f'direct prompts, M={m}', _direct_stats,
       functools.partial(regression.random_covariance_prompt, n=m, query='same', **law),
       (params,), config.eval.direct_prompts, 4 * size * (m + d + 2) * (d + 1))]
  for i, (label, stat, sample, args, num, per_sample) in enumerate(passes):
    chunk = population.chunk_size(num, per_sample, budget_bytes=budget,
                                  multiple_of=jax.device_count())
    with population.progress(f'stage {i + 2}/{len(passes) + 1}: {label}'):
      mean, se = population.mc_stats(stat, sample, jax.random.fold_in(k_eval, i), args,
                                     num_samples=num, chunk=chunk, mesh=mesh)
    for k in mean:
      meas[k], meas[f'{k}_stderr'] = np.asarray(mean[k]) / ey2, np.asarray(se[k]) / ey2
  return results.Evidence(measured=meas, theory=theory_), {'params': params, 'hist': hist,
                                                           'lr': lr}


def check(config, ev):
  c, mv, th = config.claims, ev.measured, ev.theory
  moments = regression.law_moments(config.covariance_law, config.covariance_scale)
  n, m, k = config.n_context, config.m_test, c.k_stderr
  n_values = tuple(int(x) for x in config.n_values)
  met = lsa_common.weight_claims_metrics(lsa.Params(mv['w_kq'], mv['w_pv']), th['w_kq_star'],
                                         th['w_pv_star'])
  met.update({k_: float(mv[k_]) for k_ in ('steps', 'grad_norm_final', 'loss_final',
                                           'direct_error_ols')})
  met.update(loss_optimum=float(th['loss_optimum']), limit_factor_eq23=float(th['limit_factor']))
  form = jax.tree.map(np.asarray, _closed_forms(th['product'], th['product_n'],
                                                th['product_fixed'], moments=moments, m=m))
  claims = []
  if config.train.loss == 'exact':
    claims.append(lsa_common.converged_claim(met, config.train.grad_tol, ' on (20)'))
  claims += lsa_common.weight_claims(met, c, prefix='Thm 8: ', product='[E Gamma L^2]^-1 E L^2',
                                     w_kq='eq. (22) block', w_pv='eq. (22) value')
  texts = {'independent': 'm1 mean(D_N)', 'same': 'm2 mean(D_N) / m1'}
  for q, text in QUERIES.items():
    claims.append(results.stderr_claim(
        f'trained layer, {text}: slope of y_hat on <w, x_q> = {texts[q]} of the Thm 8 closed '
        f'form at N={n}', mv[f'slope_trained_{q}'], mv[f'slope_trained_{q}_stderr'],
        form[f'slope_trained_{q}'], k))
    z = np.abs(mv[f'slope_n_{q}'] - form[f'slope_n_{q}']) / mv[f'slope_n_{q}_stderr']
    claims.append(results.Claim(
        f'Lambda_new averaging of (23), {text}: the slope of x_q^T D_N S w equals {texts[q]} '
        f'at every N in {n_values}, D_N closed form on both sides (checks the averaging and the '
        f'sampler, not the trained layer; max |z| <= {k:g})', np.max(z), 0.0, k, 'at_most'))
    met[f'max_z_slope_{q}'] = float(np.max(z))
    for i, nn in enumerate(n_values):
      met[f'slope_{q}_N{nn}'] = float(mv[f'slope_n_{q}'][i])
      met[f'slope_{q}_N{nn}_theory'] = float(form[f'slope_n_{q}'][i])
    for name in (f'slope_trained_{q}', f'error_trained_{q}', f'error_fixed_{q}'):
      met[name], met[f'{name}_theory'] = float(mv[name]), float(form[name])
  i_max = int(np.argmax(n_values))
  claims += [
      results.stderr_claim(
          f'trained layer, x_q ~ N(0, Lambda_new): normalised error on new prompts (M={m}, '
          'Wishart S) = closed form of the Thm 8 optimum', mv['error_trained_same'],
          mv['error_trained_same_stderr'], met['error_trained_same_theory'], k),
      results.Claim(
          f'eq. (23): slope -> E L^2 [E L^3]^-1 E L = {th["limit_factor"]:.4g} as N, M grow '
          f'(slope at N={n_values[i_max]}, x_q independent of Lambda_new)',
          mv['slope_n_independent'][i_max], th['limit_factor'], c.limit_tol),
      results.stderr_claim(
          f'direct prompt sampling (M={m}, x_q ~ N(0, Lambda_new)): trained layer\'s normalised '
          'error = closed form of the Thm 8 optimum', mv['direct_error_trained'],
          mv['direct_error_trained_stderr'], met['error_trained_same_theory'], k),
      results.Claim(f'OLS on noiseless direct prompts with M={m} >= d is exact: normalised '
                    'error ~ 0 (rounding)', mv['direct_error_ols'], 0.0, c.ols_tol, 'at_most'),
  ]
  return claims, met


def run(config, workdir) -> results.Run:
  evidence, aux = measure(config, workdir)
  claims, met = check(config, evidence)
  mv, th = evidence.measured, evidence.theory
  params, hist, lr = aux['params'], aux['hist'], aux['lr']
  met['lr'] = lr
  n_values = np.asarray(config.n_values)
  arrays = lsa_common.flow_arrays(params, hist, th['w_kq_star'], th['w_pv_star'])
  arrays['n_values'] = n_values
  curves, errs = {}, {}
  for q, label in (('independent', 'x_q indep. of Lambda'), ('same', 'x_q ~ N(0, Lambda)')):
    arrays[f'slope_{q}_query'] = curves[f'{label} (MC)'] = mv[f'slope_n_{q}']
    arrays[f'slope_{q}_query_stderr'] = errs[f'{label} (MC)'] = mv[f'slope_n_{q}_stderr']
    arrays[f'slope_{q}_query_theory'] = curves[f'{label}: closed form'] = np.array(
        [met[f'slope_{q}_N{nn}_theory'] for nn in n_values])
  factor = float(th['limit_factor'])
  figures = lsa_common.flow_figures(
      params, hist, lr, th['w_kq_star'], th['w_pv_star'], met['loss_optimum'], theory='eq. (22)',
      loss_title='Gradient flow (Thm 8)', loss_xlabel='time t', loss_ylabel='excess loss (20)',
      weights_title='Learned vs Theorem 8 weights')
  figures['slope_vs_n.png'] = plotting.curves(
      n_values, curves, errs=errs, styles={k: {'ls': '--'} for k in curves if 'closed' in k},
      hlines={f'eq. (23) limit {factor:.3g} (LSA)': factor}, logx=True,
      xlabel='training prompt length N', ylabel='slope of y_hat on <w, x_q>',
      title=f'Thm 8 optima, {config.covariance_law} covariances, d={config.d}, M={config.m_test}')
  return results.Run(metrics=met, claims=claims, arrays=arrays, figures=figures,
                     evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=lsa_common.PAPER,
                 reproduces='Thm 8, eq. (23)')
