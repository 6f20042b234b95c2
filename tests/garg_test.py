"""Tests of icl_jax.garg: the curriculum, the sequences and the position-masked loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import garg


def test_curriculum_follows_garg_schedule():
  """Garg et al.'s d = 20 run: dims 5 -> 20 by 1 and points 11 -> 41 by 2, every 2,000 steps."""
  cur = garg.Curriculum(5, 1, 11, 2, 2000)
  steps = jnp.array([0, 1999, 2000, 29_999, 30_000, 500_000])
  np.testing.assert_array_equal(cur.dims(steps, 20), [5, 5, 6, 19, 20, 20])
  np.testing.assert_array_equal(cur.points(steps, 41), [11, 11, 13, 39, 41, 41])


def test_sequences_are_noiseless_linear_with_masked_dims():
  """y = <w, x> exactly: OLS on the first 8 points (d = 4) predicts the rest to rounding;
  coordinates past `dims` are zero; the identity law has unit variance per coordinate."""
  s = garg.batch(jax.random.key(0), 512, num_points=12, d=4, random_cov=False, dims=3)
  x, y = np.asarray(s.x, np.float64), np.asarray(s.y, np.float64)
  assert x.shape == (512, 12, 4) and y.shape == (512, 12)
  assert np.all(x[..., 3] == 0)
  w = np.stack([np.linalg.lstsq(a[:8], b[:8], rcond=None)[0] for a, b in zip(x, y)])
  np.testing.assert_allclose(np.einsum('bkd,bd->bk', x[:, 8:], w), y[:, 8:], atol=1e-4)
  # 512 * 12 draws per coordinate: the sample variance is 1 within ~5 * sqrt(2 / 6144) = 0.09.
  np.testing.assert_allclose(x[..., :3].reshape(-1, 3).var(0), 1.0, atol=0.09)


def test_random_covariance_is_one_draw_per_sequence():
  """With random_cov the coordinate variances differ per sequence (Exp(1) draws, mean 1), shared
  by the sequence's points: the per-sequence variance of x_1 over 4,000 points tracks its own
  lambda, so the spread across sequences is far larger than the sampling error."""
  s = garg.batch(jax.random.key(1), 64, num_points=4000, d=2, random_cov=True)
  var = np.asarray(s.x).var(axis=1)                 # [64, 2]
  assert np.std(var) > 0.5                          # Exp(1): std 1; sampling error ~0.02
  assert 0.6 < np.mean(var) < 1.4                   # mean 1, stderr 1 / sqrt(128) ~ 0.09


def test_squared_error_reads_only_the_first_points():
  pred = jnp.array([[1.0, 2.0, 30.0], [3.0, 4.0, 50.0]])
  y = jnp.zeros((2, 3))
  assert float(garg.squared_error(pred, y, 2)) == pytest.approx((1 + 4 + 9 + 16) / 4)
  assert float(garg.squared_error(pred, y, 3)) == pytest.approx(
      (1 + 4 + 900 + 9 + 16 + 2500) / 6)
