"""Preconditioned SGD with a tail (Polyak-Ruppert) average, and the predicted noise of that average.

What a practitioner runs (SGD on fresh Monte-Carlo batches) next to the gradient flow of the
theory: `tail_averaged` and `scale_elementwise` are optax transformations for `training.fit`,
`jacobi_preconditioner` picks a diagonal preconditioner and the stable step from the Hessian at
the optimum, and `tail_average_forms` predicts, before any run, the spread of the tail average
around the optimum, from which a claim's tolerance is fixed.

References:
  Polyak, Juditsky. Acceleration of stochastic approximation by averaging. SIAM J. Control
  Optim. 30(4), 1992.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Averaged(NamedTuple):
  """What `tail_averaged` trains: the iterate, and the running mean of its tail."""
  params: Any   # the SGD iterate
  mean: Any     # mean of the iterates after updates start+1 .. now (0 before)


def tail_averaged(inner: optax.GradientTransformation, start: int
                  ) -> optax.GradientTransformation:
  """`inner` on `Averaged.params`, and the mean of its iterates after update `start` in `.mean`.

  The tail (Polyak-Ruppert) average of SGD (Polyak & Juditsky 1992). Carried in the trained
  pytree, it is checkpointed, resumed and returned with it by `training.fit`; the loss reads
  `.params` only, so `.mean` gets a zero gradient and moves by this transform alone. A running
  mean, not a sum, keeps rounding at eps over a long tail.
  """

  def init(avg: Averaged):
    return inner.init(avg.params), jnp.zeros((), jnp.int32)

  def update(grads: Averaged, state, avg: Averaged):
    inner_state, count = state
    updates, inner_state = inner.update(grads.params, inner_state, avg.params)
    count = count + 1
    weight = jnp.where(count > start, 1.0 / jnp.maximum(count - start, 1), 0.0)
    to_mean = jax.tree.map(lambda m, p, u: weight.astype(m.dtype) * (p + u - m),
                           avg.mean, avg.params, updates)
    return Averaged(updates, to_mean), (inner_state, count)

  return optax.GradientTransformation(init, update)


def scale_elementwise(scales) -> optax.GradientTransformation:
  """Multiplies the updates by a fixed pytree of factors (a diagonal preconditioner)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(jnp.multiply, updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def jacobi_preconditioner(hess: np.ndarray) -> tuple[np.ndarray, float]:
  """P = diag(H)^-1 and lambda_max(P^1/2 H P^1/2), the curvature that bounds a stable SGD step.

  P is 0 where H's diagonal is (numerically) 0: coordinates the loss never reads (in the LSA
  layer, all of W_PV but its last row and the last column of W_KQ), whose gradient is always 0.
  """
  h_diag = np.diag(hess)
  live = h_diag > 1e-9 * h_diag.max()
  precond = np.where(live, 1.0 / np.where(live, h_diag, 1.0), 0.0)
  p_half = np.sqrt(precond[live])
  top = np.linalg.eigvalsh(p_half[:, None] * hess[np.ix_(live, live)] * p_half[None, :])[-1]
  return precond, float(top)


def tail_average_forms(hess: np.ndarray, precond: np.ndarray, lr: float, window: int,
                       jacobians) -> np.ndarray:
  """Quadratic forms giving the noise of the tail average of preconditioned SGD near a minimum.

  SGD theta <- theta - lr P (g_1 + ... + g_B) / B with per-prompt gradients g (E g = 0 and
  E g g^T = Sigma at theta*), linearised at theta*: e <- (I - lr P H) e - lr P xi,
  Cov xi = Sigma / B. With M = P^1/2 H P^1/2 = U diag(mu) U^T each mode psi_i = (U^T P^-1/2 e)_i
  is an AR(1) process with a_i = 1 - lr mu_i, and from stationarity the mean of `window`
  consecutive iterates has
    Cov(psi_bar)_ij = (U^T P^1/2 Sigma P^1/2 U)_ij K_ij / B,
    K_ij = lr^2 (W + F(a_i) + F(a_j)) / (W^2 (1 - a_i a_j)),
    F(a) = sum_{k<W} (W - k) a^k = a (W (1 - a) - (1 - a^W)) / (1 - a)^2,
  which tends to Polyak-Juditsky's H^-1 Sigma H^-1 / (B W) for W >> 1 / (lr mu_min). So for a
  metric linearised as J e, E ||J e_bar||^2 = E[g^T Q g] / B with
    Q = P^1/2 U ((U^T P^1/2 J^T J P^1/2 U) o K) U^T P^1/2,
  an expectation over single prompts at theta*, independent of any training run. Modes with
  mu = 0 (the scaling symmetry W_KQ c, W_PV / c of the LSA layer) get no noise, as per-prompt
  gradients are orthogonal to them; the metrics used with this are invariant along them.

  Args:
    hess: [m, m] Hessian of the population loss at theta* (float64).
    precond: [m] diagonal of P; 0 freezes a coordinate (one whose gradient is identically 0).
    lr: the SGD step.
    window: W, the number of iterates averaged (the last ones of the run).
    jacobians: [r_k, m] Jacobians J_k at theta* of the metrics, one per metric.

  Returns:
    [len(jacobians), m, m] the forms Q_k.
  """
  live = precond > 0
  p_half = np.sqrt(precond[live])
  mu, u = np.linalg.eigh(p_half[:, None] * hess[np.ix_(live, live)] * p_half[None, :])
  if lr * mu.max() >= 2.0:
    raise ValueError(f'lr={lr} is unstable: lr * max eigenvalue of P H = {lr * mu.max():.3g} >= 2')
  a = 1.0 - lr * mu
  moving = mu > 1e-9 * mu.max()
  w = float(window)
  am = np.where(moving, a, 0.0)
  f = np.where(moving, am * (w * (1.0 - am) - (1.0 - am**window)) / (1.0 - am)**2, 0.0)
  denom = 1.0 - am[:, None] * am[None, :]
  kernel = lr**2 * (w + f[:, None] + f[None, :]) / (w**2 * np.where(denom > 0, denom, 1.0))
  kernel *= np.outer(moving, moving)
  left = p_half[:, None] * u                    # e = P^1/2 U psi on the live coordinates
  forms = np.zeros((len(jacobians),) + hess.shape)
  for k, jac in enumerate(jacobians):
    jp = np.asarray(jac, np.float64)[:, live] @ left
    forms[k][np.ix_(live, live)] = left @ ((jp.T @ jp) * kernel) @ left.T
  return forms
