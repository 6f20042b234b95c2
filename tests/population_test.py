"""Tests of icl_jax.population: Monte-Carlo means, standard errors, gradients, sharding.

Not tested: that memory stays flat in num_samples (needs a memory profiler; too slow here).
"""

import logging
import re

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
  prompts (prompt i uses fold_in(key, i)); rtol 1e-5 / 1e-4: float32 reductions
  in a different order (the pooled variance goes through chunk means). Fails on a wrong pooled
  variance (e.g. dropping the between-chunk part) or a wrong key schedule."""
  key, num, chunk = jax.random.key(0), 512, 128
  (mean_q, mean_q2), (se_q, se_q2) = population.mc_stats(_query_stats, _sample, key,
                                                         num_samples=num, chunk=chunk)
  keys = jnp.stack([jax.random.fold_in(key, i) for i in range(num)])
  q = np.asarray(jax.vmap(_sample)(keys).x_query, np.float64)
  for vals, mean, se in ((q, mean_q, se_q), (q**2, mean_q2, se_q2)):
    assert mean.shape == se.shape == (D,)
    np.testing.assert_allclose(mean, vals.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(se, vals.std(0) / np.sqrt(num), rtol=1e-4)


def test_mc_stats_known_means_any_chunk():
  """E x_query = 0, E x_query^2 = diag(Lambda) within 4 se (false alarm ~6e-5 per entry) for
  two chunk sizes, which draw the same prompts (keys fold_in(key, i)) and so give the same
  numbers to float32 reduction order (rtol 1e-5)."""
  got = []
  for chunk in (1000, 4000):
    (m, m2), (se, se2) = population.mc_stats(_query_stats, _sample, jax.random.key(1),
                                             num_samples=40_000, chunk=chunk)
    assert np.all(np.abs(np.asarray(m)) <= 4 * np.asarray(se))
    assert np.all(np.abs(np.asarray(m2) - COV) <= 4 * np.asarray(se2))
    got.append(np.asarray(m2))
  np.testing.assert_allclose(got[0], got[1], rtol=1e-5)


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
  """mc_max equals a direct vmapped max over the keys fold_in(key, i), i < num, i.e. over the
  prompts mc_stats draws; rtol 1e-6 (~8 float32 ulps: the max itself does
  not round, but the sampler's sqrt(Lambda) z may fuse differently jitted and eager). Its pytree
  structure and shapes follow stat_fn's. Fails on a wrong key schedule (e.g. the same index in
  every chunk, or split(fold_in(key, c), chunk) per chunk c, which changes with the chunk
  size), which picks other prompts and another max. (split(key, num)[i] equals fold_in(key, i)
  under jax's partitionable threefry, so it is the same schedule.)"""
  key, num, chunk = jax.random.key(7), 512, 128
  q_max, q2_max = population.mc_max(_query_stats, _sample, key, num_samples=num, chunk=chunk)
  keys = jnp.stack([jax.random.fold_in(key, i) for i in range(num)])
  q = np.asarray(jax.vmap(_sample)(keys).x_query)
  assert q_max.shape == q2_max.shape == (D,)
  np.testing.assert_allclose(q_max, q.max(0), rtol=1e-6)
  np.testing.assert_allclose(q2_max, np.square(q).max(0), rtol=1e-6)
  per_chunk = jnp.concatenate([jax.random.split(jax.random.fold_in(key, c), chunk)
                               for c in range(num // chunk)])   # a chunk-dependent schedule
  assert not np.allclose(q_max, np.asarray(jax.vmap(_sample)(per_chunk).x_query).max(0))


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


def _largest_chunk_by_search(num, bytes_per, budget, multiple_of):
  """The definition, by exhaustive search: the largest divisor of num that is a multiple of
  multiple_of and fits the budget (None if there is none)."""
  fits = [c for c in range(1, num + 1)
          if num % c == 0 and c % multiple_of == 0 and c * bytes_per <= budget]
  return max(fits) if fits else None


@pytest.mark.parametrize('num,bytes_per,budget,multiple_of', [
    (1000, 100, 25_000, 4), (1000, 100, 10**9, 8), (4096, 7, 1000, 2), (12, 1, 12, 3),
    (999, 10, 5000, 1), (98_304, 4 * 21 * 101, 1 << 30, 8), (60, 3, 100, 6)])
def test_chunk_size_is_the_largest_fitting_divisor(num, bytes_per, budget, multiple_of):
  """chunk_size agrees with an exhaustive search over all chunk sizes (largest divisor of num,
  multiple of multiple_of, chunk * bytes_per_sample <= budget): fails if it can exceed the
  budget, break the device multiple, leave a remainder, or settle for a smaller chunk."""
  want = _largest_chunk_by_search(num, bytes_per, budget, multiple_of)
  assert want is not None
  assert population.chunk_size(num, bytes_per, budget_bytes=budget,
                               multiple_of=multiple_of) == want


def test_chunk_size_errors():
  """No fitting chunk, or num_samples not a multiple of the device multiple: ValueError naming
  the numbers (an app turns it into a ConfigError)."""
  with pytest.raises(ValueError, match='num_samples=100 must be a multiple of 8'):
    population.chunk_size(100, 4, multiple_of=8)
  with pytest.raises(ValueError, match='exceed the budget of 100 bytes'):
    population.chunk_size(64, 30, budget_bytes=100, multiple_of=4)
  assert _largest_chunk_by_search(64, 30, 100, 4) is None


def _mc_pass(chunks, chunk=256):
  out = population.mc_stats(_query_stats, _sample, jax.random.key(4), num_samples=chunks * chunk,
                            chunk=chunk, mesh=distributed.data_mesh())
  jax.block_until_ready(out)


def test_progress_logs_chunks_only_inside_its_context(caplog):
  """Inside progress(label, seconds=0) a Monte-Carlo pass of 6 chunks (sharded over the 8
  devices) logs lines with the label, 'chunk i/6', prompts/s and an ETA, with i increasing and
  each chunk at most once; the same pass outside any progress context (after it) logs nothing.
  Fails if progress is silent, repeats a chunk, or logs outside its block."""
  _mc_pass(6)   # compile outside the measurement
  caplog.set_level(logging.INFO, logger='absl')
  caplog.clear()
  with population.progress('stage 1/1: test pass', seconds=0.0):
    _mc_pass(6)
  lines = [r.getMessage() for r in caplog.records if 'stage 1/1: test pass' in r.getMessage()]
  assert lines, caplog.text
  assert all('prompts/s' in ln and 'ETA' in ln for ln in lines), lines
  chunks = [int(re.search(r'chunk (\d+)/6', ln).group(1)) for ln in lines]
  assert chunks == sorted(set(chunks)) and all(1 <= i <= 6 for i in chunks), lines
  caplog.clear()
  _mc_pass(6)
  assert not [r for r in caplog.records if 'chunk' in r.getMessage()], caplog.text


def test_progress_waits_for_seconds():
  """With seconds larger than the pass, only the last chunk may log, and only if the pass ran
  longer than seconds: a fast pass under a 60 s cadence logs nothing (no line per chunk)."""
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger('absl')
  logger.addHandler(handler)
  old = logger.level
  logger.setLevel(logging.INFO)
  try:
    with population.progress('slow cadence', seconds=60.0):
      _mc_pass(6)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(old)
  assert not [r for r in records if 'slow cadence' in r.getMessage()]
