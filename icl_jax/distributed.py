"""Data parallelism: a 1-D mesh over every device, batches sharded on it, params replicated.

Only apps call `initialize`; the library just reads `jax.devices()`. With several processes the
mesh spans every process's devices, and only `is_writer()` (process 0) writes files.
"""

from typing import Optional

import jax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize(multihost: bool = False, coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None) -> None:
  """Joins a multi-process run (TPU pod, several GPU hosts, or processes on one machine).

  Calls `jax.distributed.initialize` when multihost is set or any of the three fields is given;
  unset fields are left to JAX's auto-detection (Cloud TPU, SLURM, Open MPI). Must run before
  any JAX computation. Processes on one CPU machine also need, in each process's environment,
  JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo (and JAX_NUM_CPU_DEVICES for several devices each).

  Args:
    multihost: join even when no field is given (auto-detection).
    coordinator_address: 'host:port' of process 0.
    num_processes: number of processes in the run.
    process_id: this process's index, 0 .. num_processes - 1.
  """
  fields = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
            'process_id': process_id}
  fields = {k: v for k, v in fields.items() if v is not None}
  if multihost or fields:
    jax.distributed.initialize(**fields)
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


def shard_batch(batch, mesh: Optional[jax.sharding.Mesh], axis: int = 0):
  """Inside jit: splits the sample axis `axis` of every leaf of `batch` over the mesh, so the
  work on each sample runs on its device and XLA all-reduces what sums over samples (a mean
  loss, its gradient). mesh None: `batch` unchanged. That axis must be a multiple of mesh.size
  (apps check their batch sizes in `validate`, `common.multiple_of_devices`).

  Args:
    batch: a pytree of arrays sharing the sample axis.
    mesh: `data_mesh()`, or None.
    axis: the sample axis (1 for batches stacked per model, [models, samples, ...]).
  """
  if mesh is None:
    return batch
  return jax.lax.with_sharding_constraint(
      batch, NamedSharding(mesh, P(*(None,) * axis, DATA_AXIS)))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(count: int, name: str, mesh: Optional[jax.sharding.Mesh]) -> None:
  """Raises ValueError when a sample count does not split evenly over the mesh."""
  if mesh is not None and count % mesh.size:
    raise ValueError(f'{name}={count} must be a multiple of the device count {mesh.size}')


def is_writer() -> bool:
  """Only process 0 writes files."""
  return jax.process_index() == 0
