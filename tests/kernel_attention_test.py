"""Tests of icl_jax.models.kernel_attention: the forward pass of eqs. (3)/(26) against a slow
NumPy float64 reference, the context mask, Lemma A.1, the Prop 3.1 / Prop D.1(A) construction
against functional gradient descent (9), the A = 0 constraint, and bad activation lists.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import estimators
from icl_jax.models import kernel_attention as ka
from icl_jax.prompts import Prompt
from icl_jax.samplers import kernel_gp

D = 3
N = 5
RNG = np.random.default_rng(0)


def _np_tf(params, x, y, xq, activations, ctx_mask=None, free_a=True):
  """TF_0..TF_L of eqs. (1)-(4), (26), written out: Z is [d+1, n+1] with tokens as columns,
  Z_{l+1} = Z_l + sum_s V_l^s Z_l M h~^s(B_l^s X_l, C_l^s X_l), h~_ij = act(<B x_i, C x_j>) for
  key i and query j; M zeroes the query's column (and padded slots' columns); the softmax of
  Example 3 divides by the sum over the unmasked keys of each query's column. Float64, loops
  over layers, heads, queries and keys."""
  a, r, b, c = (np.asarray(p, np.float64) for p in (params.a, params.r, params.b, params.c))
  n, d = x.shape
  t = n + 1
  z = np.zeros((d + 1, t))
  z[:d, :n], z[d, :n], z[:d, n] = x.T, y, xq
  keys = [True] * n if ctx_mask is None else [bool(m) for m in ctx_mask]
  keys = keys + [False]                       # M: the query never acts as a key / value
  m_mat = np.diag(np.asarray(keys, np.float64))
  tf = [z[d, n]]
  for l in range(r.shape[0]):
    update = np.zeros_like(z)
    for s, act in enumerate(activations):
      xl = z[:d]
      h = np.zeros((t, t))
      for j in range(t):
        for i in range(t):
          if not keys[i]:
            continue
          score = float((b[l, s] @ xl[:, i]) @ (c[l, s] @ xl[:, j]))
          h[i, j] = {'linear': score, 'relu': max(score, 0.0), 'exp': math.exp(score),
                     'softmax': math.exp(score)}[act]
        if act == 'softmax':
          h[:, j] /= sum(h[i, j] for i in range(t) if keys[i])
      v = np.zeros((d + 1, d + 1))
      if free_a:
        v[:d, :d] = a[l, s]
      v[d, d] = r[l, s]
      update += v @ z @ m_mat @ h
    z = z + update
    tf.append(z[d, n])
  return np.asarray(tf)


def _params(layers, heads, scale=0.4, seed=0, d=D):
  rng = np.random.default_rng(seed)
  mat = lambda: scale * rng.standard_normal((layers, heads, d, d))
  return ka.Params(a=mat(), r=scale * rng.standard_normal((layers, heads)) - 0.3, b=mat(), c=mat())


def _prompt(n=N, d=D, seed=1):
  rng = np.random.default_rng(seed)
  return Prompt(x=rng.standard_normal((n, d)) / np.sqrt(d), y=rng.standard_normal(n),
                x_query=rng.standard_normal(d) / np.sqrt(d),
                y_query=np.float64(rng.standard_normal()))


def _jnp(tree, dtype):
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


MASK = np.array([True, False, True, True, False])   # two context slots hidden


ALL4 = ('linear', 'relu', 'exp', 'softmax')


@pytest.mark.parametrize('activations,free_a', [
    (ALL4, True), (ALL4, False), (('softmax',), True), (('exp', 'relu'), False)])
def test_apply_layers_equals_slow_reference(activations, free_a):
  """apply_layers (float64) = the NumPy float64 loop reference for TF_0..TF_3, with and without
  a context mask: a 4-head model with every activation (one per head) and a 2-head mixed one,
  A free and A = 0 (params hold a non-zero A, which free_a=False must ignore), and a lone
  softmax head. rtol 1e-9: both are float64. Fails on a
  transposed score matrix (key/query swapped), a softmax over queries or over all tokens, the
  query acting as a key, A applied as A^T or on the unmasked Z, r on the wrong row, or a head
  using another head's activation."""
  params = _params(3, len(activations))
  p = _prompt()
  with jax.enable_x64(True):
    fn = jax.jit(jax.vmap(lambda cm: ka.apply_layers(
        _jnp(params, jnp.float64), _jnp(p, jnp.float64), activations=activations,
        context_mask=cm, free_a=free_a)))
    got = np.asarray(fn(jnp.asarray([np.ones(N, bool), MASK])))
  for row, cm in zip(got, (None, MASK)):
    want = _np_tf(params, p.x, p.y, p.x_query, activations, cm, free_a)
    np.testing.assert_allclose(row, want, rtol=1e-9, atol=1e-12)
  assert got[0, 0] == 0.0                          # TF_0 = [Z_0]_{d+1, n+1} = 0
  assert not np.allclose(got[0], got[1])           # the mask matters


def _padded(p, n_max, seed):
  """pad_context's prompt, with the padded slots then filled with garbage."""
  padded, mask = kernel_gp.pad_context(_jnp(p, jnp.float32), n_max)
  rng = np.random.default_rng(seed)
  n = p.x.shape[0]
  x = np.asarray(padded.x).copy()
  y = np.asarray(padded.y).copy()
  x[n:] = 3.0 * rng.standard_normal(x[n:].shape)
  y[n:] = 3.0 * rng.standard_normal(y[n:].shape)
  return Prompt(x=jnp.asarray(x), y=jnp.asarray(y), x_query=padded.x_query,
                y_query=padded.y_query), mask


_PARAMS4 = ka.Params(*(jnp.asarray(a, jnp.float32) for a in _params(3, 4, scale=0.3)))


@jax.jit
def _run4(prompt, mask, query_label):
  """TF_0..TF_3 of the 4-head model (linear, relu, exp, softmax; A free; float32), with
  `query_label` written into the query's label slot of Z_0 (eq. (1) has 0 there). The token
  builder is swapped only while this traces (Lemma A.1's modified input); one compilation per
  context length serves both tests below."""
  tokens = ka._tokens
  ka._tokens = lambda pr: tokens(pr).at[-1, -1].set(query_label)
  try:
    return ka.apply_layers(_PARAMS4, prompt, activations=ALL4, context_mask=mask)
  finally:
    ka._tokens = tokens


def test_padded_prompt_gives_the_unpadded_prediction():
  """The 4-head model: a prompt with n = 5 padded to n_max = 8 by pad_context gives the same
  TF_0..TF_3 as the unpadded prompt, and so does the padded prompt with random garbage in the
  padded slots (rtol 1e-5: float32 sums in another order). Fails if any head lets a padded slot
  act as a key/value (the softmax's normaliser included) or reads the padded slots' contents."""
  p = _prompt()
  base = np.asarray(_run4(_jnp(p, jnp.float32), jnp.ones(N, bool), 0.0))
  zeros, mask = kernel_gp.pad_context(_jnp(p, jnp.float32), 8)
  garbage1, _ = _padded(p, 8, 1)
  garbage2, _ = _padded(p, 8, 2)
  for pr in (zeros, garbage1, garbage2):
    np.testing.assert_allclose(_run4(pr, mask, 0.0), base, rtol=1e-5, atol=1e-6)
  # Without the mask the garbage is read: the check above has teeth.
  assert not np.allclose(_run4(garbage1, jnp.ones(8, bool), 0.0), base, rtol=1e-3)


def test_prediction_ignores_the_query_label_slot():
  """Lemma A.1: with V = [[A, 0], [0, r]], putting c in the query's label slot of Z_0 (which
  eq. (1) sets to 0) shifts [Z_l]_{d+1, n+1} by exactly c at every layer and changes nothing
  else, because M keeps the query from acting as a value. So TF_l(c) - c = TF_l(0) for the
  4-head model, A free (float32, atol 1e-6), for l >= 1 (apply_layers reports TF_0 = 0 by
  definition rather than reading Z_0), with and without a context mask. Fails if the query
  token acts as a key/value."""
  p = _jnp(_prompt(), jnp.float32)
  c = 1.7
  for mask in (jnp.ones(N, bool), jnp.asarray(MASK)):
    base = np.asarray(_run4(p, mask, 0.0))
    shifted = np.asarray(_run4(p, mask, c))
    np.testing.assert_allclose(shifted[1:] - c, base[1:], atol=1e-6)
    assert not np.allclose(shifted, base)


def _np_gram(name, u, w, sigma=1.0):
  ip = np.asarray(u, np.float64) @ np.asarray(w, np.float64).T
  return {'linear': ip, 'relu': np.maximum(ip, 0.0), 'exp': np.exp(ip / sigma**2)}[name]


STEPS = np.array([0.3, 0.1, 0.25, 0.2, 0.15])   # r'_l, per layer (not constant on purpose)


@pytest.mark.parametrize('name', ['linear', 'relu', 'exp'])
def test_construction_is_functional_gd(name):
  """Prop 3.1: with A = 0, r_l = -r'_l, B = C = I and h~ = K, TF_l = -f_l(x_query) for
  l = 0..5, f_l the functional GD (9) with steps r'_l on the NumPy float64 Gram K(t, x_i)
  (`estimators.functional_gd` in float64). Max abs difference <= 1e-5 in float32 (the issue's
  tolerance; values are O(1)). Fails on a sign error in r (TF = +f), a step applied one layer
  late, or a kernel evaluated on the wrong pair."""
  p = _prompt(n=6)
  params = ka.construction(d=D, steps=STEPS)
  assert params.a.shape == (5, 1, D, D) and not np.any(params.a)
  tf = np.asarray(jax.jit(lambda pr: ka.apply_layers(params, pr, activations=(name,)))(
      _jnp(p, jnp.float32)))
  pts = np.concatenate([p.x, p.x_query[None]])
  with jax.enable_x64(True):
    f = np.asarray(estimators.functional_gd(jnp.asarray(_np_gram(name, pts, p.x)),
                                            jnp.asarray(p.y), jnp.asarray(STEPS)))
  assert np.max(np.abs(f)) > 0.1 and np.all(np.abs(np.diff(f)) > 1e-3)   # a real trajectory
  np.testing.assert_allclose(tf, -f, atol=1e-5)


_CONSTRUCTED_EXP = jax.jit(lambda b, prompt: ka.apply_layers(
    ka.construction(d=D, steps=STEPS, b=b), prompt, activations=('exp',)))


def test_construction_with_sigma_inv_sqrt_and_bandwidth():
  """B = C = Sigma^{-1/2} makes the exp head compute K(Sigma^{-1/2} x, Sigma^{-1/2} x') =
  K(xi, xi') (Theorem 4.5's point, Example 7): on x = Sigma^{1/2} xi (xi on the sphere, Sigma =
  U^T D U built in NumPy), TF_l = -f_l with the exp Gram of the xi. B = C = I / sigma gives the
  bandwidth exp(<x, x'> / sigma^2). atol 1e-5 (float32). Fails if B and C enter as B^T, or the
  bandwidth as 1 / sigma."""
  rng = np.random.default_rng(4)
  u, _ = np.linalg.qr(rng.standard_normal((D, D)))
  diag = np.array([1.0, 0.25, 2.25])
  inv_sqrt = u.T @ np.diag(diag**-0.5) @ u                  # Sigma^{-1/2}, Sigma = U^T D U
  xi = rng.standard_normal((7, D))
  xi /= np.linalg.norm(xi, axis=1, keepdims=True)
  x = xi @ (u.T @ np.diag(diag**0.5) @ u)                   # x = Sigma^{1/2} xi (rows)
  prompt = _jnp(Prompt(x=x[:6], y=rng.standard_normal(6), x_query=x[6], y_query=np.float64(0.0)),
                jnp.float32)
  sigma = 1.6
  for b, pts, bw in ((inv_sqrt, xi, 1.0), (np.eye(D) / sigma, x, sigma)):
    tf = np.asarray(_CONSTRUCTED_EXP(jnp.asarray(b, jnp.float32), prompt))
    with jax.enable_x64(True):
      f = np.asarray(estimators.functional_gd(
          jnp.asarray(_np_gram('exp', pts, pts[:6], bw)), jnp.asarray(prompt.y, jnp.float64),
          jnp.asarray(STEPS)))
    np.testing.assert_allclose(tf, -f, atol=1e-5)


def test_two_head_linear_exp_construction_is_composite_functional_gd():
  """Prop D.1(A): heads (linear, exp) with B^s = C^s = G^s, r_l^s = -r'_l w_s give functional GD
  with K = w_1 K_lin(G1 u, G1 v) + w_2 K_exp(G2 u, G2 v): the composite kernel of Appendix D
  with alpha = w_1 = 0.4, w_2 = 0.6, G1 = diag(1, 1, 0), G2 = diag(0, 1, 1) (d = 3). atol 1e-5
  (float32). Fails if the heads' outputs are not summed, or a head's G is the other's."""
  p = _prompt(n=6)
  alpha = 0.4
  g = np.stack([np.diag([1.0, 1.0, 0.0]), np.diag([0.0, 1.0, 1.0])])
  steps = STEPS[:, None] * np.array([alpha, 1 - alpha])
  params = ka.construction(d=D, steps=steps, heads=2, b=g)
  tf = np.asarray(ka.apply_layers(params, _jnp(p, jnp.float32), activations=('linear', 'exp')))
  pts = np.concatenate([p.x, p.x_query[None]])
  k = (alpha * _np_gram('linear', pts @ g[0].T, p.x @ g[0].T)
       + (1 - alpha) * _np_gram('exp', pts @ g[1].T, p.x @ g[1].T))
  with jax.enable_x64(True):
    f = np.asarray(estimators.functional_gd(jnp.asarray(k), jnp.asarray(p.y),
                                            jnp.asarray(STEPS)))
  np.testing.assert_allclose(tf, -f, atol=1e-5)


def test_gradient_wrt_a_is_exactly_zero_when_a_is_constrained():
  """free_a=False (Theorem 4.5's A_l = 0): d loss / d a is exactly 0 even with non-zero a in the
  params, while with free_a=True it is not (so the check has teeth); r, B, C get gradients
  either way. Fails if `apply` reads `a` when free_a=False."""
  params = _jnp(_params(2, 1, scale=0.3), jnp.float32)
  p = _jnp(_prompt(), jnp.float32)
  acts = ('softmax',)

  @jax.jit
  def all_at_once(params, p):   # one compilation for every figure of this test
    g0 = jax.grad(ka.loss)(params, p, activations=acts, free_a=False)
    g1 = jax.grad(ka.loss)(params, p, activations=acts, free_a=True)
    return (g0, g1, ka.apply(params, p, activations=acts), ka.loss(params, p, activations=acts),
            ka.predict(params, p, activations=acts))

  g0, g1, tf, loss, pred = all_at_once(params, p)
  assert np.all(np.asarray(g0.a) == 0.0)
  assert np.any(np.asarray(g1.a) != 0.0)
  for g in (g0, g1):
    assert np.any(np.asarray(g.r) != 0.0) and np.any(np.asarray(g.b) != 0.0)
  # loss = (TF + y_query)^2, predict = -TF (eq. (4), (5)).
  np.testing.assert_allclose(loss, (tf + p.y_query)**2, rtol=1e-6)
  np.testing.assert_allclose(pred, -tf)
  # init(free_a=False) starts at A = 0.
  assert not np.any(ka.init(jax.random.key(0), d=D, layers=2, heads=2, free_a=False).a)


def test_product_is_sigma_sqrt_bt_c_sigma_sqrt():
  """product(params, Sigma^{1/2}) = Sigma^{1/2} B_l^T C_l Sigma^{1/2} per layer and head (Figs 3,
  5, 6), against NumPy; without sigma_sqrt, B^T C. Fails on B C^T or C^T B."""
  params = _params(2, 2)
  s = RNG.standard_normal((D, D))
  s = s @ s.T
  got = np.asarray(ka.product(_jnp(params, jnp.float32), jnp.asarray(s, jnp.float32)))
  for l in range(2):
    for h in range(2):
      want = s @ params.b[l, h].T @ params.c[l, h] @ s
      np.testing.assert_allclose(got[l, h], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ka.product(_jnp(params, jnp.float32))[1, 0],
                             params.b[1, 0].T @ params.c[1, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('activations,match', [
    (('tanh',), "unknown activation 'tanh': allowed are linear, relu, exp, softmax"),
    (('linear', 'exp'), '2 names for 1 heads'),
    ((), 'need one activation per head')])
def test_bad_activation_lists_raise_one_line(activations, match):
  """An unknown activation, a list whose length is not the number of heads, or an empty list:
  ValueError with a one-line message (the allowed names, or the head count). Fails if a bad
  name falls through to a default activation or the extra name is silently ignored."""
  params = _jnp(_params(1, 1), jnp.float32)
  with pytest.raises(ValueError, match=match) as e:
    ka.apply_layers(params, _jnp(_prompt(), jnp.float32), activations=activations)
  assert '\n' not in str(e.value)
  with pytest.raises(ValueError):
    ka.init(jax.random.key(0), d=D, layers=0)
