"""Tests of icl_jax.distributed on the 8 simulated CPU devices set up in conftest.py."""

import os

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


def test_shard_batch_splits_every_leaf_and_none_is_identity():
  """shard_batch under jit splits the leading axis of every leaf of a pytree 8 ways with the
  values unchanged; with mesh=None it returns the batch itself (one device's placement)."""
  mesh = distributed.data_mesh()
  batch = {'s': jnp.arange(48.0).reshape(16, 3), 'w': jnp.arange(16)}
  out = jax.jit(lambda b: distributed.shard_batch(b, mesh))(batch)
  for name in batch:
    assert {s.data.shape[0] for s in out[name].addressable_shards} == {2}
    np.testing.assert_array_equal(out[name], batch[name])
  assert distributed.shard_batch(batch, None) is batch


# --- the config fields of a multi-process run, and who writes (experiments/common.py) -----------

def _config(**fields):
  from experiments import common
  config = common.base_config()
  config.distributed.update(fields)
  return config


@pytest.mark.parametrize('fields', [
    {}, {'multihost': True}, {'num_processes': 1}, {'num_processes': 4, 'process_id': 3},
    {'process_id': 2}, {'coordinator_address': 'localhost:8476'},
    {'coordinator_address': '10.0.0.1:1'}, {'coordinator_address': '[::1]:65535'}])
def test_validate_distributed_accepts(fields):
  """Unset fields (auto-detection), a process id below num_processes, 'host:port' with an IPv4,
  name or bracketed IPv6 host: accepted (nothing is joined; validation only)."""
  from experiments import common
  common.validate_distributed(_config(**fields))


@pytest.mark.parametrize('fields,match', [
    ({'num_processes': 0}, r'config\.distributed\.num_processes=0: must be a positive integer'),
    ({'num_processes': -2}, r'num_processes=-2'),
    ({'num_processes': 2, 'process_id': 2}, r'config\.distributed\.process_id=2: .*0\.\.1'),
    ({'process_id': -1}, r'config\.distributed\.process_id=-1'),
    ({'coordinator_address': 'localhost'}, r'coordinator_address=.localhost.: must be host:port'),
    ({'coordinator_address': ':8476'}, r'must be host:port'),
    ({'coordinator_address': 'localhost:http'}, r'must be host:port'),
    ({'coordinator_address': 'localhost:70000'}, r'port 1\.\.65535')])
def test_validate_distributed_rejects(fields, match):
  """Each bad value raises ConfigError naming the field and what is allowed, in one line."""
  from experiments import common
  with pytest.raises(common.ConfigError, match=match) as info:
    common.validate_distributed(_config(**fields))
  assert '\n' not in str(info.value)


@pytest.mark.parametrize('writer', [True, False])
def test_only_process_zero_writes(tmp_path, monkeypatch, writer):
  """common.main_for runs the app on every process but only the writer (process 0) marks the
  workdir and writes results.json, arrays.npz, evidence.npz and figures; another process writes
  nothing, closes its figures, and still runs. Fails if is_writer is ignored."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from experiments import common
  from icl_jax import results
  ran = []
  fig = plt.figure()

  def run(config, workdir):
    ran.append(workdir)
    return results.Run(metrics={'m': 1.0}, claims=[results.Claim('c', 1.0, 1.0, 0.1)],
                       arrays={'a': np.ones(2)}, figures={'f.png': fig},
                       evidence=results.Evidence({'x': 1.0}, {'y': 2.0}))

  class Flag:   # stands in for the absl flags run_app defines
    def __init__(self, value):
      self.value = value

  monkeypatch.setattr(distributed, 'is_writer', lambda: writer)
  workdir = str(tmp_path / 'w')
  main = common.main_for('trained_lsa/test', lambda config: None, run, Flag(_config()),
                         Flag(workdir), paper='trained_lsa', reproduces='-')
  main(['prog'])
  assert ran == [workdir]
  written = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []
  if writer:
    assert written == sorted(['experiment.json', 'results.json', 'arrays.npz', 'evidence.npz',
                              'f.png'])
  else:
    assert written == []
  assert not plt.fignum_exists(fig.number)
