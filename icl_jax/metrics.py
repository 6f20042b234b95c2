"""Scalar summaries of a run: normalised error, bootstrap CI, log-log slope, matrix distances."""

import jax
import jax.numpy as jnp
import numpy as np


def normalized_error(error, d: int):
  """Squared error divided by d, the normalisation of Garg et al. (2022) and Fig. 1.

  With w ~ N(0, I_d) and x ~ N(0, I_d), E y^2 = d, so the zero predictor scores 1.
  """
  return error / d


def relative_frobenius(a, b):
  """||a - b||_F / ||b||_F."""
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def distance_to_scaled_identity(a):
  """min_s ||a - s I||_F / ||a||_F: how far a square matrix is from a multiple of I."""
  a = np.asarray(a)
  s = np.trace(a) / a.shape[0]
  return float(np.linalg.norm(a - s * np.eye(a.shape[0])) / np.linalg.norm(a))


def loglog_slope(x, y) -> float:
  """Least-squares slope of log y on log x."""
  lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
  return float(np.polyfit(lx, ly, 1)[0])


def loglog_slope_stderr(x, y, y_stderr) -> float:
  """Standard error of `loglog_slope` from independent errors on y (delta method, weights 1).

  The slope is linear in log y: slope = sum_i c_i log y_i with c = (lx - mean) / sum (lx - mean)^2,
  and var(log y_i) ~ (stderr_i / y_i)^2.
  """
  lx = np.log(np.asarray(x, float))
  c = (lx - lx.mean()) / np.sum(np.square(lx - lx.mean()))
  rel = np.asarray(y_stderr, float) / np.asarray(y, float)
  return float(np.sqrt(np.sum(np.square(c * rel))))


def mean_stderr(x, axis: int = -1) -> tuple:
  """(mean, standard error of the mean) of x along axis, in float64: the sample std (ddof = 1)
  over sqrt(n). Of paired differences, the stderr a paired comparison divides by."""
  x = np.asarray(x, np.float64)
  return np.mean(x, axis=axis), np.std(x, axis=axis, ddof=1) / np.sqrt(x.shape[axis])


def bootstrap_ci(key: jax.Array, values, *, num_resamples: int = 1000, level: float = 0.95):
  """Percentile bootstrap confidence interval of the mean of values: (low, high)."""
  values = jnp.asarray(values)
  idx = jax.random.randint(key, (num_resamples, values.shape[0]), 0, values.shape[0])
  means = jnp.mean(values[idx], axis=1)
  alpha = (1.0 - level) / 2.0
  return tuple(float(q) for q in jnp.quantile(means, jnp.array([alpha, 1.0 - alpha])))
