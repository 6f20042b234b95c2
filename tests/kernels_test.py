"""Tests of icl_jax.kernels: the activations h~ of eq. (12) with the mask M of eq. (2), the
softmax of Example 3, the label kernels of eq. (11) and the composite kernel of Appendix D.

Truth is NumPy float64 written from the paper's formulas, never the library's own functions.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import kernels

RNG = np.random.default_rng(0)
D = 5
U = RNG.standard_normal((6, D)).astype(np.float32)        # 6 points (rows)
W = RNG.standard_normal((4, D)).astype(np.float32)        # 4 points (rows)
SCORES = RNG.standard_normal((6, 4)).astype(np.float32)  # [keys, queries]
MASK = np.array([True, True, False, True, True, False])  # keys 2 and 5: padded / the query

# float32 entries from float32 arithmetic against float64 truth: a few ulps of O(1) values.
RTOL = 1e-6
ATOL = 1e-6


def _np_activation(name, s):
  s = np.asarray(s, np.float64)
  return {'linear': s, 'relu': np.maximum(s, 0.0), 'exp': np.exp(s)}[name]


@pytest.mark.parametrize('name', ['linear', 'relu', 'exp'])
def test_entrywise_activations_equal_formula_and_zero_masked_keys(name):
  """M h~(S) for linear (S), relu (max(S, 0)) and exp (exp(S)): unmasked rows are the formula,
  masked rows (the query, padded slots) exactly 0. Fails on a wrong activation, a mask applied
  to queries instead of keys, or masked weights that are merely small."""
  got = np.asarray(kernels.attention_weights(name, jnp.asarray(SCORES), jnp.asarray(MASK)))
  want = np.where(MASK[:, None], _np_activation(name, SCORES), 0.0)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  assert np.all(got[~MASK] == 0.0)
  # No mask: every key acts.
  got_all = np.asarray(kernels.attention_weights(name, jnp.asarray(SCORES)))
  np.testing.assert_allclose(got_all, _np_activation(name, SCORES), rtol=RTOL, atol=ATOL)


def test_softmax_normalises_over_unmasked_keys_only():
  """Example 3's masked softmax: w_ij = exp(S_ij) / sum_{k unmasked} exp(S_kj) for unmasked key
  i, exactly 0 for masked keys; each query's column sums to 1 over the unmasked keys. The masked
  keys are given huge scores (50): if they entered the normaliser (or the max shift) the
  unmasked weights would collapse towards 0. Fails on a softmax over all keys, over queries
  (axis 1) or on masked keys with non-zero weight."""
  scores = SCORES.copy()
  scores[~MASK] = 50.0
  got = np.asarray(kernels.attention_weights('softmax', jnp.asarray(scores), jnp.asarray(MASK)))
  e = np.exp(scores.astype(np.float64)) * MASK[:, None]
  want = e / e.sum(axis=0, keepdims=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)   # exp of float32: ~1e-7 rel
  assert np.all(got[~MASK] == 0.0)
  np.testing.assert_allclose(got.sum(axis=0), 1.0, rtol=1e-6)


def test_softmax_is_shift_stable():
  """Scores of +-200 (exp overflows float32 beyond ~88): the masked softmax is still finite and
  equals the float64 formula (it subtracts the max over the unmasked keys). Fails on a naive
  exp(S) / sum exp(S)."""
  scores = SCORES * 200.0
  got = np.asarray(kernels.attention_weights('softmax', jnp.asarray(scores), jnp.asarray(MASK)))
  s = np.where(MASK[:, None], scores.astype(np.float64), -np.inf)
  e = np.exp(s - s.max(axis=0, keepdims=True))
  np.testing.assert_allclose(got, e / e.sum(axis=0, keepdims=True), rtol=1e-5, atol=1e-6)


def test_linear_relu_exp_kernels_equal_formulas():
  """eq. (11): K_lin = <u, w>, K_relu = max(<u, w>, 0), K_exp = exp(<u, w> / sigma^2) for
  sigma = 1 and sigma = 1.7 (the bandwidth divides the inner product by sigma^2, not sigma).
  The default second argument is the first (the Gram matrix of Definition 3.3), which must be
  symmetric. Fails on a transposed Gram, a missing relu, or the bandwidth entering as sigma."""
  ip = U.astype(np.float64) @ W.astype(np.float64).T
  np.testing.assert_allclose(kernels.gram('linear', U, W), ip, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(kernels.gram('relu', U, W), np.maximum(ip, 0.0), rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_allclose(kernels.gram('exp', U, W), np.exp(ip), rtol=1e-5)
  np.testing.assert_allclose(kernels.gram('exp', U, W, bandwidth=1.7), np.exp(ip / 1.7**2),
                             rtol=1e-5)
  uu = U.astype(np.float64) @ U.astype(np.float64).T
  for name, f in (('linear', lambda a: a), ('relu', lambda a: np.maximum(a, 0)),
                  ('exp', np.exp)):
    got = np.asarray(kernels.gram(name, U))
    assert got.shape == (6, 6)
    np.testing.assert_allclose(got, f(uu), rtol=1e-5, atol=ATOL)
    np.testing.assert_array_equal(got, got.T)


def test_composite_kernel_equals_appendix_d_formula():
  """Appendix D / Prop D.1: K = alpha <G1 u, G1 w> + (1 - alpha) exp(<G2 u, G2 w> / sigma^2)
  with the issue's G1 = diag(1,1,0,0,0), G2 = diag(0,0,1,1,1), alpha = 0.3, sigma^2 = 2 (Fig 4
  text); also dense non-symmetric G's (G applied as G u, not u G). Defaults alpha = 1/2,
  G = I. Fails on alpha and 1 - alpha swapped, G transposed, or a G applied to only one side."""
  u, w = U.astype(np.float64), W.astype(np.float64)
  g1 = np.diag([1.0, 1, 0, 0, 0])
  g2 = np.diag([0.0, 0, 1, 1, 1])
  dense1 = RNG.standard_normal((D, D)) * 0.5
  dense2 = RNG.standard_normal((D, D)) * 0.5
  for a1, a2, alpha, bw in ((g1, g2, 0.3, np.sqrt(2.0)), (dense1, dense2, 0.8, 1.3)):
    want = (alpha * (u @ a1.T) @ (w @ a1.T).T
            + (1 - alpha) * np.exp((u @ a2.T) @ (w @ a2.T).T / bw**2))
    got = kernels.gram('composite', U, W, alpha=alpha, g1=jnp.asarray(a1, jnp.float32),
                       g2=jnp.asarray(a2, jnp.float32), bandwidth=bw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  ip = u @ w.T
  np.testing.assert_allclose(kernels.gram('composite', U, W), 0.5 * ip + 0.5 * np.exp(ip),
                             rtol=1e-5)
  # gram_fn fixes the name and the parameters.
  fn = kernels.gram_fn('composite', alpha=0.3, g1=jnp.asarray(g1, jnp.float32),
                       g2=jnp.asarray(g2, jnp.float32))
  np.testing.assert_allclose(fn(U, W), kernels.gram('composite', U, W, alpha=0.3,
                                                    g1=jnp.asarray(g1, jnp.float32),
                                                    g2=jnp.asarray(g2, jnp.float32)))


def _one_line_listing(excinfo, allowed):
  msg = str(excinfo.value)
  assert '\n' not in msg, msg
  for name in allowed:
    assert name in msg, (name, msg)


def test_unknown_names_raise_one_line_listing_allowed():
  """An unknown activation ('tanh') or kernel ('rbf') raises ValueError at once (gram_fn checks
  the name when it is built, not when it is called), with a one-line message naming the bad
  name and every allowed one. Fails if a typo falls through to some default branch."""
  with pytest.raises(ValueError, match="'tanh'") as e:
    kernels.attention_weights('tanh', jnp.asarray(SCORES))
  _one_line_listing(e, kernels.ACTIVATIONS)
  with pytest.raises(ValueError, match="'tanh'") as e:
    kernels.check_activation('tanh')
  _one_line_listing(e, kernels.ACTIVATIONS)
  for call in (lambda: kernels.gram('rbf', U), lambda: kernels.gram_fn('rbf'),
               lambda: kernels.check_kernel('rbf')):
    with pytest.raises(ValueError, match="'rbf'") as e:
      call()
    _one_line_listing(e, kernels.KERNELS)
  # softmax is an activation, not a label kernel.
  with pytest.raises(ValueError, match="'softmax'"):
    kernels.gram('softmax', U)
  assert set(kernels.ACTIVATIONS) == {'linear', 'relu', 'exp', 'softmax'}
  assert set(kernels.KERNELS) == {'linear', 'relu', 'exp', 'composite'}
