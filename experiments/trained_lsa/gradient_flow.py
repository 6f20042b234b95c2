"""Theorem 4 of Zhang, Frei & Bartlett (2023): gradient flow reaches the closed-form optimum.

  python -m experiments.trained_lsa.gradient_flow \
      --config=experiments/trained_lsa/configs/gradient_flow.py:quick --workdir=/tmp/gf

Stage 1: gradient flow (small-step gradient descent) from the Assumption 3 initialisation on the
population loss (8) with an anisotropic Lambda, exact or Monte-Carlo, until |grad L| is below
train.grad_tol; W_KQ, W_PV are checked against eq. (11). On the exact loss the blocks Thm 4 sets
to zero get an exactly zero gradient all the way, so no claim is made about them there.

Stage 2: SGD from the same start on fresh sampled prompts every step (Wishart statistics), whose
noise excites those blocks. The mean of its last sgd.window iterates must be within k predicted
standard deviations of the optimum, the std coming from the linearised tail-average covariance
(`sgd.tail_average_forms`) and the per-prompt gradients at the optimum (stage 3, Monte
Carlo, independent of the SGD run). The SGD is preconditioned by P = diag(H)^-1, H the Hessian of
(8) at the optimum: plain SGD's step is capped by the stiff w21^KQ directions (eigenvalues up to
4936 at d = 20, N = 100) while w21^PV relaxes at 0.03, a condition number of 1.5e5; with P, 17.
"""

import functools
import os

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from experiments.trained_lsa import lsa_common
from icl_jax import distributed, plotting, population, results, sgd, theory, training
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
  for field in ('batch_size', 'steps', 'window', 'log_every', 'ckpt_every', 'noise_prompts'):
    common.positive_int(config, f'sgd.{field}')
  common.multiple_of(config, 'sgd.steps', 'sgd.log_every')
  common.multiple_of(config, 'sgd.ckpt_every', 'sgd.log_every')
  if config.sgd.window >= config.sgd.steps:
    raise common.ConfigError(f'config.sgd.window={config.sgd.window}: must be below '
                             f'config.sgd.steps={config.sgd.steps} (a burn-in must precede it)')
  common.multiple_of_devices(config, 'sgd.noise_prompts')
  for field in ('sgd.lr_fraction', 'sgd.chunk_budget_mib', 'claims.sgd_k_std'):
    common.positive_float(config, field)


def batch_loss(sample, batch_size: int):
  """(params, key) -> mean squared error (7) over batch_size prompts drawn from key."""

  def loss(p, key):
    stats = jax.vmap(sample)(jax.random.split(key, batch_size))
    return jnp.mean(jax.vmap(lsa.squared_error_stats, in_axes=(None, 0))(p, stats))
  return loss


def zero_blocks(p: lsa.Params):
  """The entries Thm 4 sets to 0 as scale-invariant numbers: w22^PV x W_KQ's, W_PV's / w22^PV.

  The prediction (6) is unchanged by W_KQ s, W_PV / s, so these (and w22^PV W11^KQ) are what a
  trained layer determines; a run is compared with the optimum on them, whatever its scale.
  """
  d = p.w_kq.shape[0] - 1
  kq, pv = lsa_common.zero_block_mask(d)
  c = p.w_pv[d, d]
  return jnp.concatenate([c * p.w_kq[kq], p.w_pv[pv] / c])


def noise_stat(stats, star, forms, live):
  """g^T Q_k g for the per-prompt gradient g at the optimum (live coordinates): [len(forms)]."""
  g = jax.grad(lsa.squared_error_stats)(star, stats)
  g = jax.flatten_util.ravel_pytree(g)[0][live]
  return jnp.einsum('i,kij,j->k', g, forms, g)


def _flow_lr(config, hess: np.ndarray) -> float:
  """train.lr, or lr_fraction / the top eigenvalue of hess (at the optimum) where the flow moves.

  On the exact loss from Assumption 3 the gradient of every block but W11^KQ and w22^PV is
  exactly 0 (Thm 4's proof), so the flow stays there and only the Hessian there bounds a stable
  step: at d = 20, N = 100 its top eigenvalue is 32, against 4936 in the w21^KQ directions the flow
  never enters (156x fewer steps). A Monte-Carlo loss leaves that subspace: the full Hessian.
  """
  if config.train.lr > 0:
    return config.train.lr
  d = config.d
  moves = np.zeros((2, d + 1, d + 1), bool)
  moves[0, :d, :d] = moves[1, d, d] = True
  moves = moves.ravel() if config.train.loss == 'exact' else np.ones(hess.shape[0], bool)
  return config.train.lr_fraction / np.linalg.eigvalsh(hess[np.ix_(moves, moves)])[-1]


def measure(config, workdir):
  jax.config.update('jax_enable_x64', config.train.x64)
  d, n, s = config.d, config.n_context, config.sgd
  cov = lsa_common.covariance(config)
  key = common.jax_key(config)
  k_init, k_train, k_sgd, k_noise = jax.random.split(key, 4)
  del key
  params0 = jax.tree.map(lambda x: x.astype(cov.dtype), lsa.init(k_init, d, config.model.sigma))
  star = lsa.Params(*T.optimum(cov, n))

  def exact(p):
    return T.population_loss(p.w_kq, p.w_pv, cov, n)

  sample = functools.partial(regression.sample_linear_stats, n=n, cov=cov)
  flat, unravel = jax.flatten_util.ravel_pytree(star)
  hess = np.asarray(jax.jit(jax.hessian(lambda v: exact(unravel(v))))(flat), np.float64)
  theory_ = {'w_kq_star': np.asarray(star.w_kq), 'w_pv_star': np.asarray(star.w_pv),
             'loss_optimum': float(exact(star))}
  # Stage 1: gradient flow.
  loss = (lambda p, key: exact(p)) if config.train.loss == 'exact' else batch_loss(
      sample, config.train.batch_size)
  lr = _flow_lr(config, hess)
  params, hist = training.gradient_flow(
      loss, params0, lr=lr, key=k_train, max_steps=config.train.max_steps,
      log_every=config.train.log_every, ckpt_every=config.train.ckpt_every, workdir=workdir,
      grad_tol=config.train.grad_tol)
  measured = {'w_kq': np.asarray(params.w_kq), 'w_pv': np.asarray(params.w_pv), 'lr': lr,
              'steps': len(hist.loss), 'grad_norm_final': float(hist.grad_norm[-1]),
              'converged': float(hist.converged)}

  # Stage 2: SGD on sampled prompts, preconditioned by P = diag(H)^-1 at the optimum.
  precond, top = sgd.jacobi_preconditioner(hess)
  lr_sgd = s.lr_fraction / top
  inner = optax.chain(sgd.scale_elementwise(unravel(jnp.asarray(precond, cov.dtype))),
                      optax.sgd(lr_sgd))
  start = sgd.Averaged(params0, jax.tree.map(jnp.zeros_like, params0))
  avg, sgd_hist = training.fit(
      lambda a, key: batch_loss(sample, s.batch_size)(a.params, key), start,
      sgd.tail_averaged(inner, s.steps - s.window), key=k_sgd, max_steps=s.steps,
      log_every=s.log_every, ckpt_every=s.ckpt_every, workdir=os.path.join(workdir, 'sgd'))
  measured.update(sgd_w_kq=np.asarray(avg.mean.w_kq), sgd_w_pv=np.asarray(avg.mean.w_pv),
                  sgd_lr=lr_sgd)

  # Stage 3: the predicted noise of that tail average, from per-prompt gradients at the optimum.
  jacs = [np.asarray(jax.jit(jax.jacobian(lambda v, f=f: f(unravel(v)).ravel()))(flat))
          for f in (lsa.product, zero_blocks)]
  forms = sgd.tail_average_forms(hess, precond, lr_sgd, s.window, jacs)
  idx = np.flatnonzero(precond)
  # Per prompt: the Wishart factor, the gradient and the two forms applied to it (x4 headroom).
  chunk = population.chunk_size(s.noise_prompts,
                                4 * cov.dtype.itemsize * (flat.size + 3 * idx.size + 2 * d * d),
                                budget_bytes=int(s.chunk_budget_mib) << 20,
                                multiple_of=jax.device_count())
  with population.progress('stage 3/3: per-prompt gradient noise at the Thm 4 optimum'):
    mean, se = population.mc_stats(
        noise_stat, sample, k_noise,
        (star, jnp.asarray(forms[:, idx][:, :, idx], cov.dtype), jnp.asarray(idx)),
        num_samples=s.noise_prompts, chunk=chunk, mesh=distributed.data_mesh())
  for i, name in enumerate(('product', 'zero')):
    theory_[f'sgd_{name}_var'] = float(mean[i]) / s.batch_size
    theory_[f'sgd_{name}_var_stderr'] = float(se[i]) / s.batch_size
  aux = {'params': params, 'hist': hist, 'avg': avg, 'sgd_hist': sgd_hist}
  return results.Evidence(measured=measured, theory=theory_), aux


def check(config, ev):
  c, mv, th, d = config.claims, ev.measured, ev.theory, config.d
  params = lsa.Params(mv['w_kq'], mv['w_pv'])
  met = lsa_common.weight_claims_metrics(params, th['w_kq_star'], th['w_pv_star'])
  met.update({k: float(mv[k]) for k in ('steps', 'lr', 'grad_norm_final', 'converged', 'sgd_lr')})
  cov = lsa_common.covariance(config)
  loss_final = float(T.population_loss(jnp.asarray(mv['w_kq'], cov.dtype),
                                       jnp.asarray(mv['w_pv'], cov.dtype), cov, config.n_context))
  loss_star = float(th['loss_optimum'])
  met.update({'loss_final': loss_final, 'loss_optimum': loss_star,
              'loss_rel_gap': abs(loss_final - loss_star) / loss_star,
              'time_t': met['lr'] * met['steps'],
              'balancedness': float(np.sum(mv['w_kq'][:d, :d]**2) - mv['w_pv'][d, d]**2)})
  claims = [lsa_common.converged_claim(met, config.train.grad_tol)]
  claims += lsa_common.weight_claims(
      met, c, product='Gamma^-1', w_kq='tr(Gamma^-2)^(-1/4) Gamma^-1',
      w_pv='tr(Gamma^-2)^(1/4)', ref=', eq. 11')
  claims.append(results.Claim('final loss equals the loss of the Thm 4 optimum (relative gap)',
                              met['loss_rel_gap'], 0.0, c.loss_rel_tol, 'at_most'))

  # SGD: the tail average vs the optimum, on scale-invariant numbers, within k predicted stds.
  sgd = lsa.Params(np.asarray(mv['sgd_w_kq'], np.float64), np.asarray(mv['sgd_w_pv'], np.float64))
  prod_star = th['w_pv_star'][d, d] * np.asarray(th['w_kq_star'], np.float64)[:d, :d]
  norm = np.linalg.norm(prod_star)
  std_p, std_z = np.sqrt(th['sgd_product_var']), np.sqrt(th['sgd_zero_var'])
  met.update({'sgd_product_rel_error': float(np.linalg.norm(lsa.product(sgd) - prod_star) / norm),
              'sgd_product_rel_std': float(std_p / norm),
              'sgd_zero_blocks_norm': float(np.linalg.norm(zero_blocks(sgd))),
              'sgd_zero_blocks_std': float(std_z)})
  met['sgd_product_error_in_stds'] = met['sgd_product_rel_error'] / met['sgd_product_rel_std']
  met['sgd_zero_blocks_in_stds'] = met['sgd_zero_blocks_norm'] / std_z
  k, s = c.sgd_k_std, config.sgd
  run = f'SGD on sampled prompts (B={s.batch_size}, mean of the last {s.window} of {s.steps} steps)'
  claims += [
      results.Claim(f'{run}: ||w22^PV W11^KQ - Gamma^-1||_F / ||Gamma^-1||_F within {k:g} x its '
                    'predicted std', met['sgd_product_rel_error'], 0.0,
                    k * met['sgd_product_rel_std'], 'at_most'),
      results.Claim(f'{run}: the blocks Thm 4 sets to zero, ||(w22^PV W_KQ, W_PV / w22^PV) on '
                    f'them||, within {k:g} x its predicted std', met['sgd_zero_blocks_norm'], 0.0,
                    k * std_z, 'at_most')]
  return claims, met


def _product_rel_error(traj, prod_star):
  d = prod_star.shape[0]
  prod = traj.w_pv[:, d, d][:, None, None] * traj.w_kq[:, :d, :d]
  return np.linalg.norm(prod - prod_star, axis=(1, 2)) / np.linalg.norm(prod_star)


def run(config, workdir) -> results.Run:
  evidence, aux = measure(config, workdir)
  claims, met = check(config, evidence)
  th, d = evidence.theory, config.d
  params, hist, avg, sgd_hist = aux['params'], aux['hist'], aux['avg'], aux['sgd_hist']
  w_kq_star, w_pv_star, lr = th['w_kq_star'], th['w_pv_star'], met['lr']
  prod_star = w_pv_star[d, d] * w_kq_star[:d, :d]
  prod_err = _product_rel_error(hist.trajectory, prod_star)
  sgd_err = {name: _product_rel_error(getattr(sgd_hist.trajectory, field), prod_star)
             for name, field in (('SGD iterate', 'params'), ('tail mean', 'mean'))}
  arrays = lsa_common.flow_arrays(params, hist, w_kq_star, w_pv_star)
  arrays.update(trajectory_product_rel_error=prod_err, covariance_diag=config.covariance_diag,
                sgd_w_kq=avg.mean.w_kq, sgd_w_pv=avg.mean.w_pv, sgd_last_w_kq=avg.params.w_kq,
                sgd_last_w_pv=avg.params.w_pv, sgd_loss=sgd_hist.loss,
                sgd_trajectory_steps=sgd_hist.trajectory_steps,
                sgd_trajectory_product_rel_error=sgd_err['SGD iterate'])
  figures = lsa_common.flow_figures(
      params, hist, lr, w_kq_star, w_pv_star, th['loss_optimum'], theory='Thm 4',
      loss_title=f'Gradient flow, d={d}, N={config.n_context} (Thm 4)',
      loss_xlabel='time t = lr x step', loss_ylabel='excess population loss',
      weights_title='Learned vs Theorem 4 weights')
  figures['product_error.png'] = plotting.curves(
      lr * hist.trajectory_steps, {'||w22 W11 - Gamma^-1||_F / ||Gamma^-1||_F': prod_err},
      xlabel='time t', ylabel='relative error', logy=True, title='Convergence to Gamma^-1')
  started = sgd_hist.trajectory_steps > config.sgd.steps - config.sgd.window
  sgd_err['tail mean'] = sgd_err['tail mean'][started]
  figures['sgd.png'] = plotting.curves(
      sgd_hist.trajectory_steps, sgd_err, xs={'tail mean': sgd_hist.trajectory_steps[started]},
      ylabel='||w22 W11 - Gamma^-1||_F / ||Gamma^-1||_F', xlabel='SGD step', logy=True,
      hlines={f'{config.claims.sgd_k_std:g} x predicted std of the tail mean':
              config.claims.sgd_k_std * met['sgd_product_rel_std']},
      title=f'SGD on sampled prompts, B={config.sgd.batch_size}')
  return results.Run(metrics=met, claims=claims, arrays=arrays, figures=figures,
                     evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=lsa_common.PAPER, reproduces='Thm 4')
