"""Tests of icl_jax.models.ar_attention (Sander et al. 2024, eqs. (3), (4), (6), (7)).

Independent truths: per-prefix NumPy loops (complex128) written straight from eqs. (4) and (6);
one gradient step on the inner loss (5) taken with jax.grad on (Re W, Im W); the zero-loss
constructions of Lemma 2 / Prop. 3 and Lemma 3; eq. (7) and Prop. 7's Hessian.

Sequences and hand-built parameters come from NumPy (s_1 = 1_d, s_{t+1} = W s_t), not from the
sampler, and every JAX call goes through jit: eager dispatch compiles each primitive separately,
which would cost several times the file's 10 s budget. float32 tolerances: every output is a sum
of at most ~50 products of O(1) terms (|s_{t,i}| = 1, parameters of scale <= 1), so reassociation
and complex64 rounding leave ~1e-6 relative error; 1e-4 leaves a wide margin yet catches any
dropped or mis-indexed term, which moves outputs by O(0.01..1).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax.models import ar_attention as ar

D, TMAX = 2, 7   # s in C^2, prefixes T = 2..7
TOL = dict(rtol=1e-4, atol=1e-4)

_STATIC = ('encoding', 'impl', 'chunk', 'norm')
_loss = jax.jit(ar.loss, static_argnames=_STATIC)
_loss_terms = jax.jit(ar.loss_terms, static_argnames=_STATIC)
_predict = jax.jit(ar.predict_all, static_argnames=_STATIC)
_eq6 = jax.jit(ar.eq6_all)
_pmat = jax.jit(ar.positional_matrix)
_cla_quad = jax.jit(ar.causal_linear_attention_quadratic)


def _rng(seed):
  return np.random.default_rng(seed)


def _powers(phi, t_max=TMAX):
  """s_t = lambda^{t-1}, lambda = e^{i phi}: [t_max + 1, d] complex64 (exact powers)."""
  return jnp.asarray(np.exp(1j * np.arange(t_max + 1)[:, None] * phi[None, :]), jnp.complex64)


def _unitary_seq(seed, d=D, t_max=TMAX):
  """C_U of Assumption 1: lambda_i = e^{i theta_i}, theta_i iid U(0, 2 pi)."""
  return _powers(_rng(seed).uniform(0, 2 * np.pi, d), t_max)


def _pairs_seq(seed, delta=2, t_max=TMAX):
  """C_O of Assumption 1: lambda = (l_1, conj l_1, ..., l_delta, conj l_delta)."""
  th = _rng(seed).uniform(0, 2 * np.pi, delta)
  return _powers(np.stack([th, -th], axis=1).reshape(2 * delta), t_max)


def _dense_seq(seed, d=D, t_max=TMAX, complex_=False):
  """s_{t+1} = W s_t with a dense orthogonal (real) or unitary (complex) W from a QR."""
  rng = _rng(seed)
  w, _ = np.linalg.qr(rng.normal(size=(d, d)) + (1j * rng.normal(size=(d, d)) if complex_ else 0))
  s = [np.ones(d, w.dtype)]
  for _ in range(t_max):
    s.append(w @ s[-1])
  return jnp.asarray(np.stack(s), jnp.complex64 if complex_ else jnp.float32)


def _augmented(s):
  """(0, s_t, s_{t-1}), s_0 = 0, for s_1..s_{t_max} (NumPy, independent of ar.tokens)."""
  s = np.asarray(s)[:-1]
  prev = np.concatenate([np.zeros_like(s[:1]), s[:-1]])
  return jnp.asarray(np.concatenate([np.zeros_like(s), s, prev], axis=1))


def _normal(seed, *shape):
  return jnp.asarray(_rng(seed).normal(size=shape), jnp.float32)


def _herm(x, y):
  """<x | y>_C = y^H x (Appendix A)."""
  return np.vdot(y, x)


def _slow_eq4(a, b, e):
  """Eq. (4) prefix by prefix, NumPy complex128: [T, d]."""
  a, b, e = (np.asarray(x, np.complex128) for x in (a, b, e))
  d = e.shape[1] // 3
  out = []
  for tt in range(1, e.shape[0] + 1):
    e_last = e[tt - 1]
    acc = e_last + sum(_herm(a @ e_last, e[t]) * (b @ e[t]) for t in range(tt))
    out.append(acc[:d])
  return np.stack(out)


def _slow_eq6(a_heads, b_heads, p, e):
  """Eq. (6) prefix by prefix: row T-1 = sum_h sum_{t<=T} P_{T-1,t} <e_t | A^h e_{T-1}> B^h e_t
  with the paper's 1-based P_{i,j} = p[i-1, j-1]; row 0 = 0 (no token tau = 0)."""
  p, e = np.asarray(p, np.float64), np.asarray(e, np.complex128)
  out = [np.zeros(e.shape[1], np.complex128)]
  for tt in range(2, e.shape[0] + 1):
    e_tau = e[tt - 2]                     # e_{T-1}
    acc = 0
    for a_h, b_h in zip(a_heads, b_heads):
      for t in range(1, tt + 1):
        acc = acc + p[tt - 2, t - 1] * _herm(e[t - 1], a_h @ e_tau) * (b_h @ e[t - 1])
    out.append(acc)
  return np.stack(out)


def _np_layer_norm(x, g, b, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def _slow_deep(params, e, norm):
  """L layers of eq. (4) on all coordinates, by explicit loops over T and t (float64)."""
  x = np.asarray(e, np.float64)
  for a, b, g, beta in zip(*(np.asarray(v, np.float64) for v in params)):
    z = _np_layer_norm(x, g, beta) if norm == 'pre' else x
    u = np.stack([sum((z[t] @ (a @ z[tt])) * (b @ z[t]) for t in range(tt + 1))
                  for tt in range(z.shape[0])])
    x = x + (_np_layer_norm(u, g, beta) if norm == 'branch' else u)
  return x[:, :x.shape[1] // 3]


def test_tokens_layouts():
  """augmented e_t = (0, s_t, s_{t-1}) with s_0 = 0, duplicated (s_t, s_t). Fails if the blocks
  are reordered or s_0 is not zero; a bad encoding name raises."""
  s = _unitary_seq(0)
  tok = jax.jit(ar.tokens, static_argnames='encoding')
  e = tok(s[:-1], encoding='augmented')
  assert e.shape == (TMAX, 3 * D) and e.dtype == jnp.complex64
  np.testing.assert_array_equal(e, _augmented(s))
  dup = tok(s[:-1], encoding='duplicated')
  np.testing.assert_array_equal(dup, np.concatenate([s[:-1], s[:-1]], 1))
  with pytest.raises(ValueError, match='encoding'):
    ar.tokens(s, 'rotary')


def test_prefix_sums_equal_quadratic():
  """Chunked prefix sums == the T x T reference == a loop, complex q, k, v, T = 7 not a multiple
  of the chunks 2, 3 (exercises padding, the exclusive cross-chunk sum and conjugated keys);
  chunk 1 is the plain cumulative sum, None the default, 100 > T one chunk. Fails if a chunk sees
  its own state twice or misses earlier chunks, or the key is not conjugated."""
  rng = _rng(1)
  cn = lambda *s: jnp.asarray(rng.normal(size=s) + 1j * rng.normal(size=s), jnp.complex64)
  q, k, v = cn(TMAX, 4), cn(TMAX, 4), cn(TMAX, 3)
  loop = np.stack([sum(np.vdot(k[t], q[tt]) * v[t] for t in range(tt + 1)) for tt in range(TMAX)])
  np.testing.assert_allclose(_cla_quad(q, k, v), loop, **TOL)
  chunks = (1, 2, 3, None, 100)
  every = jax.jit(lambda q, k, v: [ar.causal_linear_attention(q, k, v, chunk=c) for c in chunks])
  for chunk, got in zip(chunks, every(q, k, v)):
    np.testing.assert_allclose(got, loop, **TOL, err_msg=f'chunk={chunk}')


def test_eq4_all_prefixes_equal_slow_loop():
  """eq4_all (all prefixes at once; chunked prefix sums and T x T) == a per-prefix loop of
  eq. (4) with <A e_T | e_t> = e_t^H A e_T, for dense real A, B and complex AR tokens; Assumption 2
  params == the loop with their block matrices written out here. Fails on a swapped conjugation
  (the tokens are complex), a missing residual e_T, the t = T term dropped, or a wrong block in
  Assumption 2's A or B."""
  e = _augmented(_dense_seq(2, complex_=True))
  full = ar.Eq4Params(a=0.5 * _normal(3, 3 * D, 3 * D), b=0.5 * _normal(4, 3 * D, 3 * D))
  a2 = ar.Assumption2Params(a=jnp.array([0.3, -0.7, 1.1, 0.4]), b=jnp.array([0.9, -0.5]))
  i, z = np.eye(D), np.zeros((D, D))
  a_mat = np.block([[z, z, z], [z, 0.3 * i, -0.7 * i], [z, 1.1 * i, 0.4 * i]])
  b_mat = np.block([[z, 0.9 * i, -0.5 * i], [z, z, z], [z, z, z]])
  impls = (('prefix', 3), ('prefix', None), ('quadratic', None))
  outs = jax.jit(lambda f, a, x: [(ar.eq4_all(f, x, impl=m, chunk=c), ar.eq4_all(a, x, impl=m,
                                   chunk=c)) for m, c in impls])(full, a2, e)
  for (impl, chunk), (got_full, got_a2) in zip(impls, outs):
    msg = f'impl={impl}, chunk={chunk}'
    np.testing.assert_allclose(got_full, _slow_eq4(full.a, full.b, e), **TOL, err_msg=msg)
    np.testing.assert_allclose(got_a2, _slow_eq4(a_mat, b_mat, e), **TOL, err_msg=msg)


@jax.jit
def _gd_step_predictions(s, eta):
  """For T = 2..t_max: W_1 s_T, W_1 = W_0 - eta grad L(W_0), W_0 = 0, L = (5) on s_1..s_T (pairs
  (s_t, s_{t+1}), t <= T - 1), the gradient taken by jax.grad on (Re W, Im W): grad_W = dL/dRe W +
  i dL/dIm W, the steepest-ascent direction in C^{d x d}."""

  def one(tt):
    pair_mask = (jnp.arange(s.shape[0] - 1) + 1 <= tt - 1)[:, None]

    def inner(w_re, w_im):
      r = (s[1:] - s[:-1] @ (w_re + 1j * w_im).T) * pair_mask
      return 0.5 * jnp.sum(jnp.real(r * jnp.conj(r)))

    z = jnp.zeros((s.shape[1], s.shape[1]))
    g_re, g_im = jax.grad(inner, argnums=(0, 1))(z, z)
    return (-eta * (g_re + 1j * g_im)) @ s[tt - 1]

  return jax.vmap(one)(jnp.arange(2, s.shape[0]))


def test_prop2_construction_is_one_gd_step():
  """Prop. 2 / App. A.2: with a1 = a2 = a4 = b2 = 0, a3 b1 = eta, eq. (4) predicts W_1 s_T, W_1 one
  GD step from 0 on (5), for every prefix T (diagonal unitary W, and a dense unitary W: the
  identity is algebraic). Fails if <A e_T | e_t> conjugates e_T instead of e_t, if s_0 != 0, or if
  the construction misplaces a3 / b1."""
  eta = 0.37
  params = jax.jit(ar.prop2_params, static_argnames='a3')(eta, a3=2.0)
  np.testing.assert_array_equal(np.asarray(params.a)[[0, 1, 3]], 0)
  assert params.b[1] == 0 and np.isclose(params.a[2] * params.b[0], eta)
  for s in (_unitary_seq(4), _dense_seq(5, complex_=True)):
    np.testing.assert_allclose(_predict(params, s), _gd_step_predictions(s, eta), **TOL)


def test_assumption2_a1_plus_a4_zero_leaves_the_s0_term():
  """a1 = -a4 = c (allowed by Prop. 2's a1 + a4 = 0) differs from the GD step by exactly
  c b1 <s_T | s_1>_C s_1: for t >= 2, s_t^H s_T = s_{t-1}^H s_{T-1} (W unitary) cancels, but the
  t = 1 term has s_0 = 0 (Lemma 4 writes it as if s_0 = W^{-1} s_1). Fails if the tokens' s_0 is
  not 0 or the a1 / a4 blocks are swapped with a2 / a3."""
  s, c, eta = _unitary_seq(6), 0.6, 0.25
  gd = _predict(ar.Assumption2Params(a=jnp.array([0.0, 0.0, 1.0, 0.0]), b=jnp.array([eta, 0.0])),
                s)
  params = ar.Assumption2Params(a=jnp.array([c, 0.0, 1.0, -c]), b=jnp.array([eta, 0.0]))
  extra = np.stack([c * eta * np.vdot(s[0], s[tt - 1]) * s[0] for tt in range(2, TMAX + 1)])
  np.testing.assert_allclose(_predict(params, s) - gd, extra, **TOL)
  assert np.min(np.abs(extra)) > 1e-2   # the boundary term is really there


def _deep_params(seed, layers=2):
  return ar.DeepParams(a=0.4 * _normal(seed, layers, 3 * D, 3 * D),
                       b=0.4 * _normal(seed + 1, layers, 3 * D, 3 * D),
                       ln_scale=1 + 0.3 * _normal(seed + 2, layers, 3 * D),
                       ln_bias=0.1 * _normal(seed + 3, layers, 3 * D))


def test_deep_equals_slow_loop_and_quadratic():
  """L = 2 layers on real orthogonal (non-commuting) data: prefix == T x T == an explicit float64
  loop with LayerNorm placed as documented ('branch': e + LN(u(e)); 'pre': e + u(LN(e)); 'none'),
  for each norm. Fails if LN moves, the residual is dropped, or a layer updates only some
  coordinates. Random LN scale / bias so both are used; tolerance 1e-4 (LN divides by an O(0.1)
  std: ~1e-6 error)."""
  params = _deep_params(7)
  e = _augmented(_dense_seq(8))
  outs = jax.jit(lambda p, x: [(ar.deep_all(p, x, norm=n, chunk=3),
                                ar.deep_all(p, x, norm=n, impl='quadratic')) for n in ar.NORMS]
                 )(params, e)
  for norm, (prefix, quadratic) in zip(ar.NORMS, outs):
    want = _slow_deep(params, e, norm)
    np.testing.assert_allclose(prefix, want, **TOL, err_msg=norm)
    np.testing.assert_allclose(quadratic, want, **TOL, err_msg=norm)


def test_deep_one_layer_without_norm_is_eq4():
  """One layer with norm='none' is eq. (4) with the same A, B. Fails if the depth stack and eq. (4)
  disagree on the residual or the section."""
  full = ar.Eq4Params(a=0.5 * _normal(9, 3 * D, 3 * D), b=0.5 * _normal(10, 3 * D, 3 * D))
  deep = ar.DeepParams(a=jnp.asarray(full.a)[None], b=jnp.asarray(full.b)[None],
                       ln_scale=jnp.ones((1, 3 * D)), ln_bias=jnp.zeros((1, 3 * D)))
  s = _dense_seq(10)
  np.testing.assert_allclose(_predict(deep, s, norm='none'), _predict(full, s), **TOL)


def _softmax_positional(seed, dp=3):
  return ar.PositionalSoftmax(pos=_normal(seed, TMAX, dp), w_q=_normal(seed + 1, dp, dp),
                              w_k=_normal(seed + 2, dp, dp))


@pytest.mark.parametrize('pos', ['matrix', 'softmax'])
def test_eq6_all_prefixes_equal_slow_loop(pos):
  """eq6_all == a per-prefix loop of eq. (6), tau = T - 1, <e_t | A^h e_{T-1}>_C, P_{T-1,t}, for
  Assumption 3 (A^h = diag a_h) and standard heads (A^h = W_K^T W_Q, B^h = W_O W_V, K != D), on
  complex tokens. Fails on an off-by-one in P or tau, a swapped conjugation, A^h transposed
  (W_Q^T W_K), or a head dropped."""
  e = _unitary_seq(12, d=3)[:-1]
  p = _normal(11, TMAX, TMAX) if pos == 'matrix' else _softmax_positional(11)
  p_mat = np.asarray(_pmat(p))
  a3 = ar.Assumption3Params(a=_normal(13, 2, 3), b=_normal(14, 2, 3), p=p)
  np.testing.assert_allclose(_eq6(a3, e),
                             _slow_eq6([np.diag(x) for x in a3.a], [np.diag(x) for x in a3.b],
                                       p_mat, e), **TOL)
  st = ar.StandardParams(w_q=_normal(15, 2, 4, 3), w_k=_normal(16, 2, 4, 3),
                         w_v=_normal(17, 2, 4, 3), w_o=_normal(18, 2, 3, 4), p=p)
  a_heads = [np.asarray(k_.T @ q_) for k_, q_ in zip(st.w_k, st.w_q)]
  b_heads = [np.asarray(o_ @ v_) for o_, v_ in zip(st.w_o, st.w_v)]
  np.testing.assert_allclose(_eq6(st, e), _slow_eq6(a_heads, b_heads, p_mat, e),
                             rtol=1e-4, atol=1e-3)  # O(10) outputs (unit-normal weights)


def test_lemma2_prop3_selector_zero_loss():
  """Lemma 2 / Prop. 3: P_{T-1,t} = delta_{t=T} and B^T A = I give T(e_{1:T}) = lambda^T, zero loss
  (3) on diagonal unitary contexts, here with a random invertible A (H = d = 3 heads) and
  B = A^{-T}, and with the library's prop3_params. The same params with P = 0 lose
  (t_max - 1) d, so the test is not vacuous. Fails if eq. (6) conjugates e_t instead of e_{T-1}
  (the output would be lambda^{T-2}) or P is read at the wrong row/column."""
  a = _rng(13).normal(size=(3, 3)) + 2 * np.eye(3)
  sel = np.eye(TMAX, k=1)
  params = ar.Assumption3Params(a=jnp.asarray(a, jnp.float32),
                                b=jnp.asarray(np.linalg.inv(a).T, jnp.float32),
                                p=jnp.asarray(sel, jnp.float32))
  lib = jax.jit(ar.prop3_params, static_argnums=(0, 1))(3, TMAX)
  np.testing.assert_array_equal(lib.p, sel)
  for seed in (14, 15):
    s = _unitary_seq(seed, d=3)
    assert _loss(params, s) < 1e-8
    assert _loss(lib, s) < 1e-10
  np.testing.assert_allclose(_loss(params._replace(p=jnp.zeros((TMAX, TMAX))), s),
                             (TMAX - 1) * 3, rtol=1e-6)


def test_lemma3_zero_loss_for_conjugate_pairs_only():
  """Lemma 3: P_{T-1,T-1} = -1, P_{T-1,T} = 2, B^T A = 1/2 diag(J, J) with delta = 2 heads (built
  here by hand, and lemma3_params) gives zero loss on conjugate-pair contexts (2 cos th R_th - I =
  R_2th), and not on generic unitary ones. Fails on a P off-by-one or a wrong conjugation."""
  a = jnp.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
  p = jnp.asarray(2 * np.eye(TMAX, k=1) - np.eye(TMAX), jnp.float32)
  params = ar.Assumption3Params(a=a, b=0.5 * a, p=p)
  lib = jax.jit(ar.lemma3_params, static_argnums=(0, 1))(4, TMAX)
  np.testing.assert_array_equal(np.asarray(lib.b).T @ np.asarray(lib.a),
                                np.asarray(params.b).T @ np.asarray(params.a))
  np.testing.assert_array_equal(lib.p, p)
  for seed in (16, 17):
    assert _loss(params, _pairs_seq(seed)) < 1e-9
    assert _loss(lib, _pairs_seq(seed)) < 1e-9
  assert _loss(params, _unitary_seq(18, d=4)) > 0.1


def test_standard_reducing_to_diagonal_equals_assumption3():
  """Standard heads with W_K^h = R_h (orthogonal), W_Q^h = R_h diag(a_h), W_V^h = N_h, W_O^h =
  diag(b_h) N_h^{-1} have A^h = diag(a_h), B^h = diag(b_h): same output as Assumption 3 on complex
  tokens, with a shared positional softmax. Fails if the standard path composes W's differently
  from A^h = W_K^T W_Q, B^h = W_O W_V."""
  rng, h, dim = _rng(19), 3, 3
  a, b = rng.normal(size=(h, dim)), rng.normal(size=(h, dim))
  r = np.linalg.qr(rng.normal(size=(h, dim, dim)))[0]
  n = rng.normal(size=(h, dim, dim)) + 3 * np.eye(dim)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  p = _softmax_positional(20)
  st = ar.StandardParams(w_q=f32(r * a[:, None, :]), w_k=f32(r), w_v=f32(n),
                         w_o=f32(b[:, :, None] * np.linalg.inv(n)), p=p)
  e = _unitary_seq(21, d=dim)[:-1]
  np.testing.assert_allclose(_eq6(st, e), _eq6(ar.Assumption3Params(f32(a), f32(b), p), e),
                             rtol=1e-4, atol=3e-4)  # inv(N) amplifies float32 rounding ~10x


def test_pe_only_loss_terms_are_eq7():
  """Per-prefix loss of the positional-only model on s_t = lambda^{t-1} (d = 1) equals eq. (7),
  |sum_{t<=T} p_t lambda^{2t-T} - lambda^T|^2 with p = P_{T-1, 1:T}, for random P and lambda =
  e^{i theta / mu}. Fails on a wrong power of lambda (e.g. no conjugate on e_{T-1}) or a P
  off-by-one."""
  p = _normal(22, TMAX, TMAX)
  phi = 2.3 / 1.7
  lam = np.exp(1j * phi)
  got = _loss_terms(ar.PEOnlyParams(p), _powers(np.array([phi])))
  pn = np.asarray(p, np.float64)
  want = [abs(sum(pn[tt - 2, t - 1] * lam ** (2 * t - tt) for t in range(1, tt + 1)) - lam ** tt)
          ** 2 for tt in range(2, TMAX + 1)]
  np.testing.assert_allclose(got, want, **TOL)


def test_pe_only_hessian_is_prop7():
  """The Hessian in p = P_{T-1, 1:T} of the mean prefix-T loss over lambda = e^{i theta / mu},
  theta ~ U(0, 2 pi) (midpoint rule, 4096 nodes: the integrand is a smooth trigonometric
  polynomial, error << 1e-4), is 2 H with H_{t,t'} = mu sin(4 pi (t'-t) / mu) / (4 pi (t'-t)),
  H_tt = 1 of Prop. 7 (the paper's H is the quadratic form's matrix, p^T H p; its Hessian is 2H).
  Fails if the model's loss is not eq. (7)."""
  mu, tt = 3.0, 5
  theta = (np.arange(4096) + 0.5) * (2 * np.pi / 4096)
  s_NxT = jnp.asarray(np.exp(1j * (theta / mu)[:, None] * np.arange(TMAX + 1)[None, :])[..., None],
                      jnp.complex64)

  def mean_loss_t(row):
    params = ar.PEOnlyParams(jnp.zeros((TMAX, TMAX)).at[tt - 2, :tt].set(row))
    return jnp.mean(jax.vmap(lambda s: ar.loss_terms(params, s)[tt - 2])(s_NxT))

  hess = jax.jit(jax.hessian(mean_loss_t))(jnp.zeros(tt))
  k = np.arange(tt)[None, :] - np.arange(tt)[:, None]
  with np.errstate(invalid='ignore', divide='ignore'):
    h = np.where(k == 0, 1.0, mu * np.sin(4 * np.pi * k / mu) / (4 * np.pi * k))
  np.testing.assert_allclose(hess, 2 * h, atol=1e-4)


def test_positional_softmax_rows_and_causality():
  """Softmax P: rows sum to 1 over c <= r + 1 and vanish beyond (eq. (6) reads P_{T-1, t<=T}).
  Causality through gradients: the prediction from e_{1:T} has exactly zero derivative in
  tokens e_{t>T}, for eq. (6) (softmax P), eq. (4) with chunked prefix sums and the deep model.
  Fails if a mask lets a later token in (e.g. a chunk's padding or the inter-chunk sum)."""
  p = _softmax_positional(23)
  p_mat = _pmat(p)
  np.testing.assert_allclose(jnp.sum(p_mat, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.triu(p_mat, k=2), 0)
  e = _augmented(_dense_seq(24))
  heads = ar.StandardParams(w_q=_normal(25, 2, 3, 3 * D), w_k=_normal(26, 2, 3, 3 * D),
                            w_v=_normal(27, 2, 3, 3 * D), w_o=_normal(28, 2, 3 * D, 3), p=p)
  full = ar.Eq4Params(a=_normal(29, 3 * D, 3 * D), b=_normal(30, 3 * D, 3 * D))
  models = [functools.partial(ar.eq6_all, heads),
            functools.partial(ar.eq4_all, full, chunk=3),
            functools.partial(ar.deep_all, _deep_params(31), chunk=2)]
  future = np.triu(np.ones((TMAX, TMAX), bool), k=1)   # [T, t]: t > T
  jacobians = jax.jit(lambda x: [jax.jacrev(f)(x) for f in models])(e)  # each [T, out, t, in]
  for jac in jacobians:
    influence = np.abs(np.asarray(jac)).sum(axis=(1, 3))
    assert np.all(influence[future] == 0)
    assert np.all(np.diag(influence)[1:] > 0)          # e_T itself reaches prefix T's output


_INITS = {   # model -> (init, documented leaf shapes)
    'assumption2': (lambda k: ar.init_assumption2(k), [(4,), (2,)]),
    'eq4': (lambda k: ar.init_eq4(k, D), [(3 * D, 3 * D)] * 2),
    'deep': (lambda k: ar.init_deep(k, D, 2), [(2, 3 * D, 3 * D)] * 2 + [(2, 3 * D)] * 2),
    'assumption3': (lambda k: ar.init_assumption3(k, D, 3, TMAX), [(3, D)] * 2 + [(TMAX, TMAX)]),
    'standard': (lambda k: ar.init_standard(k, 2 * D, 2, TMAX, head_dim=3, positional='softmax',
                                            pos_dim=5),
                 [(2, 3, 2 * D)] * 3 + [(2, 2 * D, 3), (TMAX, 5), (5, 5), (5, 5)]),
    'pe_only': (lambda k: ar.init_pe_only(TMAX), [(TMAX, TMAX)]),
}


def test_init_shapes_and_keys():
  """init functions give the documented parameter shapes (jax.eval_shape: no compilation), float32,
  and the same key gives the same parameters. Fails if a layout in the Params docstrings drifts."""
  for model, (init, shapes) in _INITS.items():
    leaves = jax.tree.leaves(jax.eval_shape(init, jax.random.key(0)))
    assert [x.shape for x in leaves] == shapes, model
    assert all(x.dtype == jnp.float32 for x in leaves), model
  init = jax.jit(_INITS['assumption2'][0])
  for x, y in zip(init(jax.random.key(1)), init(jax.random.key(1))):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(ar.init_pe_only(TMAX).p, 0)  # Sec. 6 starts P at 0


@pytest.mark.parametrize('model', list(_INITS))
def test_grad_finite_and_sgd_step_lowers_loss(model):
  """jax.grad of the batch loss (vmap + mean of loss (3)) is finite and nonzero at random
  parameters of init's shapes, and a small normalised SGD step lowers it. Fails if a parameter is
  disconnected (zero gradient), the complex loss gives a NaN gradient (e.g. |r| instead of
  Re(r conj r), or an unmasked softmax), or the gradient points the wrong way."""
  init, _ = _INITS[model]
  rng = _rng(40)
  abstract = jax.eval_shape(init, jax.random.key(0))
  params = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.normal(size=x.shape), jnp.float32),
                        abstract)
  if model == 'deep':
    params = params._replace(ln_scale=params.ln_scale + 1)
  kw = {'encoding': 'duplicated'} if model == 'standard' else {}
  data = jnp.asarray(np.stack([_dense_seq(i) if model == 'deep' else _unitary_seq(i)
                               for i in range(41, 45)]))
  value_and_grad = jax.jit(jax.value_and_grad(lambda p: ar.mean_loss(p, data, **kw)))
  value, grads = value_and_grad(params)
  grads = [np.asarray(g) for g in jax.tree.leaves(grads)]
  assert all(np.all(np.isfinite(g)) for g in grads)
  norm = np.sqrt(sum(np.sum(g * g) for g in grads))
  assert norm > 0
  stepped = jax.tree.unflatten(jax.tree.structure(params), [
      jnp.asarray(np.asarray(x) - 1e-3 * g / norm) for x, g in zip(jax.tree.leaves(params), grads)])
  assert value_and_grad(stepped)[0] < value


def test_bad_inputs_raise():
  """One clear ValueError naming the argument: encoding not allowed for the model, unknown norm or
  impl, complex tokens into the deep (LayerNorm) model, P smaller than the sequence."""
  s = _unitary_seq(50)
  full = ar.Eq4Params(a=jnp.zeros((3 * D, 3 * D)), b=jnp.zeros((3 * D, 3 * D)))
  with pytest.raises(ValueError, match='encoding'):
    _predict(full, s, encoding='plain')
  with pytest.raises(ValueError, match='encoding'):
    _predict(ar.PEOnlyParams(jnp.zeros((TMAX, TMAX))), s, encoding='duplicated')
  with pytest.raises(ValueError, match='norm'):
    _predict(_deep_params(0, layers=1), _dense_seq(0), norm='post')
  with pytest.raises(ValueError, match='impl'):
    _predict(full, s, impl='fft')
  with pytest.raises(ValueError, match='real tokens'):
    _predict(_deep_params(0, layers=1), s)
  with pytest.raises(ValueError, match='smaller'):
    _predict(ar.PEOnlyParams(jnp.zeros((TMAX - 2, TMAX - 2))), s)
