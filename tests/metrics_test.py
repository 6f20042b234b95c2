"""Tests of icl_jax.metrics."""

import jax
import numpy as np
import pytest

from icl_jax import metrics


def test_loglog_slope_of_exact_power_law():
  """y = 3 x^-1.5 has log-log slope -1.5 exactly (rtol 1e-10: float64 polyfit)."""
  x = np.array([10.0, 20.0, 40.0, 80.0, 160.0])
  assert metrics.loglog_slope(x, 3 * x**-1.5) == pytest.approx(-1.5, rel=1e-10)


def test_loglog_slope_stderr():
  """Delta method: with relative errors r_i on y, se = sqrt(sum c_i^2 r_i^2); for two points
  c = +-1 / (lx_2 - lx_1). Fails on a wrong normalisation of c."""
  x, y = np.array([1.0, np.e]), np.array([1.0, 2.0])
  se = metrics.loglog_slope_stderr(x, y, y * 0.1)
  assert se == pytest.approx(np.sqrt(2) * 0.1, rel=1e-10)


def test_bootstrap_ci_covers_the_mean_and_shrinks():
  """The 95% percentile-bootstrap CI of the mean contains the sample mean, is ordered, has
  width about 2 * 1.96 sd / sqrt(n) (within 20%: bootstrap noise with 2000 resamples), and the
  same key gives the same interval."""
  values = np.random.default_rng(0).normal(1.0, 2.0, size=400)
  key = jax.random.key(0)
  lo, hi = metrics.bootstrap_ci(key, values, num_resamples=2000)
  assert lo < values.mean() < hi
  expected_width = 2 * 1.96 * values.std() / np.sqrt(values.size)
  assert hi - lo == pytest.approx(expected_width, rel=0.2)
  assert (lo, hi) == metrics.bootstrap_ci(key, values, num_resamples=2000)


def test_relative_frobenius():
  """||a - b||_F / ||b||_F on a hand-computed case: a - b = [[0, 3], [4, 0]], ||b|| = 10."""
  b = np.array([[6.0, 0.0], [0.0, 8.0]])
  a = b + np.array([[0.0, 3.0], [4.0, 0.0]])
  assert metrics.relative_frobenius(a, b) == pytest.approx(0.5)
  assert metrics.relative_frobenius(b, b) == 0.0


def test_distance_to_scaled_identity():
  """0 for a multiple of I; for diag(1, 3) the closest s I is 2 I, distance sqrt(2)/sqrt(10)."""
  assert metrics.distance_to_scaled_identity(5 * np.eye(3)) == pytest.approx(0.0, abs=1e-12)
  assert metrics.distance_to_scaled_identity(np.diag([1.0, 3.0])) == pytest.approx(
      np.sqrt(2 / 10))


def test_normalized_error():
  """Error / d: the zero predictor's d scores 1."""
  assert metrics.normalized_error(20.0, 20) == 1.0


def test_mean_stderr():
  """[1, 2, 3, 4]: mean 2.5, sample std sqrt(5/3) (ddof = 1), stderr sqrt(5/3) / 2; along axis 1
  of a stack, row by row. Fails on ddof = 0 (stderr 0.559) or the wrong axis."""
  mean, se = metrics.mean_stderr([1.0, 2.0, 3.0, 4.0])
  assert mean == 2.5 and abs(se - np.sqrt(5 / 3) / 2) < 1e-12
  mean, se = metrics.mean_stderr(np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]), axis=1)
  np.testing.assert_allclose(mean, [2.5, 2.0])
  np.testing.assert_allclose(se, [np.sqrt(5 / 3) / 2, 0.0], atol=1e-15)
