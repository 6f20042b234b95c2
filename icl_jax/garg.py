"""Garg et al. (2022)'s training recipe for in-context regression with a transformer.

As Zhang, Frei & Bartlett (2023, Appendix E) use it for Figure 1: a sequence of K points
(x_1, y_1, ..., x_K, y_K) with y_i = <w, x_i>, w ~ N(0, I_d), x_i ~ N(0, Lambda) where Lambda is
the identity (fixed covariance) or c diag(lambda_1..lambda_d) with lambda_i ~ Exp(1) drawn per
sequence (random covariance); the loss is the squared error of the prediction of every y_i from
the pairs before it, averaged over the positions and the batch; Adam. The curriculum starts with
few effective dimensions (the trailing coordinates of x zeroed) and few points and grows both on
a schedule.

Sequences come from `samplers.regression`: a prompt of K - 1 context points and its query is a
sequence of K points. Shapes are static: a model trained on N + 1 points, or a curriculum stage
with fewer, keeps the full length and drops the later positions from the loss. Under causal
attention the kept predictions never read the dropped tokens, so this equals training on the
shorter sequence, and a learned position that is never read keeps its initial value.

References:
  Garg, Tsipras, Liang, Valiant. What Can Transformers Learn In-Context? A Case Study of Simple
  Function Classes. NeurIPS 2022, arXiv:2208.01066 (the curriculum: Sec. 3 and their conf/).
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from icl_jax import population
from icl_jax.samplers import regression


class Curriculum(NamedTuple):
  """Garg et al.'s schedule: value(step) = min(end, start + inc * (step // interval)).

  Their linear-regression run (d = 20, 41 points): dims 5 -> 20 by 1, points 11 -> 41 by 2, both
  every 2,000 steps.
  """
  dims_start: int
  dims_inc: int
  points_start: int
  points_inc: int
  interval: int

  def dims(self, step: jax.Array, d: int) -> jax.Array:
    return jnp.minimum(d, self.dims_start + self.dims_inc * (step // self.interval))

  def points(self, step: jax.Array, k: int) -> jax.Array:
    return jnp.minimum(k, self.points_start + self.points_inc * (step // self.interval))


class Sequences(NamedTuple):
  """A batch of regression sequences: x [..., K, d], y [..., K]."""
  x: jax.Array
  y: jax.Array


def sequence(key: jax.Array, *, num_points: int, cov: jax.Array,
             dims: Optional[jax.Array] = None) -> Sequences:
  """One sequence of num_points (x_i, <w, x_i>) pairs, x_i ~ N(0, diag(cov)), w ~ N(0, I_d).

  Args:
    key: PRNG key; one sequence per key.
    num_points: K, the points in the sequence (the last is the query of a K - 1 point prompt).
    cov: [d] the diagonal of Lambda.
    dims: effective dimension (may be traced): coordinates >= dims of x and w are zero.

  Returns:
    Sequences with x [K, d] and y [K].
  """
  k_w, k_prompt = jax.random.split(key)
  d = cov.shape[-1]
  w = jax.random.normal(k_w, (d,))
  if dims is not None:
    mask = (jnp.arange(d) < dims).astype(cov.dtype)
    cov, w = cov * mask, w * mask
  p = regression.linear_prompt(k_prompt, n=num_points - 1, cov=cov, w=w)
  return Sequences(x=jnp.concatenate([p.x, p.x_query[None]], axis=0),
                   y=jnp.concatenate([p.y, p.y_query[None]], axis=0))


def covariance(key: jax.Array, d: int, random_cov: jax.Array, scale: float = 1.0) -> jax.Array:
  """The diagonal of Lambda: scale * (Exp(1) draws) if random_cov (may be traced), else scale * 1.

  Sec. 4.3 / Appendix E: Zhang et al. train with scale 1 and test with c in {1, 4, 9}.
  """
  return jnp.where(random_cov, regression.random_diagonal(key, d, 'exponential', scale),
                   jnp.full((d,), scale, jnp.float32))


def training_sequence(key: jax.Array, *, num_points: int, d: int, random_cov: jax.Array,
                      dims: Optional[jax.Array] = None) -> Sequences:
  """A training sequence: its own Lambda (`covariance`, scale 1), then `sequence`."""
  k_cov, k_seq = jax.random.split(key)
  return sequence(k_seq, num_points=num_points, cov=covariance(k_cov, d, random_cov), dims=dims)


def batch(key: jax.Array, size: int, *, mesh=None, **kwargs) -> Sequences:
  """`size` training sequences (keys fold_in(key, i)), sharded over mesh's 'data' axis if given.

  kwargs go to `training_sequence`.
  """
  keys = population.sharded_keys(key, 0, size, mesh)
  return jax.vmap(lambda k: training_sequence(k, **kwargs))(keys)


def squared_error(pred_BxK: jax.Array, y_BxK: jax.Array, points: jax.Array) -> jax.Array:
  """Mean over the batch and the first `points` positions of (pred_i - y_i)^2 (Garg's loss)."""
  k = y_BxK.shape[-1]
  weight_K = (jnp.arange(k) < points).astype(pred_BxK.dtype)
  per_pos_K = jnp.mean(jnp.square(pred_BxK - y_BxK), axis=0)
  return jnp.sum(per_pos_K * weight_K) / jnp.sum(weight_K)
