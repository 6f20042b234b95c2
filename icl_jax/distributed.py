"""Data parallelism: a 1-D mesh over every device, batches sharded on it, params replicated.

Only apps call `maybe_initialize_multihost`; the library just reads `jax.devices()`.
"""

from typing import Optional

import jax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def maybe_initialize_multihost(multihost: bool) -> None:
  """Calls `jax.distributed.initialize()` (TPU pods, multi-node GPU) when asked."""
  if multihost:
    jax.distributed.initialize()
  logging.info('process %d/%d, %d local / %d global devices: %s', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)


def data_mesh() -> jax.sharding.Mesh:
  """A mesh of all devices on one axis named 'data'.

  The axis is Auto (sharding propagated by XLA, as `with_sharding_constraint` needs): recent
  `jax.make_mesh` defaults to Explicit axes, under which that constraint raises.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Shards the leading (sample) axis over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(count: int, name: str, mesh: Optional[jax.sharding.Mesh]) -> None:
  """Raises ValueError when a sample count does not split evenly over the mesh."""
  if mesh is not None and count % mesh.size:
    raise ValueError(f'{name}={count} must be a multiple of the device count {mesh.size}')


def is_writer() -> bool:
  """Only process 0 writes files."""
  return jax.process_index() == 0
