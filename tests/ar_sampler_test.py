"""Tests of icl_jax.samplers.autoregressive: context matrices W of Assumption 1 / Section 6,
sequences s_{t+1} = W s_t (Section 3), token encodings and bad-input errors.

Truth is NumPy float64 (W^H W = I, commutators, eigenvalues) or an identity of the definitions;
float32 draws are compared with tolerances of a few hundred float32 epsilons (the sequences
compound t_max = 6 rotations). Monte-Carlo checks use z = 5 standard errors of their own sample
(a false failure has probability ~1e-6 per check).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax.samplers import autoregressive as ar
from icl_jax.samplers import kernel_gp

T_MAX = 6
NUM_KEYS = 6
Z = 5.0
TOL = 2e-5  # float32: ~150 eps, for products of up to 7 unit-modulus factors

# (name, kind, d, real, mu)
CONFIGS = (
    ('unitary', 'unitary', 3, False, 1.0),
    ('orth_comm', 'orthogonal_commuting', 4, False, 1.0),
    ('orth_comm_real', 'orthogonal_commuting', 4, True, 1.0),
    ('orthogonal', 'orthogonal', 4, False, 1.0),
    ('mu_d1', 'mu', 1, False, 3.0),
    ('mu_d3', 'mu', 3, False, 2.5),
)
COMMUTING = ('unitary', 'orth_comm', 'orth_comm_real', 'mu_d1', 'mu_d3')


@pytest.fixture(scope='module')
def draws():
  """One jitted program: W and s for NUM_KEYS keys per config, and 20,000 eigenvalue draws."""
  keys = jax.random.split(jax.random.key(0), NUM_KEYS)
  many = jax.random.split(jax.random.key(1), 20000)

  @jax.jit
  def draw():
    out = {}
    for name, kind, d, real, mu in CONFIGS:
      out[name] = dict(
          w=jax.vmap(lambda k: ar.context_matrix(k, kind, d, mu=mu, real=real))(keys),
          s=jax.vmap(lambda k: ar.sequence(k, kind, d, T_MAX, mu=mu, real=real))(keys))
    out['lam'] = jax.vmap(lambda k: ar.eigenvalues(k, 'orthogonal_commuting', 4))(keys)
    out['many_unitary'] = jax.vmap(lambda k: ar.eigenvalues(k, 'unitary', 2))(many)
    out['many_orth'] = jax.vmap(lambda k: ar.eigenvalues(k, 'orthogonal_commuting', 2))(many)
    out['many_mu'] = jax.vmap(lambda k: ar.angles(k, 'mu', 1, mu=3.0))(many)
    k7 = jax.random.key(7)
    out['haar_pair'] = (ar.context_matrix(k7, 'orthogonal', 5), kernel_gp.haar_orthogonal(k7, 5))
    k3, k4 = jax.random.key(3), jax.random.key(4)
    out['same_key'] = (ar.sequence(k3, 'unitary', 2, 4), ar.sequence(k3, 'unitary', 2, 4),
                       ar.sequence(k4, 'unitary', 2, 4), ar.sequence(k3, 'mu', 2, 4, mu=1.0))
    return out

  return jax.tree.map(np.asarray, draw())


def _config(name):
  return next(c for c in CONFIGS if c[0] == name)


@pytest.mark.parametrize('name', [c[0] for c in CONFIGS])
def test_shapes_dtypes_finite(draws, name):
  """W is [d, d], s is [t_max + 1, d]; complex for the diagonal kinds, real for 'orthogonal' and
  real=True. Fails on an off-by-one in the number of rows, a wrong dtype or NaN."""
  _, kind, d, real, _ = _config(name)
  w, s = draws[name]['w'], draws[name]['s']
  assert w.shape == (NUM_KEYS, d, d) and s.shape == (NUM_KEYS, T_MAX + 1, d)
  want_complex = kind != 'orthogonal' and not real
  assert np.iscomplexobj(w) == want_complex and np.iscomplexobj(s) == want_complex
  assert w.dtype in (np.float32, np.complex64)  # default dtype (no x64 here)
  assert np.all(np.isfinite(w)) and np.all(np.isfinite(s))


@pytest.mark.parametrize('name', [c[0] for c in CONFIGS])
def test_w_is_unitary(draws, name):
  """W^H W = I: C_U / C_O are in U(d) / O(d) (Assumption 1), Haar draws in O(d). Fails if an
  eigenvalue leaves the unit circle (e.g. theta used as lambda) or a rotation block is wrong."""
  w = draws[name]['w'].astype(np.complex128)
  d = w.shape[-1]
  wh_w = np.conj(np.swapaxes(w, 1, 2)) @ w
  np.testing.assert_allclose(wh_w, np.broadcast_to(np.eye(d), wh_w.shape), atol=TOL)


@pytest.mark.parametrize('name', [c[0] for c in CONFIGS])
def test_sequence_recursion(draws, name):
  """s_1 = 1_d and s_{t+1} = W s_t with W = context_matrix(same key): fails if the powers start
  at lambda^1, the dense scan drops or repeats a row, or sequence and context_matrix disagree."""
  w = draws[name]['w'].astype(np.complex128)
  s = draws[name]['s'].astype(np.complex128)
  np.testing.assert_allclose(s[:, 0], np.ones_like(s[:, 0]), atol=0)
  np.testing.assert_allclose(s[:, 1:], np.einsum('kij,ktj->kti', w, s[:, :-1]), atol=TOL)


def test_commuting_kinds_commute_across_keys(draws):
  """W_a W_b = W_b W_a for every pair of keys of a commuting kind (Assumption 1), including the
  real block form; Haar draws do not commute (so the check can fail)."""
  for name in COMMUTING:
    w = draws[name]['w'].astype(np.complex128)
    comm = np.einsum('aij,bjk->abik', w, w) - np.einsum('bij,ajk->abik', w, w)
    assert np.max(np.abs(comm)) < TOL, name
  w = draws['orthogonal']['w'].astype(np.float64)
  comm = w[0] @ w[1] - w[1] @ w[0]
  assert np.max(np.abs(comm)) > 1e-2


def test_orthogonal_commuting_conjugate_pairs(draws):
  """C_O: lambda_{2k} = conj(lambda_{2k-1}) (adjacent pairs) and W = diag(lambda). Fails if the
  pairs are laid out as (th_1, th_2, ..., -th_1, ...) or a pair is not conjugate."""
  lam = draws['lam'].astype(np.complex128)
  np.testing.assert_allclose(lam[:, 1::2], np.conj(lam[:, 0::2]), atol=1e-6)
  w = draws['orth_comm']['w']
  np.testing.assert_allclose(w, np.stack([np.diag(l) for l in draws['lam']]), atol=0)


def test_real_form_same_spectrum(draws):
  """real=True is blockdiag of 2 x 2 rotations [[c, -s], [s, c]] with the eigenvalues of the
  complex form from the same key (Remark 1). Fails on a transposed block (spectrum is the same,
  so the block layout is checked too), a new draw, or blocks in the wrong places."""
  w_real = draws['orth_comm_real']['w'].astype(np.float64)
  lam = draws['lam'].astype(np.complex128)
  for k in range(NUM_KEYS):
    ev = np.linalg.eigvals(w_real[k])
    key = lambda z: (np.round(z.real, 5), np.round(z.imag, 5))
    np.testing.assert_allclose(sorted(ev, key=key), sorted(lam[k], key=key), atol=1e-5)
    for b in range(2):
      th = np.angle(lam[k, 2 * b])
      blk = w_real[k, 2 * b:2 * b + 2, 2 * b:2 * b + 2]
      np.testing.assert_allclose(blk, [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]],
                                 atol=1e-5)
  assert np.all(w_real[:, 0:2, 2:4] == 0) and np.all(w_real[:, 2:4, 0:2] == 0)


def test_orthogonal_reuses_haar(draws):
  """'orthogonal' is kernel_gp.haar_orthogonal of the same key (one Haar sampler, already tested
  for Haar moments)."""
  np.testing.assert_array_equal(*draws['haar_pair'])


def _mc_mean(samples, expected, what):
  samples = np.asarray(samples)
  mean = samples.mean(axis=0)
  se = samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])
  assert np.all(np.abs(mean - expected) <= Z * se + 1e-7), (what, mean, expected, se)


def test_eigenvalue_distributions(draws):
  """Uniform angles: E[lambda^k] = 0 (k = 1, 2) on C_U and C_O, E[lambda] = mean_power(1, mu)
  for W(mu) with angles in [0, 2 pi / mu). Fails on theta ~ U(0, pi), a missing 1/mu, or mu
  applied as a power (each moves a moment by > 50 standard errors at 20,000 draws)."""
  for name in ('many_unitary', 'many_orth'):
    lam = draws[name].astype(np.complex128)
    for k in (1, 2):
      _mc_mean((lam**k).real, 0.0, (name, k, 're'))
      _mc_mean((lam**k).imag, 0.0, (name, k, 'im'))
  phi = draws['many_mu'].astype(np.float64)[:, 0]
  assert phi.min() >= 0 and phi.max() < 2 * np.pi / 3.0
  x = 2 * np.pi / 3.0
  m1 = (np.exp(1j * x) - 1) / (1j * x)  # E e^{i phi}, phi ~ U(0, x)
  _mc_mean(np.cos(phi), m1.real, 'mu re')
  _mc_mean(np.sin(phi), m1.imag, 'mu im')


def test_same_key_same_output_and_mu_one_is_unitary(draws):
  """A sequence is a function of its key (one draw per key), different keys differ, and
  W(1) = C_U (Section 5.3: mu = 1 is the uniform circle) for the same key."""
  s0, s0_again, s1, s0_mu1 = draws['same_key']
  np.testing.assert_array_equal(s0, s0_again)
  assert np.max(np.abs(s0 - s1)) > 1e-3
  np.testing.assert_allclose(s0_mu1, s0, atol=1e-6)


def test_token_layouts():
  """augmented: e_t = (0, s_t, s_{t-1}) with s_0 = 0 (Section 3); duplicated: (s_t, s_t).
  Fails if the blocks are swapped, s_0 is s_1 or the previous state is shifted the wrong way."""
  s = np.arange(1, 13, dtype=np.float32).reshape(4, 3) * (1 + 1j)
  e = np.asarray(ar.augmented(jnp.asarray(s)))
  assert e.shape == (4, 9)
  np.testing.assert_array_equal(e[:, :3], 0)
  np.testing.assert_array_equal(e[:, 3:6], s)
  np.testing.assert_array_equal(e[0, 6:], 0)
  np.testing.assert_array_equal(e[1:, 6:], s[:-1])
  dup = np.asarray(ar.duplicated(jnp.asarray(s)))
  assert dup.shape == (4, 6)
  np.testing.assert_array_equal(dup, np.concatenate([s, s], axis=1))


_KEY = jax.random.key(0)
BAD = [
    ('kind', lambda: ar.sequence(_KEY, 'rotation', 2, 4)),
    ('kind', lambda: ar.context_matrix(_KEY, 'Unitary', 2)),
    ('kind', lambda: ar.eigenvalues(_KEY, 'orthogonal', 2)),
    ('d', lambda: ar.sequence(_KEY, 'orthogonal_commuting', 3, 4)),
    ('d', lambda: ar.context_matrix(_KEY, 'orthogonal_commuting', 5, real=True)),
    ('d', lambda: ar.sequence(_KEY, 'unitary', 0, 4)),
    ('d', lambda: ar.eigenvalues(_KEY, 'unitary', 2.0)),
    ('t_max', lambda: ar.sequence(_KEY, 'unitary', 2, 1)),
    ('t_max', lambda: ar.sequence(_KEY, 'orthogonal', 2, 0)),
    ('mu', lambda: ar.sequence(_KEY, 'mu', 1, 4, mu=0.5)),
    ('mu', lambda: ar.eigenvalues(_KEY, 'mu', 1, mu=float('nan'))),
    ('real', lambda: ar.context_matrix(_KEY, 'unitary', 2, real=True)),
]


@pytest.mark.parametrize('arg,call', BAD, ids=[f'{a}-{i}' for i, (a, _) in enumerate(BAD)])
def test_bad_input_one_line(arg, call):
  """Each bad input raises ValueError whose message is one line starting with the argument's
  name and stating what is allowed; fails on a silent NaN sequence or a traceback-only error."""
  with pytest.raises(ValueError) as err:
    call()
  msg = str(err.value)
  assert '\n' not in msg and msg.startswith(f'{arg}:') and 'expected' in msg, msg


def test_sequences_is_sequence_per_split_key():
  """sequences(key, ..., num)[i] is sequence(split(key, num)[i], ...) exactly, for a dense
  (orthogonal, real) and a diagonal (unitary, complex) kind; fails on another key split or a W
  shared by the batch."""
  key = jax.random.key(3)
  for kind, kw in (('orthogonal', {}), ('orthogonal_commuting', {'real': True}), ('unitary', {})):
    s = ar.sequences(key, kind, 4, 5, 3, **kw)
    assert s.shape == (3, 6, 4)
    for i, k in enumerate(jax.random.split(key, 3)):
      np.testing.assert_array_equal(s[i], ar.sequence(k, kind, 4, 5, **kw))
    assert np.abs(np.asarray(s[0] - s[1])).max() > 1e-3
