"""Tests of icl_jax.distributed on the 8 simulated CPU devices set up in conftest.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_jax import distributed


def test_eight_simulated_devices():
  """conftest forces 8 host devices; fails if XLA_FLAGS was set after jax initialised."""
  assert jax.device_count() == 8


def test_data_mesh_and_shardings():
  """A 1-D 'data' mesh over all devices; batch sharding splits the leading axis 8 ways and
  replicated keeps a full copy on each device."""
  mesh = distributed.data_mesh()
  assert mesh.axis_names == (distributed.DATA_AXIS,) and mesh.size == 8
  x = jax.device_put(jnp.arange(16.0).reshape(16, 1), distributed.batch_sharding(mesh))
  assert {s.data.shape for s in x.addressable_shards} == {(2, 1)}
  r = jax.device_put(jnp.ones(3), distributed.replicated(mesh))
  assert all(s.data.shape == (3,) for s in r.addressable_shards)
  np.testing.assert_array_equal(x, np.arange(16.0).reshape(16, 1))


def test_check_divisible():
  """Counts must split evenly over the mesh; the error names the field and the device count."""
  mesh = distributed.data_mesh()
  distributed.check_divisible(16, 'chunk', mesh)
  distributed.check_divisible(3, 'chunk', None)
  with pytest.raises(ValueError, match='chunk=12 must be a multiple of the device count 8'):
    distributed.check_divisible(12, 'chunk', mesh)


def test_single_process_is_writer_and_no_multihost():
  """One process: process 0 writes; multihost=False must not call jax.distributed."""
  assert distributed.is_writer()
  distributed.initialize()
  assert jax.process_count() == 1


def test_batch_sharding_constraint_inside_jit():
  """population.py constrains a chunk's keys with batch_sharding inside jit; that must work on
  data_mesh() (it raises on a mesh with Explicit axes, the default of recent jax.make_mesh) and
  leave the batch split 8 ways."""
  mesh = distributed.data_mesh()
  f = jax.jit(lambda x: jax.lax.with_sharding_constraint(2 * x, distributed.batch_sharding(mesh)))
  y = f(jnp.arange(32.0))
  assert {s.data.shape for s in y.addressable_shards} == {(4,)}
  np.testing.assert_array_equal(y, 2 * np.arange(32.0))
