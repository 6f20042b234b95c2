"""Tests of icl_jax.prompts: the embedding (4) and the Gram matrices eq. (6) reads."""

import jax
import jax.numpy as jnp
import numpy as np

from icl_jax import prompts
from icl_jax.samplers import regression

D, N = 3, 5
COV = jnp.array([0.5, 1.0, 2.0])


def _prompt(seed=0, n=N):
  return regression.linear_prompt(jax.random.key(seed), n=n, cov=COV)


def test_embed_layout_eq4():
  """E(P) = [[x_1..x_n, x_q], [y_1..y_n, 0]]; fails on a transposed or misplaced block."""
  p = _prompt()
  e = np.asarray(prompts.embed(p))
  assert e.shape == (D + 1, N + 1)
  assert e.dtype == np.float32
  np.testing.assert_array_equal(e[:D, :N], np.asarray(p.x).T)
  np.testing.assert_array_equal(e[D, :N], np.asarray(p.y))
  np.testing.assert_array_equal(e[:D, N], np.asarray(p.x_query))
  assert e[D, N] == 0.0  # the query label is hidden


def test_prompt_n_d_properties():
  """Fails if n/d are read from the wrong axis."""
  p = _prompt(n=7)
  assert (p.n, p.d) == (7, D)


def test_gram_equals_embed_outer_product():
  """gram(P) == E E^T / n; fails if a block (e.g. the query outer product) is dropped.

  Tolerance 1e-5 relative: float32 sums of a few terms in a different order.
  """
  p = _prompt(1)
  e = prompts.embed(p)
  g = prompts.gram(p)
  assert g.shape == (D + 1, D + 1)
  np.testing.assert_allclose(g, e @ e.T / N, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g, g.T, rtol=1e-6)


def test_gram_from_stats_equals_gram():
  """gram_from_stats(S, w, q) == gram(P) for the noiseless prompt with the same S, w, q.

  Fails if the stats version forgets the q q^T / n term or uses S w in the wrong place.
  Tolerance 1e-5 relative: float32 reassociation (X^T X w vs X^T (X w)).
  """
  p = _prompt(2)
  w = jax.random.normal(jax.random.key(5), (D,))
  p = p.replace(y=p.x @ w, y_query=p.x_query @ w)
  stats = prompts.LinearPromptStats(x_factor=p.x.T / np.sqrt(N), w=w, x_query=p.x_query,
                                    y_query=p.y_query, n=N)
  np.testing.assert_allclose(prompts.gram_from_stats(stats), prompts.gram(p), rtol=1e-5,
                             atol=1e-5)


def test_embed_vmaps_over_prompts():
  """Batches are vmap over keys; fails if embed assumes an unbatched leading axis wrongly."""
  keys = jax.random.split(jax.random.key(3), 4)
  batch = jax.vmap(lambda k: regression.linear_prompt(k, n=N, cov=COV))(keys)
  e = jax.vmap(prompts.embed)(batch)
  assert e.shape == (4, D + 1, N + 1)
  np.testing.assert_array_equal(e[2], prompts.embed(jax.tree.map(lambda a: a[2], batch)))
