"""Monte-Carlo population expectations over prompts, chunked so memory stays flat.

A statistic is written for one prompt, vmapped over the keys of a chunk, and the chunks run in
`lax.scan`, so memory is O(chunk) whatever the number of prompts. Prompt i uses the key
`fold_in(key, i)`: a given (key, num_samples) draws the same prompts whatever the chunk size, the
number of devices or processes (chunks sized from a memory budget and the device count leave the
numbers unchanged). With a mesh, each chunk's keys are sharded over its 'data' axis (parameters
replicated).
`mc_max` takes a max over the very prompts `mc_stats` averages over for the same arguments.

The chunks run in up to `MAX_BLOCKS` equal blocks, one jitted call each (one compilation: the
first chunk of a block is a traced argument), so that the host sees a pass advance without a
callback inside the compiled program: programs with host callbacks are never stored in JAX's
persistent compilation cache. Inside `with progress('stage 2/5: floor, N=400'):` a line with
the chunk count, prompts/s and ETA is logged at most every `seconds`; outside, nothing is
logged and the blocks are dispatched without waiting.

Exact population losses, where a closed form exists, live in `icl_jax.theory`.
"""

import contextlib
import functools
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
from absl import logging

from icl_jax import distributed

PyTree = Any


MAX_BLOCKS = 16


class _Progress:
  """Host-side state of the active `progress` context (one per process; logging only)."""
  label: Optional[str] = None
  seconds: float = 5.0
  last_log: float = 0.0


@contextlib.contextmanager
def progress(label: str, seconds: float = 5.0) -> Iterator[None]:
  """Logs the progress of the Monte-Carlo passes run inside the block, under `label`."""
  _Progress.label, _Progress.seconds, _Progress.last_log = label, seconds, time.time()
  try:
    yield
  finally:
    _Progress.label = None


def _run_blocks(block_fn, num_chunks: int, chunk: int) -> list:
  """Runs block_fn(first_chunk, length) over num_chunks chunks in equal blocks; logs progress.

  Returns the blocks' outputs in order. The block length is the largest divisor of num_chunks
  that gives at most MAX_BLOCKS blocks, so every block has the same shape (one compilation).
  """
  num_blocks = next(b for b in range(min(MAX_BLOCKS, num_chunks), 0, -1) if num_chunks % b == 0)
  length = num_chunks // num_blocks
  outs, start = [], None
  for b in range(num_blocks):
    outs.append(block_fn(jnp.asarray(b * length, jnp.int32), length))
    if _Progress.label is None or b + 1 == num_blocks:
      continue
    jax.block_until_ready(outs[-1])
    now = time.time()
    if start is None:   # rates from the end of the first block on: compilation is behind us
      start = now
      continue
    if now - _Progress.last_log >= _Progress.seconds:
      _Progress.last_log = now
      rate = b * length * chunk / (now - start)
      eta = (num_blocks - b - 1) * length * chunk / rate
      logging.info('%s: chunk %d/%d, %.3g prompts/s, ETA %d:%02d', _Progress.label,
                   (b + 1) * length, num_chunks, rate, int(eta) // 60, int(eta) % 60)
  return outs


def chunk_size(num_samples: int, bytes_per_sample: int, *, budget_bytes: int = 1 << 30,
               multiple_of: int = 1) -> int:
  """The largest chunk that divides num_samples, is a multiple of multiple_of (e.g. the device
  count) and keeps chunk * bytes_per_sample <= budget_bytes: memory flat whatever the prompt size.

  Args:
    num_samples: the Monte-Carlo size the chunks must tile.
    bytes_per_sample: peak bytes one sample's statistic needs (e.g. 4 (M + 1) (d + 1) for a
      float32 prompt of length M, times a factor for intermediates).
    budget_bytes: the memory one chunk may use.
    multiple_of: chunks must split evenly over this many devices.

  Raises:
    ValueError: no chunk fits (a single sample, times multiple_of, is over the budget, or
      num_samples is not a multiple of multiple_of).
  """
  if num_samples % multiple_of:
    raise ValueError(f'num_samples={num_samples} must be a multiple of {multiple_of}')
  limit = min(num_samples, budget_bytes // max(bytes_per_sample, 1))
  for c in range(limit - limit % multiple_of, 0, -multiple_of):
    if num_samples % c == 0:
      return c
  raise ValueError(f'{multiple_of} samples of {bytes_per_sample} bytes exceed the budget of '
                   f'{budget_bytes} bytes')


def sample_keys(key: jax.Array, start, count: int) -> jax.Array:
  """The keys of prompts start .. start + count - 1: fold_in(key, i), [count]."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(count))


def sharded_keys(key: jax.Array, start, count: int, mesh=None) -> jax.Array:
  """`sample_keys`, sharded over the mesh's 'data' axis when a mesh is given."""
  keys = sample_keys(key, start, count)
  if mesh is not None:
    keys = jax.lax.with_sharding_constraint(keys, distributed.batch_sharding(mesh))
  return keys


def _chunk_values(stat_fn, sample, key, args, c, chunk, mesh):
  """stat_fn(sample(k), *args) for the keys of chunk c: a pytree with a leading [chunk] axis."""
  return jax.vmap(lambda k: stat_fn(sample(k), *args))(sharded_keys(key, c * chunk, chunk, mesh))


def _check_sizes(num_samples, chunk, mesh):
  if num_samples <= 0 or chunk <= 0 or num_samples % chunk:
    raise ValueError(f'num_samples={num_samples} must be a positive multiple of chunk={chunk}')
  distributed.check_divisible(chunk, 'chunk', mesh)


@functools.partial(jax.jit, static_argnames=('stat_fn', 'sample', 'length', 'chunk', 'mesh'))
def _stats_block(stat_fn, sample, key, args, first, *, length, chunk, mesh):
  """Per-chunk means and variances of chunks first .. first + length - 1: [length, ...] each."""

  def one_chunk(_, c):
    vals = _chunk_values(stat_fn, sample, key, args, c, chunk, mesh)
    return None, (jax.tree.map(lambda v: jnp.mean(v, axis=0), vals),
                  jax.tree.map(lambda v: jnp.var(v, axis=0), vals))

  return jax.lax.scan(one_chunk, None, first + jnp.arange(length))[1]


@functools.partial(jax.jit, static_argnames=('num_samples',))
def _pool(means, vars_, *, num_samples):
  """Mean and stderr from per-chunk means and variances of equal-sized chunks."""
  mean = jax.tree.map(lambda m: jnp.mean(m, axis=0), means)
  # Pooled variance over equal-sized chunks: within-chunk plus between-chunk parts.
  # mu[None]: explicit broadcast over the chunk axis (jax_numpy_rank_promotion='raise').
  var = jax.tree.map(
      lambda v, m, mu: jnp.mean(v, axis=0) + jnp.mean(jnp.square(m - mu[None]), axis=0),
      vars_, means, mean)
  return mean, jax.tree.map(lambda v: jnp.sqrt(v / num_samples), var)


def _concat(blocks):
  return jax.tree.map(lambda *b: jnp.concatenate(b, axis=0), *blocks)


def mc_stats(stat_fn: Callable[..., PyTree], sample: Callable[[jax.Array], Any], key: jax.Array,
             args: PyTree = (), *, num_samples: int, chunk: int,
             mesh: Optional[jax.sharding.Mesh] = None) -> tuple[PyTree, PyTree]:
  """Mean and standard error of stat_fn(sample(k), *args) over num_samples independent keys.

  Args:
    stat_fn: (prompt, *args) -> pytree of arrays, for one prompt. Hashable (a function, not a
      fresh lambda per call, to reuse the compilation).
    sample: key -> prompt (one prompt per key); hashable likewise.
    key: PRNG key.
    args: traced arguments of stat_fn (e.g. model parameters).
    num_samples: number of prompts; a multiple of chunk.
    chunk: prompts per vmapped chunk; bounds memory.
    mesh: optional data mesh; chunk must divide over it.

  Returns:
    (mean, stderr), pytrees like stat_fn's output; stderr = sample std / sqrt(num_samples).
  """
  _check_sizes(num_samples, chunk, mesh)
  block = functools.partial(_stats_block, stat_fn, sample, key, args, chunk=chunk, mesh=mesh)
  blocks = _run_blocks(lambda first, length: block(first, length=length), num_samples // chunk,
                       chunk)
  means, vars_ = (_concat([b[i] for b in blocks]) for i in (0, 1))
  return _pool(means, vars_, num_samples=num_samples)


@functools.partial(jax.jit, static_argnames=('stat_fn', 'sample', 'length', 'chunk', 'mesh'))
def _max_block(stat_fn, sample, key, args, first, *, length, chunk, mesh):
  """Elementwise max over the prompts of chunks first .. first + length - 1."""

  def one_chunk(_, c):
    vals = _chunk_values(stat_fn, sample, key, args, c, chunk, mesh)
    return None, jax.tree.map(lambda v: jnp.max(v, axis=0), vals)

  maxes = jax.lax.scan(one_chunk, None, first + jnp.arange(length))[1]
  return jax.tree.map(lambda v: jnp.max(v, axis=0), maxes)


def mc_max(stat_fn: Callable[..., PyTree], sample: Callable[[jax.Array], Any], key: jax.Array,
           args: PyTree = (), *, num_samples: int, chunk: int,
           mesh: Optional[jax.sharding.Mesh] = None) -> PyTree:
  """Elementwise max of stat_fn(sample(k), *args) over the num_samples keys of `mc_stats`.

  The same (key, num_samples) draws the same prompts as `mc_stats`, so a worst case can
  accompany a mean: e.g. max |y_hat| where theory says y_hat = 0, which a mean with a standard
  error would hide.

  Args:
    stat_fn: (prompt, *args) -> pytree of arrays, for one prompt.
    sample: key -> prompt (one prompt per key).
    key: PRNG key.
    args: traced arguments of stat_fn.
    num_samples: number of prompts; a multiple of chunk.
    chunk: prompts per vmapped chunk; bounds memory.
    mesh: optional data mesh; chunk must divide over it.

  Returns:
    A pytree like stat_fn's output: the max over prompts of each entry.
  """
  _check_sizes(num_samples, chunk, mesh)
  block = functools.partial(_max_block, stat_fn, sample, key, args, chunk=chunk, mesh=mesh)
  blocks = _run_blocks(lambda first, length: block(first, length=length), num_samples // chunk,
                       chunk)
  return jax.tree.map(lambda *b: jnp.max(jnp.stack(b), axis=0), *blocks)


def mc_loss(loss_fn: Callable[[PyTree, Any], jax.Array], sample: Callable[[jax.Array], Any],
            params: PyTree, key: jax.Array, *, num_prompts: int, chunk: int,
            mesh: Optional[jax.sharding.Mesh] = None) -> tuple[jax.Array, jax.Array]:
  """Monte-Carlo population loss E loss_fn(params, prompt): (mean, stderr)."""
  return mc_stats(_swap(loss_fn), sample, key, (params,), num_samples=num_prompts, chunk=chunk,
                  mesh=mesh)


@functools.cache
def _swap(loss_fn):
  return lambda prompt, params: loss_fn(params, prompt)


@functools.partial(jax.jit, static_argnames=('loss_fn', 'sample', 'num_prompts', 'chunk', 'mesh'))
def mc_value_and_grad(loss_fn: Callable[[PyTree, Any], jax.Array],
                      sample: Callable[[jax.Array], Any], params: PyTree, key: jax.Array, *,
                      num_prompts: int, chunk: int,
                      mesh: Optional[jax.sharding.Mesh] = None) -> tuple[jax.Array, PyTree]:
  """Monte-Carlo population loss and its gradient in params, chunked (memory flat in num_prompts).

  Returns:
    (mean loss, gradient of the mean loss), the same prompts for both.
  """
  _check_sizes(num_prompts, chunk, mesh)

  def chunk_loss(p, c):
    prompts = jax.vmap(sample)(sharded_keys(key, c * chunk, chunk, mesh))
    return jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(p, prompts))

  def one_chunk(carry, c):
    loss_sum, grad_sum = carry
    loss, grad = jax.value_and_grad(chunk_loss)(params, c)
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grad)), None

  num_chunks = num_prompts // chunk
  zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
  (loss_sum, grad_sum), _ = jax.lax.scan(one_chunk, zero, jnp.arange(num_chunks))
  return loss_sum / num_chunks, jax.tree.map(lambda g: g / num_chunks, grad_sum)
