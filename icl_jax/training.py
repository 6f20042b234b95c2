"""The one training loop: optax, jitted steps under lax.scan, orbax checkpoints, NaN guard.

`fit` runs `log_every` steps per jitted `lax.scan` call; between calls it logs progress (step,
loss, steps/s, ETA), checks for non-finite losses, tests the convergence criterion and saves a
checkpoint every `ckpt_every` steps. A rerun with the same workdir resumes from the latest
checkpoint and, because step s uses the key `fold_in(key, s)`, ends with the same numbers as an
uninterrupted run. With several processes (a pod) the state is one global array replicated over
every device, so orbax saves and restores it through its multi-process path.

Gradient flow (eq. (9) of Zhang, Frei & Bartlett 2023) is `gradient_flow`: plain gradient descent
with a small step on a population loss, either exact or re-sampled every step.
"""

import os
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from icl_jax import distributed

PyTree = Any
LossFn = Callable[..., jax.Array]   # (params, key) or (params, key, step) -> scalar loss


class TrainState(NamedTuple):
  params: PyTree
  opt_state: PyTree
  step: jax.Array             # [] int32, steps taken
  loss: jax.Array             # [max_steps] loss before each step (nan where not run)
  grad_norm: jax.Array        # [max_steps] global gradient norm at each step
  trajectory: PyTree          # params at every log point, leading axis max_steps // log_every + 1
                              # (() when not kept)


class History(NamedTuple):
  loss: np.ndarray            # [steps_run]
  grad_norm: np.ndarray       # [steps_run]
  trajectory: PyTree          # [num_log_points, ...] params at steps 0, log_every, ...
  trajectory_steps: np.ndarray
  converged: bool
  resumed_from: int


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _make_chunk(loss_fn: LossFn, optimizer: optax.GradientTransformation, key: jax.Array,
                log_every: int, pass_step: bool, keep_trajectory: bool,
                sample_fn: Optional[Callable[[jax.Array], Any]] = None, resample_every: int = 1):
  """A jitted function running log_every optimiser steps in lax.scan."""

  def one_step(state: TrainState, batch):
    args = (state.step,) if pass_step else ()
    data = jax.random.fold_in(key, state.step) if sample_fn is None else batch
    loss, grads = jax.value_and_grad(loss_fn)(state.params, data, *args)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state._replace(
        params=params, opt_state=opt_state, step=state.step + 1,
        loss=state.loss.at[state.step].set(loss),
        grad_norm=state.grad_norm.at[state.step].set(_global_norm(grads)))
    return state, None

  def block(state: TrainState, _):
    # One batch, drawn once, serves resample_every steps (sampling can cost more than a step).
    batch = sample_fn(jax.random.fold_in(key, state.step // resample_every))
    state, _ = jax.lax.scan(lambda s, _: one_step(s, batch), state, None, length=resample_every)
    return state, None

  def chunk(state: TrainState) -> TrainState:
    if sample_fn is None:
      state, _ = jax.lax.scan(one_step, state, None, length=log_every)
    else:
      state, _ = jax.lax.scan(block, state, None, length=log_every // resample_every)
    if not keep_trajectory:
      return state
    point = state.step // log_every
    trajectory = jax.tree.map(lambda t, p: t.at[point].set(p), state.trajectory, state.params)
    return state._replace(trajectory=trajectory)

  return jax.jit(chunk, donate_argnums=0)


def _initial_state(params, optimizer, max_steps, log_every, keep_trajectory) -> TrainState:
  num_points = max_steps // log_every + 1
  # A copy: the jitted chunk donates the state, which must not delete the caller's arrays.
  params = jax.tree.map(jnp.array, params)
  trajectory = ()
  if keep_trajectory:
    trajectory = jax.tree.map(
        lambda p: jnp.zeros((num_points,) + p.shape, p.dtype).at[0].set(p), params)
  return TrainState(params=params, opt_state=optimizer.init(params),
                    step=jnp.zeros((), jnp.int32),
                    loss=jnp.full((max_steps,), jnp.nan, jnp.float32),
                    grad_norm=jnp.full((max_steps,), jnp.nan, jnp.float32),
                    trajectory=trajectory)


def _state_sharding(mesh: Optional[jax.sharding.Mesh]) -> Optional[jax.sharding.NamedSharding]:
  """Where the TrainState lives: replicated over `mesh` when the caller shards its batches over
  one (data parallelism), else over every device of every process when several processes run,
  else None (JAX's default placement).

  With several processes (a pod), orbax saves only global arrays (it refuses a process's own
  single-device arrays). Replicated on the global mesh, each array's bytes are written once in
  all: orbax's replica-parallel save splits a replicated array into slices written by different
  processes, process 0 writes the metadata, the processes sync around each save, and a restore
  with this sharding puts the state back on every process. One process keeps plain arrays:
  replicating there would repeat the same steps on every local device (with conftest's 8 forced
  CPU devices, tests/training_test.py took 20 s instead of 14, load ~4).
  """
  if mesh is not None:
    return distributed.replicated(mesh)
  if jax.process_count() > 1:
    return distributed.replicated(distributed.data_mesh())
  return None


def _check_finite(state: TrainState, start: int, stop: int) -> None:
  losses = np.asarray(state.loss[start:stop])
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    first = start + int(bad[0])
    finite = np.asarray(state.loss[:first])
    finite = finite[np.isfinite(finite)]
    last = f'{finite[-1]:.6g} at step {first - 1}' if finite.size else 'none'
    raise FloatingPointError(f'loss became non-finite at step {first}; last finite loss: {last}')


def fit(loss_fn: LossFn, params: PyTree, optimizer: optax.GradientTransformation, *,
        key: jax.Array, max_steps: int, log_every: int = 100, ckpt_every: int = 1000,
        workdir: Optional[str] = None, grad_tol: Optional[float] = None,
        min_steps: int = 0, log_seconds: float = 5.0, mesh: Optional[jax.sharding.Mesh] = None,
        keep_trajectory: bool = True, pass_step: bool = False,
        sample_fn: Optional[Callable[[jax.Array], Any]] = None,
        resample_every: int = 1) -> tuple[PyTree, History]:
  """Minimises loss_fn from params with optimizer; resumable, NaN-guarded, with progress logs.

  Args:
    loss_fn: (params, key) -> scalar, or (params, key, step) with pass_step (a schedule such as
      a curriculum reads the step); the key is `fold_in(key, step)`, fresh each step.
    params: initial parameters (used only when there is no checkpoint).
    optimizer: an optax GradientTransformation.
    key: PRNG key for the per-step samples.
    max_steps: the step cap; a multiple of log_every.
    log_every: steps per jitted chunk (checks, checkpoints) and per trajectory point.
    ckpt_every: checkpoint interval in steps; a multiple of log_every.
    workdir: where `checkpoints/` lives; None disables checkpointing.
    grad_tol: stop once the gradient norm of the last step of a chunk is below it (after
      min_steps); None runs to max_steps.
    min_steps: never stop on grad_tol before this many steps.
    log_seconds: at most one progress line per this many seconds (and one at the end).
    mesh: data parallelism: the parameters and optimiser state are replicated over this mesh,
      and loss_fn shards its batch over the mesh's 'data' axis (`distributed.batch_sharding`),
      so XLA all-reduces the gradients. None keeps one device's placement (several processes
      still replicate the state over `distributed.data_mesh()`).
    keep_trajectory: keep the params at every log point (History.trajectory); off for large
      models, whose History.trajectory is then ().
    pass_step: call loss_fn(params, key, step) with the step as a traced int32.
    sample_fn: key -> batch. When given, loss_fn takes (params, batch[, step]) instead of a key,
      and one batch, drawn from fold_in(key, step // resample_every), serves resample_every
      consecutive steps (Appendix H.1 of Cheng, Chen & Sra: a minibatch resampled every 10).
    resample_every: steps per batch; log_every must be a multiple of it.

  Returns:
    (final params, History).

  Raises:
    FloatingPointError: a loss was nan or inf; names the step and the last finite loss.
    ValueError: inconsistent step counts.
  """
  if max_steps <= 0 or log_every <= 0 or max_steps % log_every or ckpt_every % log_every:
    raise ValueError(f'max_steps={max_steps} and ckpt_every={ckpt_every} must be positive '
                     f'multiples of log_every={log_every}')
  if resample_every <= 0 or log_every % resample_every:
    raise ValueError(f'log_every={log_every} must be a positive multiple of '
                     f'resample_every={resample_every}')
  sharding = _state_sharding(mesh)
  if sharding is None:
    state = _initial_state(params, optimizer, max_steps, log_every, keep_trajectory)
  else:
    # Built in place by jit, not device_put: device_put checks that every process holds the same
    # value, and the not-yet-run losses are nan, which never compares equal.
    state = jax.jit(_initial_state, static_argnums=(1, 2, 3, 4), out_shardings=sharding)(
        params, optimizer, max_steps, log_every, keep_trajectory)
  manager = None
  resumed_from = 0
  if workdir is not None:
    manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    latest = manager.latest_step()
    if latest is not None:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      # strict=False pads (or truncates) the per-step arrays when max_steps changed since the
      # checkpoint was saved, so a run can be extended; padded steps are marked not run (nan).
      state = manager.restore(latest, args=ocp.args.StandardRestore(abstract, strict=False))
      not_run = jnp.arange(max_steps) >= state.step
      state = state._replace(loss=jnp.where(not_run, jnp.nan, state.loss),
                             grad_norm=jnp.where(not_run, jnp.nan, state.grad_norm))
      if sharding is not None:
        state = jax.device_put(state, sharding)
      resumed_from = int(state.step)
      logging.info('resumed from checkpoint at step %d', resumed_from)
  chunk = _make_chunk(loss_fn, optimizer, key, log_every, pass_step, keep_trajectory, sample_fn,
                      resample_every)

  def converged(s: TrainState) -> bool:
    step = int(s.step)
    return (grad_tol is not None and step >= max(min_steps, 1)
            and float(s.grad_norm[step - 1]) <= grad_tol)

  start_time, start_step = time.time(), int(state.step)
  last_log = start_time
  done = converged(state) or int(state.step) >= max_steps
  try:
    while not done:
      before = int(state.step)
      state = chunk(state)
      step = int(state.step)
      _check_finite(state, before, step)
      done = converged(state) or step >= max_steps
      now = time.time()
      rate = (step - start_step) / max(now - start_time, 1e-9)
      if done or now - last_log >= log_seconds:
        last_log = now
        logging.info('step %d/%d  loss %.6g  |grad| %.3g  %.1f steps/s  ETA %s (cap)', step,
                     max_steps, float(state.loss[step - 1]), float(state.grad_norm[step - 1]),
                     rate, _format_eta((max_steps - step) / rate))
      if manager is not None and (step % ckpt_every == 0 or done):
        manager.save(step, args=ocp.args.StandardSave(state))
  finally:
    if manager is not None:
      manager.wait_until_finished()
      manager.close()

  steps_run = int(state.step)
  num_points = steps_run // log_every + 1
  history = History(
      loss=np.asarray(state.loss[:steps_run]), grad_norm=np.asarray(state.grad_norm[:steps_run]),
      trajectory=jax.tree.map(lambda t: np.asarray(t[:num_points]), state.trajectory),
      trajectory_steps=np.arange(num_points) * log_every, converged=converged(state),
      resumed_from=resumed_from)
  return state.params, history


def epoch_batch(dataset: PyTree, step: jax.Array, key: jax.Array, batch_size: int) -> PyTree:
  """Minibatch `step` of training in epochs over a fixed dataset (Sander et al. 2024, Sec 6:
  2^14 sequences, Adam, epochs).

  Each epoch visits the dataset in a fresh order, permutation(fold_in(key, epoch)); the
  trailing num % batch_size items of that order are skipped that epoch. A pure function of the
  step, so with `fit(..., pass_step=True)` a resumed run draws the same batches and ends with
  the same numbers. Use as: loss_fn(params, _, step) = loss(params, epoch_batch(data, step,
  key, b)).

  Args:
    dataset: a pytree of arrays sharing a leading axis of size num >= batch_size.
    step: the (traced) step index.
    batch_size: items per step; num // batch_size steps make an epoch.
  """
  num = jax.tree.leaves(dataset)[0].shape[0]
  if not 0 < batch_size <= num:
    raise ValueError(f'batch_size={batch_size}: must be in [1, {num}] (the dataset size)')
  per_epoch = num // batch_size
  order = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), num)
  idx = jax.lax.dynamic_slice_in_dim(order, (step % per_epoch) * batch_size, batch_size)
  return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), dataset)


def per_model(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """optimizer applied to each slice of a leading model axis on its own (vmapped).

  For several models trained as one program (params stacked on axis 0, the loss their sum):
  Adam is elementwise and needs no help, but a global-norm clip or any other transformation
  that reads the whole gradient would otherwise couple the models.
  """

  def update(updates, state, params=None):
    if params is None:
      return jax.vmap(lambda u, s: optimizer.update(u, s))(updates, state)
    return jax.vmap(optimizer.update)(updates, state, params)

  return optax.GradientTransformation(jax.vmap(optimizer.init), update)


def hessian_max_eig(loss: Callable[[PyTree], jax.Array], params: PyTree,
                    batch: int = 32) -> float:
  """Largest eigenvalue of the Hessian of loss at params (params flattened into one vector).

  The Hessian's columns are Hessian-vector products (forward over reverse), `batch` at a time
  under `lax.map`: `jax.hessian` pushes every tangent through the loss at once, which held
  2.4 GiB for the Thm 8 loss at d = 20 (882 parameters); this holds ~0.3 GiB. The symmetric
  matrix is diagonalised in float64 NumPy.
  """
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  grad = jax.grad(lambda v: loss(unravel(v)))
  hess = jax.jit(lambda x: jax.lax.map(lambda t: jax.jvp(grad, (x,), (t,))[1],
                                       jnp.eye(x.size, dtype=x.dtype), batch_size=batch))(flat)
  return float(np.max(np.linalg.eigvalsh(np.asarray(hess, np.float64))))


def auto_lr(loss: Callable[[PyTree], jax.Array], optimum: PyTree, lr: float = 0.0,
            lr_fraction: float = 0.5) -> float:
  """lr if lr > 0, else lr_fraction / lambda_max(Hessian of loss at optimum).

  Gradient descent is stable near a minimum for lr < 2 / lambda_max; a fraction 0.5 keeps the
  discrete path close to the gradient flow it stands for (eq. (9) of Zhang, Frei & Bartlett).
  """
  if lr > 0:
    return lr
  return lr_fraction / hessian_max_eig(loss, optimum)


def gradient_flow(loss_fn: LossFn, params: PyTree, *, lr: float, **kwargs
                  ) -> tuple[PyTree, History]:
  """Gradient flow d theta/dt = -grad L(theta), eq. (9), as gradient descent with step lr.

  Time t after s steps is lr * s. kwargs go to `fit`.
  """
  return fit(loss_fn, params, optax.sgd(lr), **kwargs)
