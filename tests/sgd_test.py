"""Tests of icl_jax.sgd: the tail average's bookkeeping and its predicted noise."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_jax import sgd

H = np.array([[4.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 0.3]])   # SPD, condition ~20
SIGMA = np.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]])  # per-sample gradient cov


def test_tail_averaged_is_the_mean_of_the_last_iterates():
  """With plain SGD inside, `.mean` after T updates equals the mean of iterates start+1 .. T
  computed directly (rtol 1e-5, float32 running mean); `.params` is the plain SGD iterate.
  Fails on an off-by-one window or a sum in place of a mean."""
  grads = jax.random.normal(jax.random.key(0), (12, 3))
  opt = sgd.tail_averaged(optax.sgd(0.1), start=4)
  avg = sgd.Averaged(jnp.zeros(3), jnp.zeros(3))
  state = opt.init(avg)
  iterates, p = [], np.zeros(3)
  for g in grads:
    updates, state = opt.update(sgd.Averaged(g, jnp.zeros(3)), state, avg)
    avg = optax.apply_updates(avg, updates)
    p = p - 0.1 * np.asarray(g)
    iterates.append(p)
  np.testing.assert_allclose(avg.params, p, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(avg.mean, np.mean(iterates[4:], axis=0), rtol=1e-5, atol=1e-6)


def test_tail_average_forms_predict_simulated_sgd():
  """Linear SGD e <- e - lr P (H e + xi), xi ~ N(0, Sigma / B), simulated for 4,000 independent
  runs from e = 0 after a burn-in: the mean squared error of the tail mean, J e_bar with J = I
  and J = the first row, matches tr(Q Sigma) / B from tail_average_forms within 4 Monte-Carlo
  standard errors (~2%). Polyak-Juditsky's limit H^-1 Sigma H^-1 / (B W) is 35% off at this
  window, and a form that ignores the preconditioner, the finite window or the AR(1)
  correlations misses by more than that."""
  lr, batch, window, burn = 0.3, 4, 40, 200
  precond, top = sgd.jacobi_preconditioner(H)
  assert lr * top < 2
  jacs = [np.eye(3), np.eye(3)[:1]]
  forms = sgd.tail_average_forms(H, precond, lr, window, jacs)
  predicted = np.array([np.trace(q @ SIGMA) for q in forms]) / batch
  chol = np.linalg.cholesky(SIGMA / batch)

  def run(key):
    def step(e, k):
      e = e - lr * precond * (H @ e + chol @ jax.random.normal(k, (3,)))
      return e, e
    _, path = jax.lax.scan(step, jnp.zeros(3), jax.random.split(key, burn + window))
    e_bar = path[burn:].mean(0)
    return jnp.stack([jnp.sum(e_bar**2), e_bar[0]**2])

  with jax.enable_x64():
    sq = np.asarray(jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(1), 4000)))
  mean, se = sq.mean(0), sq.std(0) / np.sqrt(len(sq))
  np.testing.assert_array_less(np.abs(mean - predicted), 4 * se)
  pj = np.trace(np.linalg.inv(H) @ SIGMA @ np.linalg.inv(H)) / (batch * window)
  assert abs(pj - predicted[0]) > 8 * se[0], (pj, predicted[0], se[0])
