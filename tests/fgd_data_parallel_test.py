"""The functional_gd apps train data parallel: the same numbers on 8 devices as on one.

`fgd_common.train_grid` (loss_vs_context, loss_vs_layers, multihead, stationary_points' sampled
recipe) and `stationary_points.train_conditional` split each batch's prompt axis over
`distributed.data_mesh()` (`distributed.shard_batch(..., axis=1)`: batches are [models, prompts,
...]) and replicate the state (`training.fit(mesh=)`). In this process (8 simulated CPU devices,
conftest): the train functions at smoke sizes, with `training.fit` replaced by a recorder that
traces one step, must route their batches and the mesh there; `train_grid`, run for real on one
device and on 8, must give the same loss at every step to float32 rounding -- which needs the
K-GP draw made whole on every device (its labels take the signs of eigh's eigenvectors, which
change with the batch split: split, the first loss moved by 0.4%).
"""

import jax
import numpy as np
import pytest

from conftest import assert_trains_on_mesh
from experiments.functional_gd import fgd_common as fc
from experiments.functional_gd import loss_vs_context, loss_vs_layers, stationary_points
from experiments.functional_gd.configs import loss_vs_layers as lvl_config
from experiments.functional_gd.configs import stationary_points as sp_config
from icl_jax import distributed


def _train_grid(workdir, mesh, steps=10):
  config = lvl_config.get_config('smoke')
  specs, layers = loss_vs_layers.specs_of(config)
  tc = loss_vs_context.train_config(config, 'relu')
  tc.steps = tc.log_every = tc.ckpt_every = steps
  return fc.train_grid(jax.random.key(0), specs, fc.covariances(config), activations=('relu',),
                       tc=tc, kernel_kw=fc.kernel_kwargs(config), workdir=str(workdir),
                       name='grid', layers_per_model=layers, mesh=mesh)


def _stationary(loss):
  def train(workdir, mesh):
    config = sp_config.get_config('smoke')
    config.train.loss = loss
    return {'conditional': stationary_points.train_conditional,
            'sampled': stationary_points.train_sampled}[loss](
                jax.random.key(0), config, fc.covariances(config), str(workdir), mesh)
  train.__name__ = f'_stationary_points_{loss}'
  return train


@pytest.mark.parametrize('train', [_train_grid, _stationary('conditional'), _stationary('sampled')],
                         ids=lambda f: f.__name__[1:])
def test_training_splits_its_batches_over_the_mesh(train, tmp_path, monkeypatch):
  """Fails if a training loss does not pass its batches through `distributed.shard_batch` with
  the mesh, or the mesh does not reach `training.fit`."""
  assert_trains_on_mesh(train, tmp_path, monkeypatch)


def test_eight_devices_train_as_one(tmp_path):
  """train_grid run for real on one device and split over 8: the same loss at every step (the
  same K-GP draws), and the parameters come back replicated over the 8 devices."""
  _, one = _train_grid(tmp_path / 'one', None)
  params, eight = _train_grid(tmp_path / 'eight', distributed.data_mesh())
  for leaf in jax.tree.leaves(params):
    assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
  # float32 rounding of sums in another order; with the draws split over the devices (the
  # labels' eigenvector signs) the losses here moved by up to 1.7e-2, which this catches.
  np.testing.assert_allclose(eight.loss, one.loss, rtol=2e-5)
