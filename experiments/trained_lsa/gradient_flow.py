"""Theorem 4 of Zhang, Frei & Bartlett (2023): gradient flow reaches the closed-form optimum.

  python -m experiments.trained_lsa.gradient_flow \
      --config=experiments/trained_lsa/configs/gradient_flow.py:quick --workdir=/tmp/gf

Runs gradient flow (small-step gradient descent) from the Assumption 3 initialisation on the
population loss (8) with an anisotropic Lambda, exact or Monte-Carlo, until the gradient norm is
below train.grad_tol, then checks the learned W_KQ, W_PV against eq. (11).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.trained_lsa import lsa_common
from icl_jax import plotting, results, theory, training
from icl_jax.models import lsa
from icl_jax.samplers import regression

T = theory.trained_lsa
EXPERIMENT = 'trained_lsa/gradient_flow'


def validate(config) -> None:
  lsa_common.validate_problem(config)
  lsa_common.validate_train(config)
  common.positive_float(config, 'model.sigma')
  g = np.asarray(T.gamma(np.asarray(config.covariance_diag, np.float64), config.n_context))
  bound = np.sqrt(2.0 / (np.linalg.norm(g, 2) * np.sqrt(config.d)))
  if not config.model.sigma < bound:
    raise common.ConfigError(
        f'config.model.sigma={config.model.sigma}: Theorem 4 needs '
        f'sigma^2 ||Gamma||_op sqrt(d) < 2, i.e. sigma < {bound:.4g} here')


def make_loss(config, cov):
  """(params, key) -> population loss: exact (8), or Monte Carlo on fresh prompts each step."""
  n = config.n_context
  if config.train.loss == 'exact':
    return lambda p, key: T.population_loss(p.w_kq, p.w_pv, cov, n)
  sample = functools.partial(regression.sample_linear_stats, n=n, cov=cov)

  def mc(p, key):
    stats = jax.vmap(sample)(jax.random.split(key, config.train.batch_size))
    return jnp.mean(jax.vmap(lsa.squared_error_stats, in_axes=(None, 0))(p, stats))
  return mc


def run(config, workdir) -> dict:
  jax.config.update('jax_enable_x64', config.train.x64)
  d, n = config.d, config.n_context
  cov = lsa_common.covariance(config)
  key = common.jax_key(config)
  k_init, k_train = jax.random.split(key)
  del key
  params0 = lsa.init(k_init, d, config.model.sigma)
  params0 = jax.tree.map(lambda x: x.astype(cov.dtype), params0)
  w_kq_star, w_pv_star = T.optimum(cov, n)
  star = lsa.Params(w_kq=w_kq_star, w_pv=w_pv_star)

  def exact(p):
    return T.population_loss(p.w_kq, p.w_pv, cov, n)

  lr = training.auto_lr(exact, star, config.train.lr, config.train.lr_fraction)
  params, hist = training.gradient_flow(
      make_loss(config, cov), params0, lr=lr, key=k_train, max_steps=config.train.max_steps,
      log_every=config.train.log_every, ckpt_every=config.train.ckpt_every, workdir=workdir,
      grad_tol=config.train.grad_tol)

  m = lsa_common.flow_metrics(params, hist, lr, w_kq_star, w_pv_star)
  loss_final, loss_star = float(exact(params)), float(exact(star))
  m.update({'loss_final': loss_final, 'loss_optimum': loss_star,
            'loss_rel_gap': abs(loss_final - loss_star) / loss_star,
            'time_t': lr * len(hist.loss),
            'balancedness': float(jnp.sum(params.w_kq[:d, :d]**2) - params.w_pv[d, d]**2)})
  claims = [lsa_common.converged_claim(m, config.train.grad_tol)]
  claims += lsa_common.weight_claims(
      m, config.claims, product='Gamma^-1', w_kq='tr(Gamma^-2)^(-1/4) Gamma^-1',
      w_pv='tr(Gamma^-2)^(1/4)', zero_by='Thm 4', ref=', eq. 11')
  claims.append(results.Claim('final loss equals the loss of the Thm 4 optimum (relative gap)',
                              m['loss_rel_gap'], 0.0, config.claims.loss_rel_tol, 'at_most'))

  traj = hist.trajectory
  g_inv = jnp.linalg.inv(T.gamma(cov, n))
  prod_traj = traj.w_pv[:, d, d][:, None, None] * traj.w_kq[:, :d, :d]
  prod_err = np.linalg.norm(prod_traj - np.asarray(g_inv), axis=(1, 2)) / np.linalg.norm(g_inv)
  arrays = lsa_common.flow_arrays(params, hist, w_kq_star, w_pv_star)
  arrays.update({'trajectory_product_rel_error': prod_err, 'covariance_diag': cov})
  figures = lsa_common.flow_figures(
      params, hist, lr, w_kq_star, w_pv_star, loss_star, theory='Thm 4',
      loss_title=f'Gradient flow, d={d}, N={n} (Thm 4)', loss_xlabel='time t = lr x step',
      loss_ylabel='excess population loss', weights_title='Learned vs Theorem 4 weights')
  figures['product_error.png'] = plotting.curves(
      lr * hist.trajectory_steps, {'||w22 W11 - Gamma^-1||_F / ||Gamma^-1||_F': prod_err},
      xlabel='time t', ylabel='relative error', logy=True, title='Convergence to Gamma^-1')
  return results.Run(metrics=m, claims=claims, arrays=arrays, figures=figures)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=lsa_common.PAPER,
                 reproduces='Thm 4')
