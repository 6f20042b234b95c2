"""icl_jax.models.ar_script: the authors' script model for Sec. 6 / Figs 7, 8 of Sander et al.

Checked against a slow NumPy transcription of the architecture (loops over queries, heads and
tokens, float64), for causality, the duplicated-token layout, the initialisations and the loss.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax.models import ar_script
from icl_jax.samplers import autoregressive as ar_sampler

D_SMALL, H_SMALL, T_SMALL = 3, 2, 6


def _reference(params, e_TxD):
  """The script model row by row: for each query T, head h and token t <= T, in float64."""
  p = {k: np.asarray(v, np.float64) for k, v in params._asdict().items()}
  e = np.asarray(e_TxD, np.float64)
  t_len, width = e.shape
  heads = p['w_q'].shape[0]
  out = []
  for tq in range(t_len):
    z = np.zeros(width)
    for h in range(heads):
      q = p['w_q'][h] @ e[tq] + p['b_q'][h]
      qp = p['w_q'][h] @ p['pos'][tq] + p['b_q'][h]
      logits = np.array([qp @ (p['w_k'][h] @ p['pos'][t] + p['b_k'][h]) / np.sqrt(width)
                         for t in range(tq + 1)])
      soft = np.exp(logits - logits.max())
      soft /= soft.sum()
      for t in range(tq + 1):
        k = p['w_k'][h] @ e[t] + p['b_k'][h]
        v = p['w_v'][h] @ e[t] + p['b_v'][h]
        z += (q @ k / np.sqrt(width)) * soft[t] * v
    y = p['w_o'] @ z + p['b_o']
    y = (y - y.mean()) / np.sqrt(y.var() + 1e-5) * p['ln_scale'] + p['ln_bias']
    out.append(p['w_r'] @ y + p['b_r'])
  return np.stack(out)


@jax.jit
def _case(key):
  """Tiny params (LayerNorm perturbed off 1, 0 so it is exercised) and one Haar sequence."""
  k_p, k_s, k_ln = jax.random.split(key, 3)
  params = ar_script.init(k_p, D_SMALL, H_SMALL, T_SMALL, encoding='duplicated')
  ln = jax.random.normal(k_ln, (2, 2 * D_SMALL))
  params = params._replace(ln_scale=1 + 0.3 * ln[0], ln_bias=0.3 * ln[1])
  s = ar_sampler.sequence(k_s, 'orthogonal', D_SMALL, T_SMALL)
  return params, s


def test_matches_a_slow_reference_and_the_duplicated_layout():
  """predict_all with duplicated tokens equals the NumPy loops on e_t = (s_t, s_t) (the script's
  `repeat`: s_t twice), rows T = 2..t_max (float32 vs float64 on O(1) outputs: 1e-4). Fails on a
  wrong query position (tau = T - 1), a positional softmax not per head or without the biases, a
  missing 1/sqrt(D), a shared-instead-of-summed head, a misplaced LayerNorm or read-out, an
  off-by-one alignment with s[2:]; the interleaved layout (s_t1, s_t1, s_t2, ...) gives other
  numbers, so the layout check can fail."""
  params, s = _case(jax.random.key(0))
  got = np.asarray(jax.jit(lambda p, x: ar_script.predict_all(p, x, encoding='duplicated'))(
      params, s))
  assert got.shape == (T_SMALL - 1, D_SMALL) and got.dtype == np.float32
  tiled = np.concatenate([np.asarray(s), np.asarray(s)], axis=1)[:-1]
  want = _reference(params, tiled)[1:]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  interleaved = np.repeat(np.asarray(s), 2, axis=1)[:-1]
  assert np.abs(_reference(params, interleaved)[1:] - want).max() > 1e-2


def test_plain_tokens_match_the_reference():
  """Plain tokens (D = d): the model equals the NumPy loops on e_t = s_t. Fails if 'plain' builds
  other tokens or the width bookkeeping (D vs d) is wrong."""

  @jax.jit
  def case(key):
    key_p, key_s = jax.random.split(key)
    params = ar_script.init(key_p, D_SMALL, 3, T_SMALL, encoding='plain')
    s = ar_sampler.sequence(key_s, 'orthogonal', D_SMALL, T_SMALL)
    return params, s, ar_script.predict_all(params, s)

  params, s, got = case(jax.random.key(3))
  np.testing.assert_allclose(got, _reference(params, np.asarray(s)[:-1])[1:], rtol=1e-4,
                             atol=1e-4)


def test_causal():
  """Changing s_{j+1}, ... (0-based s[j:]) leaves the predictions of rows i < j - 1 (inputs
  s[0..i+1]) bit-identical, and the gradient of row i with respect to later tokens is exactly
  zero; row j - 1 does change. Fails if a future token leaks through the token scores, the
  positional softmax or the values."""
  params, s = _case(jax.random.key(1))
  j = 3
  other = s.at[j:].set(jax.random.normal(jax.random.key(2), s[j:].shape))
  pred = jax.jit(lambda x: ar_script.predict_all(params, x, encoding='duplicated'))
  a, b = np.asarray(pred(s)), np.asarray(pred(other))
  np.testing.assert_array_equal(a[:j - 1], b[:j - 1])
  assert np.abs(a[j - 1:] - b[j - 1:]).max() > 1e-3
  grad = jax.jit(jax.grad(lambda x: pred(x)[0].sum()))(s)   # row 0 reads s[0], s[1]
  assert np.all(np.asarray(grad)[2:] == 0) and np.abs(np.asarray(grad)[:2]).max() > 0


def test_init_and_near_equal_init_and_value_output():
  """init: torch's U(+-1/sqrt(D)) for the maps, N(0, 1) positions, LayerNorm (1, 0); the
  near-equal init spreads each head's Q, K, V and their biases about a shared draw with std
  noise sqrt(3/4) for 4 heads (pooled over the 1320 entries the estimate is good to ~3%;
  tolerance 10%) and keeps the shared parts as `init` draws them; value_output is W_O W_V^h.
  Fails on a wrong bound, a noise shared by the heads (or missing on a bias), a perturbed shared
  part or a transposed B_h."""

  @jax.jit   # one program: eager op-by-op dispatch took seconds
  def draws(key0, key1):
    near = ar_script.init_near_equal(key1, 5, 4, 7, noise=0.05)
    one = ar_script.init(jax.random.split(key1)[0], 5, 1, 7, encoding='duplicated')
    return (ar_script.init(key0, 5, 4, 7, encoding='duplicated'), near, one,
            ar_script.value_output(near))

  params, near, one, b = jax.tree.map(np.asarray, draws(jax.random.key(0), jax.random.key(1)))
  bound = 1 / np.sqrt(10)
  assert params.w_q.shape == (4, 10, 10) and params.w_r.shape == (5, 10)
  assert params.pos.shape == (7, 10) and abs(params.pos.std() - 1) < 0.2
  for w in (params.w_q, params.b_v, params.w_o, params.w_r):
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
  np.testing.assert_array_equal(params.ln_scale, np.ones(10))
  np.testing.assert_array_equal(params.ln_bias, np.zeros(10))
  spread = np.concatenate([(w - w.mean(axis=0, keepdims=True)).ravel()
                           for w in (near.w_q, near.w_k, near.w_v, near.b_q, near.b_k, near.b_v)])
  # deviations from the head mean of H iid N(0, noise^2): variance noise^2 (H - 1) / H.
  assert abs(spread.std() / (0.05 * np.sqrt(3 / 4)) - 1) < 0.1
  for field in ('b_q', 'b_k', 'b_v'):
    assert np.abs(getattr(near, field) - getattr(near, field)[:1]).max() > 0.01, field
  for field in ('pos', 'w_o', 'b_o', 'w_r', 'b_r'):
    np.testing.assert_array_equal(getattr(near, field), getattr(one, field))
  np.testing.assert_allclose(near.w_v.mean(axis=0), one.w_v[0], atol=0.2)
  np.testing.assert_allclose(b[2], near.w_o @ near.w_v[2], rtol=1e-5, atol=1e-6)


def test_loss_is_loss_3_and_its_gradient():
  """loss = sum over T = 2..t_max of |y_T - s_{T+1}|^2, mean_loss its batch mean, and the
  gradient of mean_loss (the batch in one program, the positional attention's gradient through a
  custom VJP) equals that of the mean of per-sequence losses (float32 rounding on O(1)
  gradients: 1e-4 of the largest entry per leaf). Fails on a loss over other rows (the script's
  T = 1 term), a per-coordinate mean, or a custom VJP that drops the sum over the batch or sends
  the wrong factor to P or to the scores."""
  params, s = _case(jax.random.key(4))

  @jax.jit   # one program: eager op-by-op dispatch took seconds
  def losses(params, s, other):
    batch = jnp.stack([s, 2 * s, other])
    pred = ar_script.predict_all(params, s, encoding='duplicated')
    per_seq = lambda p: jnp.mean(jax.vmap(
        lambda x: ar_script.loss(p, x, encoding='duplicated'))(batch))
    batched = lambda p: ar_script.mean_loss(p, batch, encoding='duplicated')
    return (jnp.sum((pred - s[2:]) ** 2), ar_script.loss(params, s, encoding='duplicated'),
            batched(params), per_seq(params), jax.grad(batched)(params),
            jax.grad(per_seq)(params))

  other = jax.random.normal(jax.random.key(5), s.shape)
  want, got, mean, mean_ref, grad, grad_ref = jax.tree.map(np.asarray, losses(params, s, other))
  assert abs(got - want) <= 1e-5 * abs(want)
  assert abs(mean - mean_ref) <= 1e-5 * abs(mean)
  for name, g, r in zip(ar_script.ScriptParams._fields, grad, grad_ref):
    assert np.abs(r).max() > 0, name
    np.testing.assert_allclose(g, r, rtol=0, atol=1e-4 * np.abs(r).max(), err_msg=name)


def test_bad_input():
  """Fails if an unknown encoding, complex tokens or a width mismatch pass silently."""
  params, s = _case(jax.random.key(5))
  with pytest.raises(ValueError, match='encoding'):
    ar_script.predict_all(params, s, encoding='augmented')
  with pytest.raises(ValueError, match='real tokens'):
    ar_script.script_all(params, jnp.ones((4, 2 * D_SMALL), jnp.complex64))
  with pytest.raises(ValueError, match='width'):
    ar_script.predict_all(params, s, encoding='plain')
