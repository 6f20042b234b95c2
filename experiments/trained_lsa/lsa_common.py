"""Pieces the trained-LSA apps share: config checks for (d, N, Lambda), and the metrics, claims,
arrays and figures of a gradient-flow run against a closed-form optimum."""


import jax.numpy as jnp
import numpy as np

from experiments import common
from icl_jax import plotting, results, theory, training
from icl_jax.models import lsa

T = theory.trained_lsa
PAPER = 'zhang_frei_bartlett_2023'  # the `paper` every trained-LSA app writes to results.json


def validate_problem(config) -> None:
  """d, n_context and covariance_diag: positive, and the diagonal has d entries."""
  common.positive_int(config, 'd')
  common.positive_int(config, 'n_context')
  common.covariance_diag(config, 'covariance_diag', config.d)


def validate_train(config) -> None:
  common.one_of(config, 'train.loss', ('exact', 'monte_carlo'))
  for field in ('train.batch_size', 'train.max_steps', 'train.log_every', 'train.ckpt_every'):
    common.positive_int(config, field)
  common.multiple_of(config, 'train.max_steps', 'train.log_every')
  common.multiple_of(config, 'train.ckpt_every', 'train.log_every')
  common.positive_float(config, 'train.lr_fraction')
  common.positive_float(config, 'train.grad_tol')
  if config.train.lr < 0:
    raise common.ConfigError(f'config.train.lr={config.train.lr}: must be >= 0 (0 = automatic)')


def zero_block_mask(d: int) -> tuple[np.ndarray, np.ndarray]:
  """Masks of the entries Theorem 4 / Theorem 8 send to zero: all but W_11^KQ and w_22^PV."""
  kq = np.ones((d + 1, d + 1), bool)
  kq[:d, :d] = False
  pv = np.ones((d + 1, d + 1), bool)
  pv[d, d] = False
  return kq, pv


def weight_claims_metrics(params: lsa.Params, w_kq_star, w_pv_star) -> dict:
  """Distances of learned weights to an optimum of the Thm 4 / Thm 8 form."""
  d = params.w_kq.shape[0] - 1
  w_kq, w_pv = np.asarray(params.w_kq), np.asarray(params.w_pv)
  w_kq_star, w_pv_star = np.asarray(w_kq_star), np.asarray(w_pv_star)
  kq_mask, pv_mask = zero_block_mask(d)
  scale = max(np.abs(w_kq_star).max(), np.abs(w_pv_star).max())
  prod_star = w_pv_star[d, d] * w_kq_star[:d, :d]
  return {
      'product_rel_error': float(np.linalg.norm(lsa.product(params) - prod_star)
                                 / np.linalg.norm(prod_star)),
      'w_kq_block_rel_error': float(np.linalg.norm(w_kq[:d, :d] - w_kq_star[:d, :d])
                                    / np.linalg.norm(w_kq_star[:d, :d])),
      'w_pv_22_rel_error': float(abs(w_pv[d, d] - w_pv_star[d, d]) / abs(w_pv_star[d, d])),
      'zero_blocks_max_rel': float(max(np.abs(w_kq[kq_mask]).max(), np.abs(w_pv[pv_mask]).max())
                                   / scale),
  }


def flow_metrics(params: lsa.Params, hist: training.History, lr: float, w_kq_star,
                 w_pv_star) -> dict:
  """`weight_claims_metrics` plus the run's steps, lr, final gradient norm and convergence."""
  met = weight_claims_metrics(params, w_kq_star, w_pv_star)
  met.update({'steps': len(hist.loss), 'lr': lr, 'grad_norm_final': float(hist.grad_norm[-1]),
              'converged': float(hist.converged)})
  return met


def converged_claim(met: dict, grad_tol: float, loss: str = '') -> results.Claim:
  """The flow stopped on |grad L| <= grad_tol, not on the step cap; loss names L (' on (20)')."""
  return results.Claim(f'gradient flow{loss} converged: |grad L| <= train.grad_tol within the '
                       'step cap', met['grad_norm_final'], grad_tol, 0.0, 'at_most')


def weight_claims(met: dict, claims_config, *, product: str, w_kq: str, w_pv: str,
                  zero_by: str | None = None, ref: str = '', prefix: str = ''
                  ) -> list[results.Claim]:
  """The claims on learned weights vs an optimum of the Thm 4 / Thm 8 form.

  Args:
    met: from `weight_claims_metrics` (or `flow_metrics`).
    claims_config: with product_rel_tol, block_rel_tol (and zero_block_tol with zero_by).
    product, w_kq, w_pv: how the claims name the targets of w22^PV W11^KQ, W11^KQ and w22^PV.
    zero_by: what sets the other blocks to zero ('Thm 4', 'eq. (22)'); None leaves that claim
      out, as it must be for a run where it cannot fail (the exact loss from the Assumption 3
      start keeps those blocks exactly 0).
    ref: appended inside the parentheses of the block claims (', eq. 11').
    prefix: opens every claim ('Thm 8: ').
  """
  c = claims_config
  claims = [
      results.Claim(f'{prefix}w22^PV W11^KQ -> {product} (relative Frobenius error)',
                    met['product_rel_error'], 0.0, c.product_rel_tol, 'at_most'),
      results.Claim(f'{prefix}W11^KQ -> {w_kq} (relative Frobenius error{ref})',
                    met['w_kq_block_rel_error'], 0.0, c.block_rel_tol, 'at_most'),
      results.Claim(f'{prefix}w22^PV -> {w_pv} (relative error{ref})',
                    met['w_pv_22_rel_error'], 0.0, c.block_rel_tol, 'at_most'),
  ]
  if zero_by is not None:
    claims.append(results.Claim(
        f'{prefix}blocks {zero_by} sets to zero stay near zero (max |entry| / max |W*|)',
        met['zero_blocks_max_rel'], 0.0, c.zero_block_tol, 'at_most'))
  return claims


def flow_arrays(params: lsa.Params, hist: training.History, w_kq_star, w_pv_star) -> dict:
  """Final and theory weights, loss and gradient-norm curves, and the logged trajectory."""
  return {'w_kq': params.w_kq, 'w_pv': params.w_pv, 'loss': hist.loss,
          'grad_norm': hist.grad_norm, 'w_kq_theory': w_kq_star, 'w_pv_theory': w_pv_star,
          'trajectory_steps': hist.trajectory_steps, 'trajectory_w_kq': hist.trajectory.w_kq,
          'trajectory_w_pv': hist.trajectory.w_pv}


def flow_figures(params: lsa.Params, hist: training.History, lr: float, w_kq_star, w_pv_star,
                 loss_star: float, *, theory: str, loss_title: str, loss_xlabel: str,
                 loss_ylabel: str, weights_title: str) -> dict:
  """'loss.png' (excess loss vs time lr x step) and 'weights.png' (learned vs `theory` weights)."""
  t = lr * np.arange(1, len(hist.loss) + 1)
  return {
      'loss.png': plotting.curves(
          t, {'L(theta_t) - L(theta*)': np.maximum(hist.loss - loss_star, 1e-12)},
          xlabel=loss_xlabel, ylabel=loss_ylabel, logy=True, title=loss_title),
      'weights.png': plotting.heatmaps(
          {'learned W_KQ': params.w_kq, f'{theory} W_KQ*': w_kq_star,
           'learned W_PV': params.w_pv, f'{theory} W_PV*': w_pv_star}, title=weights_title),
  }


def covariance(config):
  return jnp.asarray(config.covariance_diag, dtype=jnp.float64 if config.train.x64
                     else jnp.float32)
