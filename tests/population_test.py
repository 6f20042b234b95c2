"""Tests of icl_jax.population: Monte-Carlo means, standard errors, gradients, sharding.

Not tested: that memory stays flat in num_samples (needs a memory profiler; too slow here).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import distributed, population
from icl_jax.models import lsa
from icl_jax.samplers import regression
from icl_jax.theory import trained_lsa as th

D, N = 3, 4
COV = np.array([0.5, 1.0, 2.0], np.float32)


def _sample(key):
  """Module-level so that every test hashes the same static sampler (one compilation)."""
  return regression.linear_prompt(key, n=N, cov=jnp.asarray(COV))


def _query_stats(prompt):
  """(x_query, x_query^2): exact means 0 and diag(Lambda)."""
  return prompt.x_query, jnp.square(prompt.x_query)


def _params(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return lsa.Params(w_kq=0.4 * jax.random.normal(k1, (D + 1, D + 1)),
                    w_pv=0.4 * jax.random.normal(k2, (D + 1, D + 1)))


def test_mc_stats_matches_numpy_on_the_same_draws():
  """mean and stderr (population sd / sqrt(num)) of mc_stats equal numpy's on the very same
  prompts (chunk c uses split(fold_in(key, c), chunk)); rtol 1e-5 / 1e-4: float32 reductions
  in a different order (the pooled variance goes through chunk means). Fails on a wrong pooled
  variance (e.g. dropping the between-chunk part) or a wrong key schedule."""
  key, num, chunk = jax.random.key(0), 512, 128
  (mean_q, mean_q2), (se_q, se_q2) = population.mc_stats(_query_stats, _sample, key,
                                                         num_samples=num, chunk=chunk)
  keys = jnp.concatenate([jax.random.split(jax.random.fold_in(key, c), chunk)
                          for c in range(num // chunk)])
  q = np.asarray(jax.vmap(_sample)(keys).x_query, np.float64)
  for vals, mean, se in ((q, mean_q, se_q), (q**2, mean_q2, se_q2)):
    assert mean.shape == se.shape == (D,)
    np.testing.assert_allclose(mean, vals.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(se, vals.std(0) / np.sqrt(num), rtol=1e-4)


def test_mc_stats_known_means_any_chunk():
  """E x_query = 0, E x_query^2 = diag(Lambda) within 4 se (false alarm ~6e-5 per entry) for
  two chunk sizes (different keys, so not equal numbers, but each within its error)."""
  for chunk in (1000, 4000):
    (m, m2), (se, se2) = population.mc_stats(_query_stats, _sample, jax.random.key(1),
                                             num_samples=40_000, chunk=chunk)
    assert np.all(np.abs(np.asarray(m)) <= 4 * np.asarray(se))
    assert np.all(np.abs(np.asarray(m2) - COV) <= 4 * np.asarray(se2))


def test_stderr_coverage():
  """Over 400 independent replicates of a 64-prompt estimate of E x_query,1 = 0 (Gaussian),
  mean +- 2 se covers 0 in about 95% of them. The binomial sd of the coverage is 1.1%; the
  band [0.90, 0.99] is ~4 sd below and ~3.5 sd above. An se off by a factor 2 (e.g. divided
  by sqrt(chunk) in place of sqrt(num)) gives ~68% or ~99.99% and fails."""
  def one(key):
    (m, _), (se, _) = population.mc_stats(_query_stats, _sample, key, num_samples=64, chunk=16)
    return jnp.abs(m[0]) <= 2 * se[0]

  covered = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(2), 400))
  assert 0.90 <= float(jnp.mean(covered)) <= 0.99


def test_same_key_same_estimate():
  """Same key -> identical mean; another key -> a different one."""
  kw = dict(num_samples=256, chunk=64)
  a = population.mc_stats(_query_stats, _sample, jax.random.key(3), **kw)[0][1]
  b = population.mc_stats(_query_stats, _sample, jax.random.key(3), **kw)[0][1]
  c = population.mc_stats(_query_stats, _sample, jax.random.key(4), **kw)[0][1]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_mc_max_is_the_max_over_the_mc_stats_prompts():
  """mc_max equals a direct vmapped max over the keys split(fold_in(key, c), chunk), c < num /
  chunk, i.e. over the prompts mc_stats draws; rtol 1e-6 (~8 float32 ulps: the max itself does
  not round, but the sampler's sqrt(Lambda) z may fuse differently jitted and eager). Its pytree
  structure and shapes follow stat_fn's. Fails on a wrong key schedule (e.g. fold_in(key, 0)
  for every chunk, or split(key, num)), which picks other prompts and another max."""
  key, num, chunk = jax.random.key(7), 512, 128
  q_max, q2_max = population.mc_max(_query_stats, _sample, key, num_samples=num, chunk=chunk)
  keys = jnp.concatenate([jax.random.split(jax.random.fold_in(key, c), chunk)
                          for c in range(num // chunk)])
  q = np.asarray(jax.vmap(_sample)(keys).x_query)
  assert q_max.shape == q2_max.shape == (D,)
  np.testing.assert_allclose(q_max, q.max(0), rtol=1e-6)
  np.testing.assert_allclose(q2_max, np.square(q).max(0), rtol=1e-6)
  assert not np.allclose(q_max, np.asarray(jax.vmap(_sample)(
      jax.random.split(key, num)).x_query).max(0))


def test_bad_sizes_raise():
  """num_samples must be a positive multiple of chunk; chunk must divide over the mesh."""
  with pytest.raises(ValueError, match='multiple of chunk'):
    population.mc_stats(_query_stats, _sample, jax.random.key(0), num_samples=100, chunk=64)
  with pytest.raises(ValueError, match='multiple of chunk'):
    population.mc_loss(lsa.squared_error, _sample, _params(), jax.random.key(0), num_prompts=0,
                       chunk=4)
  with pytest.raises(ValueError, match='device count'):
    population.mc_stats(_query_stats, _sample, jax.random.key(0), num_samples=12, chunk=12,
                        mesh=distributed.data_mesh())
  with pytest.raises(ValueError, match='multiple of chunk'):
    population.mc_max(_query_stats, _sample, jax.random.key(0), num_samples=100, chunk=64)


def _per_prompt_loss_and_grad(prompt, params):
  return jax.value_and_grad(lsa.squared_error)(params, prompt)


def test_mc_value_and_grad_matches_exact_gradient():
  """mc_value_and_grad vs jax.grad of the exact population_loss (random weights, every block
  nonzero), 2e5 prompts. Each gradient entry within 4 se, the se from mc_stats of per-prompt
  gradients on the SAME prompts, whose mean must also equal mc_value_and_grad's gradient
  (rtol 1e-4 + atol 1e-6: float32, chunk means summed in another order); mc_loss gives the
  same loss and se as mc_stats. Also requires the se
  to be <= 3% of the gradient norm, so the check has power. Entries that do not enter eq. (6)
  are exactly 0 in both."""
  params, key, num, chunk = _params(1), jax.random.key(5), 200_000, 20_000
  loss, grad = population.mc_value_and_grad(lsa.squared_error, _sample, params, key,
                                            num_prompts=num, chunk=chunk)
  (m_loss, m_grad), (se_loss, se_grad) = population.mc_stats(
      _per_prompt_loss_and_grad, _sample, key, (params,), num_samples=num, chunk=chunk)
  np.testing.assert_allclose(loss, m_loss, rtol=1e-5)
  l_mean, l_se = population.mc_loss(lsa.squared_error, _sample, params, key, num_prompts=num,
                                    chunk=chunk)
  np.testing.assert_allclose(l_mean, m_loss, rtol=1e-5)
  np.testing.assert_allclose(l_se, se_loss, rtol=1e-4)
  exact_loss, exact_grad = jax.value_and_grad(
      lambda p: th.population_loss(p.w_kq, p.w_pv, jnp.asarray(COV), N))(params)
  assert abs(float(loss) - float(exact_loss)) <= 4 * float(se_loss)
  norm = np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(exact_grad)))
  for g, mg, se, ex in zip(jax.tree.leaves(grad), jax.tree.leaves(m_grad),
                           jax.tree.leaves(se_grad), jax.tree.leaves(exact_grad)):
    g, mg, se, ex = (np.asarray(a, np.float64) for a in (g, mg, se, ex))
    np.testing.assert_allclose(g, mg, rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(g - ex) <= 4 * se + 1e-6), (g, ex, se)
    assert np.all(se <= 0.03 * norm)
  np.testing.assert_array_equal(np.asarray(grad.w_kq)[:, D], 0.0)
  np.testing.assert_array_equal(np.asarray(grad.w_pv)[:D, :], 0.0)


def test_eight_devices_give_the_same_numbers_as_one():
  """With mesh=data_mesh() (8 simulated CPU devices) mc_stats, mc_max and mc_value_and_grad
  return the numbers of mesh=None: the keys of a chunk do not depend on the device count.
  rtol 1e-5: only the float32 reduction order may differ across shards (mc_max: exact)."""
  assert jax.device_count() == 8
  mesh = distributed.data_mesh()
  params, key = _params(2), jax.random.key(6)
  kw = dict(num_samples=1024, chunk=256)
  one = population.mc_stats(_query_stats, _sample, key, **kw)
  eight = population.mc_stats(_query_stats, _sample, key, mesh=mesh, **kw)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  one = population.mc_max(_query_stats, _sample, key, **kw)
  eight = population.mc_max(_query_stats, _sample, key, mesh=mesh, **kw)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_array_equal(a, b)
  kw = dict(num_prompts=1024, chunk=256)
  one = population.mc_value_and_grad(lsa.squared_error, _sample, params, key, **kw)
  eight = population.mc_value_and_grad(lsa.squared_error, _sample, params, key, mesh=mesh, **kw)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
