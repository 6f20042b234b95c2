"""Pieces the trained-LSA apps share: config checks for (d, N, Lambda) and the lr rule."""

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from icl_jax import theory
from icl_jax.models import lsa

T = theory.trained_lsa


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


def flat_hessian_max_eig(loss, params) -> float:
  """Largest eigenvalue of the Hessian of loss at params (params flattened)."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  hess = jax.hessian(lambda v: loss(unravel(v)))(flat)
  return float(np.max(np.linalg.eigvalsh(np.asarray(hess, np.float64))))


def auto_lr(loss, optimum_params, lr: float, lr_fraction: float) -> float:
  """lr if set, else lr_fraction / lambda_max(Hessian at the optimum): a stable GD step size.

  Gradient descent is stable near the optimum for lr < 2 / lambda_max; the default fraction
  0.5 keeps the discrete path close to the flow.
  """
  if lr > 0:
    return lr
  return lr_fraction / flat_hessian_max_eig(loss, optimum_params)


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


def covariance(config):
  return jnp.asarray(config.covariance_diag, dtype=jnp.float64 if config.train.x64
                     else jnp.float32)
