"""The autoregressive apps train data parallel: the same numbers on 8 devices as on one.

Each training app of the suite splits every batch (positional_encoding: its full batch) over
`distributed.data_mesh()` (`distributed.shard_batch`) and replicates its train state over it
(`training.fit(mesh=)`).
In this process (8 simulated CPU devices, conftest): every app's train function, at its smoke
sizes with `training.fit` replaced by a recorder that traces one step, must route its batches
and the mesh there (cheap: nothing compiles); one app's training (geometric_heads), run for real
on one device and on 8, must give the same loss at every step to float32 rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trains_on_mesh, record_shard_batch
from experiments.autoregressive import augmented_gd, geometric_heads, heads_and_duplication
from experiments.autoregressive import positional_encoding, softmax_ablation
from experiments.autoregressive.configs import augmented_gd as augmented_gd_config
from experiments.autoregressive.configs import geometric_heads as geometric_heads_config
from experiments.autoregressive.configs import heads_and_duplication as heads_config
from experiments.autoregressive.configs import positional_encoding as positional_config
from experiments.autoregressive.configs import softmax_ablation as softmax_config
from icl_jax import distributed


def _augmented_gd(workdir, mesh):
  config = augmented_gd_config.get_config('smoke')
  config.linear.epochs = config.train.ckpt_every_epochs = config.train.log_every_epochs = 1
  config.data.num_train = 4 * config.train.batch_size
  data = jnp.ones((config.data.num_train, config.t_max + 1, config.d))
  return augmented_gd.train_family('linear', config, jax.random.key(1), data, str(workdir),
                                   mesh)


def _geometric_heads(workdir, mesh):
  config = geometric_heads_config.get_config('smoke')
  config.orthogonal.steps = config.train.ckpt_every = config.train.log_every = 4
  return geometric_heads.train_case(jax.random.key(0), config, 'orthogonal', str(workdir), mesh)


def _heads_and_duplication(workdir, mesh):
  config = heads_config.get_config('smoke')
  config.train.epochs = config.train.ckpt_every_epochs = config.train.log_every_epochs = 1
  config.data.num_train, config.heads = 4 * config.train.batch_size, (2,)
  dc = config.data
  train7, train8 = (jnp.ones((dc.num_train, dc.t_max + 1, d)) for d in (dc.d, config.fig8.d))
  params = jax.eval_shape(lambda k: {  # shapes suffice: _Fit only traces
      'fig7': heads_and_duplication.init_grid(k, config, 'script'),
      'fig8': heads_and_duplication.init_near_equal(k, config, 'script')}, jax.random.key(0))
  return heads_and_duplication.train(config, str(workdir), jax.random.key(4), params, train7,
                                     train8, 'script', mesh)


def _softmax_ablation(workdir, mesh):
  config = softmax_config.get_config('smoke')
  config.train.epochs = config.train.ckpt_every_epochs = 1
  config.data.num_train = 4 * config.train.batch_size
  train_data, _, models = jax.eval_shape(lambda k: softmax_ablation.setup(k, config),
                                         jax.random.key(0))
  train_data = jnp.ones(train_data.shape, train_data.dtype)
  return softmax_ablation.train(config, str(workdir), jax.random.key(1), models, train_data,
                                mesh)


def _positional_encoding(workdir, mesh):
  config = positional_config.get_config('smoke')
  return positional_encoding.train(config, str(workdir), jax.random.key(0), mesh)


@pytest.mark.parametrize('train', [_augmented_gd, _geometric_heads, _heads_and_duplication,
                                   _positional_encoding, _softmax_ablation],
                         ids=lambda f: f.__name__[1:])
def test_apps_split_their_batches_over_the_mesh(train, tmp_path, monkeypatch):
  """Fails if an app's training loss does not pass its batches through
  `distributed.shard_batch` with the mesh, or the mesh does not reach `training.fit`."""
  assert_trains_on_mesh(train, tmp_path, monkeypatch)


def test_eight_devices_train_as_one(tmp_path, monkeypatch):
  """geometric_heads' training, run for real on one device and split over 8, gives the same
  loss at every step, and returns its parameters replicated over the 8 devices."""
  meshes = record_shard_batch(monkeypatch)
  _, one = _geometric_heads(tmp_path / 'one', None)
  assert meshes and all(m is None for m in meshes)
  params, eight = _geometric_heads(tmp_path / 'eight', distributed.data_mesh())
  for leaf in jax.tree.leaves(params):
    assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
  # Per-step losses: float32 rounding of sums over the batch in another order (measured: 2.5e-7
  # relative at most); every device taking the first shard's sequences instead of its own moved
  # them by 4e-3 to 3e-2.
  np.testing.assert_allclose(eight.loss, one.loss, rtol=2e-5)
