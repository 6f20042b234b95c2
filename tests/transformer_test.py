"""Tests of icl_jax.models.transformer against a direct NumPy GPT2 and through its gradients.

A wrong attention mask, a missing residual, a post-LN block, a misplaced position table or a
read-out at the y tokens makes the NumPy comparison fail; a leak from later tokens makes the
causality test fail.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax.models import transformer


def _layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu)**2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + transformer.LN_EPS) * p['scale'] + p['bias']


def _gelu(x):   # GPT2's tanh approximation
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _dense(x, p):
  return x @ p['kernel'] + p['bias']


def _numpy_regressor(params, x_NxD, y_N, heads, positions):
  """GPT2 + Garg's read-in/out for one sequence, written token by token in float64 NumPy."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  n, d = x_NxD.shape
  tokens = []
  for i in range(n):
    tokens += [x_NxD[i], np.concatenate([[y_N[i]], np.zeros(d - 1)])]
  h = np.stack([_dense(t, params['read_in']) for t in tokens])
  bb = params['backbone']
  t_len, c = h.shape
  if positions == 'learned':
    h = h + bb['wpe'][:t_len]
  elif positions == 'sinusoidal':
    for t in range(t_len):
      for j in range(c // 2):
        angle = t / 10000**(2 * j / c)
        h[t, 2 * j] += math.sin(angle)
        h[t, 2 * j + 1] += math.cos(angle)
  hd = c // heads
  depth = len([k for k in bb if k.startswith('h_')])
  for layer in range(depth):
    p = bb[f'h_{layer}']
    a = _layer_norm(h, p['ln_1'])
    qkv = _dense(a, p['c_attn'])
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    out = np.zeros_like(h)
    for t in range(t_len):
      for hh in range(heads):
        sl = slice(hh * hd, (hh + 1) * hd)
        logits = k[:t + 1, sl] @ q[t, sl] / math.sqrt(hd)
        wts = np.exp(logits - logits.max())
        wts /= wts.sum()
        out[t, sl] = wts @ v[:t + 1, sl]
    h = h + _dense(out, p['c_proj'])
    m = _gelu(_dense(_layer_norm(h, p['ln_2']), p['c_fc']))
    h = h + _dense(m, p['mlp_proj'])
  h = _layer_norm(h, bb['ln_f'])
  return np.array([_dense(h[2 * i], params['read_out'])[0] for i in range(n)])


@pytest.mark.parametrize('positions', transformer.POSITIONS)
def test_regressor_equals_direct_numpy_gpt2(positions):
  # float32 against float64 through 2 layers: agreement to ~1e-5 absolute on O(1) outputs.
  model = transformer.regressor(depth=2, width=16, heads=4, positions=positions, max_points=8)
  params = transformer.init(model, jax.random.key(0), 3)
  # Larger weights than GPT2's 0.02 init, so every term moves the output visibly.
  params = jax.tree.map(lambda p, k: p + 0.3 * jax.random.normal(k, p.shape),
                        params, _keys_like(params, jax.random.key(1)))
  x = np.asarray(jax.random.normal(jax.random.key(2), (2, 5, 3)))
  y = np.asarray(jax.random.normal(jax.random.key(3), (2, 5)))
  got = np.asarray(transformer.apply(model, params, jnp.asarray(x), jnp.asarray(y)))
  for b in range(2):
    want = _numpy_regressor(params, x[b], y[b], 4, positions)
    np.testing.assert_allclose(got[b], want, atol=1e-4, rtol=1e-4)


def _keys_like(tree, key):
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def test_prediction_reads_only_earlier_pairs():
  """d pred_i / d y_j = 0 for j >= i and d pred_i / d x_j = 0 for j > i; nonzero for j < i."""
  model = transformer.regressor(depth=2, width=16, heads=2, max_points=6)
  params = transformer.init(model, jax.random.key(0), 3)
  x = jax.random.normal(jax.random.key(1), (1, 6, 3))
  y = jax.random.normal(jax.random.key(2), (1, 6))
  jac_y = jax.jacobian(lambda yy: transformer.apply(model, params, x, yy)[0])(y)[:, 0]   # [i, j]
  jac_x = jax.jacobian(lambda xx: transformer.apply(model, params, xx, y)[0])(x)[:, 0]   # [i,j,d]
  i, j = np.meshgrid(np.arange(6), np.arange(6), indexing='ij')
  assert np.all(np.asarray(jac_y)[j >= i] == 0.0)
  assert np.all(np.abs(np.asarray(jac_y)[j < i]) > 0.0)
  assert np.all(np.asarray(jac_x)[j > i] == 0.0)
  assert np.all(np.abs(np.asarray(jac_x)[j <= i]).sum(-1) > 0.0)


def test_learned_positions_beyond_the_sequence_get_no_gradient():
  """Why Zhang et al. expect a spike at M > N: the table rows past 2N tokens never train."""
  model = transformer.regressor(depth=1, width=8, heads=2, max_points=10)
  params = transformer.init(model, jax.random.key(0), 2)
  x = jax.random.normal(jax.random.key(1), (3, 4, 2))
  y = jnp.sum(x, -1)
  grads = jax.grad(lambda p: jnp.sum(transformer.apply(model, p, x, y)**2))(params)
  g = np.asarray(grads['backbone']['wpe'])
  assert np.all(g[8:] == 0.0) and np.all(np.abs(g[:7]).sum(-1) > 0)


@pytest.mark.parametrize('field,value,match', [
    ('positions', 'rope', 'positions must be one of'),
    ('heads', 3, 'multiple of heads'),
    ('depth', 0, 'depth must be positive'),
])
def test_bad_sizes_raise_one_clear_error(field, value, match):
  kw = dict(depth=1, width=8, heads=2, positions='learned', max_points=4)
  kw[field] = value
  with pytest.raises(ValueError, match=match):
    transformer.regressor(**kw)


def test_too_long_sequence_raises():
  model = transformer.regressor(depth=1, width=8, heads=2, max_points=4)
  params = transformer.init(model, jax.random.key(0), 2)
  with pytest.raises(ValueError, match='exceeds max_len'):
    transformer.apply(model, params, jnp.zeros((1, 5, 2)), jnp.zeros((1, 5)))
