"""LAPACK linear algebra that cannot deadlock the XLA CPU runtime of jaxlib 0.10.x.

The hazard. jaxlib 0.10.2's CPU LAPACK kernels (potrf, getrf, trsm, geqrf/orgqr, syevd,
gesdd, ...; `jaxlib/cpu/lapack_kernels.cc`) split a batched call into chunks, `Schedule` them
on XLA's intra-op thread pool and block in `absl::BlockingCounter::Wait` until they are done
(`jax::ParallelBatchMap`). XLA runs independent thunks of one program concurrently on that same
pool, so as many independent batched LAPACK calls as the pool has threads can each occupy one
thread while waiting for chunks queued behind the others: a deadlock, every `tf_XLAEigen`
thread parked in `ParallelBatchMap`. The pool has max(cores, host device count) threads
(`PJRT_NPROC` overrides cores), so two calls suffice on a 2-core machine with one device, and
the 8 forced host devices of `tests/conftest.py` hide it (an 8-thread pool). jaxlib 0.9.2 has
no parallel path and 0.11.1+ compiles it out of open-source builds.

The mechanism used here. The kernels only go parallel when batch x cost_per_matrix reaches
kMinWorkPerTask = 2e5 FLOP (`GetLapackBatchChunkSize`; cost e.g. d^3/3 for potrf, 5 d^3 for
syevd); below it they run inline on the calling thread and never wait on the pool. Every
function below is written for one matrix and, when vmapped, calls LAPACK on batches of at most
`serial_batch_size(cost)` matrices inside a `lax.map` (a `jax.custom_batching.custom_vmap`
rule; nested vmaps fold into the same batch). Calls are then always inline, whatever the
number of independent calls, the program's structure, the pool size or the XLA flags, and
independent calls still run concurrently on different pool threads.

Alternatives measured (2-core machine shared with other jobs, jitted `lax.scan` of 4 steps
whose body holds two independent batched calls on 4096 SPD 20 x 20 systems, 10 calls per run,
a run "hangs" when it makes no CPU progress for 3 s; pool of 2 threads unless stated):
  * raw `jnp.linalg`: solve hung 10/10 runs, eigh 5/5, cholesky 4/5, qr 4/5, svd 5/5
    (`jnp.linalg.solve` at 4096 x 5 x 5: 1/3; at 1024 x 5 x 5, under the threshold: 0/6).
  * the functions below (`solve_spd`): 0/20 (`linalg_test.py` reruns the pattern).
  * one batched call over the stacked systems: 0/10. Safe, but needs every independent
    solve of a program to be gathered by hand, which library functions vmapped by apps cannot.
  * chaining the calls with `lax.optimization_barrier`: 8/10 hung. The thunk executor orders
    thunks by buffer conflicts, and the barrier adds none.
  * `--xla_cpu_multi_thread_eigen=false`: 5/5 hung; `--xla_cpu_use_thunk_runtime=false`: 3/3
    hung (ignored by this XLA).
  * a bigger pool, `PJRT_NPROC=4` or 3+ host devices: 0/5 and 0/8, but only while the program
    has fewer independent calls than threads. `PJRT_NPROC=1` (no pool parallelism at all):
    0/10, but it must be set before jax starts and serialises every XLA op, not just LAPACK.

Speed. See `estimators.ols` and `regression.orthogonal_to_span` for the comparisons with the
hand-written Gauss-Jordan and Gram-Schmidt at the apps' sizes; against raw `jnp.linalg`
(parallel over the pool, one call per program so that it completes), the serial batches are
as fast or faster: <MEASUREMENTS>.

The rule for library code: call LAPACK only through this module, never `jnp.linalg`,
`jax.scipy.linalg` or `lax.linalg` directly (an unbatched call on one matrix is safe, but the
caller cannot know whether it will be vmapped). `linalg_test.py` runs the deadlocking pattern
with raw `jnp.linalg` in a subprocess: when a jaxlib stops hanging there, this module can
become plain aliases of `jnp.linalg`.

Limitations: reverse-mode autodiff is not supported (`custom_vmap` has no transpose rule;
forward mode works); complex dtypes are costed like jaxlib does (x3), but untested.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

# kMinWorkPerTask of jaxlib 0.10.2's GetLapackBatchChunkSize: a batched call whose
# batch_count * cost_per_matrix is below this runs inline on the calling thread.
_MIN_PARALLEL_WORK = 200_000


def serial_batch_size(cost_per_matrix: int) -> int:
  """Largest batch of matrices that jaxlib 0.10.2 factors inline rather than on the pool.

  Args:
    cost_per_matrix: the kernel's FLOP estimate for one matrix, as in `lapack_kernels.cc`
      (an upper bound is fine: it only makes the batches smaller).

  Returns:
    The largest b >= 1 with b * cost_per_matrix < 2e5 (1 when one matrix already exceeds it:
    a batch of one is never split).
  """
  return max(1, (_MIN_PARALLEL_WORK - 1) // max(1, int(cost_per_matrix)))


def _in_chunks(batched_fn: Callable, size: int, xs: tuple) -> object:
  """batched_fn over the leading axis of xs, at most `size` items per call on CPU.

  The chunks go through a `lax.map`, the rest through one more call. Other platforms (cuSOLVER
  on GPU) have no such deadlock and get the whole batch in one call.
  """
  if xs[0].shape[0] <= size:
    return batched_fn(*xs)
  return lax.platform_dependent(*xs, cpu=lambda *xs: _cpu_chunks(batched_fn, size, xs),
                                default=batched_fn)


def _cpu_chunks(batched_fn: Callable, size: int, xs: tuple) -> object:
  b = xs[0].shape[0]
  n_full = b - b % size
  head = lax.map(lambda chunk: batched_fn(*chunk),
                 tuple(x[:n_full].reshape((n_full // size, size) + x.shape[1:]) for x in xs))
  head = jax.tree.map(lambda h: h.reshape((n_full,) + h.shape[2:]), head)
  if n_full == b:
    return head
  tail = batched_fn(*(x[n_full:] for x in xs))
  return jax.tree.map(lambda h, t: jnp.concatenate([h, t]), head, tail)


def _broadcast_unbatched(axis_size: int, in_batched, xs) -> list:
  return [x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
          for x, batched in zip(xs, in_batched)]


def _serially_batched(batched_fn: Callable, cost_per_matrix: int) -> Callable:
  """One-item version of `batched_fn` whose vmaps call it on small enough batches.

  Args:
    batched_fn: takes arrays with a common leading batch axis and returns a pytree of arrays
      with that axis; it holds the LAPACK calls.
    cost_per_matrix: the largest FLOP estimate jaxlib makes for one item of those calls.

  Returns:
    f(*items) = batched_fn(*items[None])[0]. Under vmap (nested or not) f calls batched_fn on
    at most `serial_batch_size(cost_per_matrix)` items at a time.
  """
  size = serial_batch_size(cost_per_matrix)

  @jax.custom_batching.custom_vmap
  def many(*xs):
    return _in_chunks(batched_fn, size, xs)

  @many.def_vmap
  def _many_rule(axis_size, in_batched, *xs):
    # A vmap over the batched call folds its axis into the batch, which `many` then chunks:
    # batching the lax.map body instead would multiply the batch of each LAPACK call.
    xs = _broadcast_unbatched(axis_size, in_batched, xs)
    out = many(*(x.reshape((-1,) + x.shape[2:]) for x in xs))
    out = jax.tree.map(lambda o: o.reshape((axis_size, -1) + o.shape[1:]), out)
    return out, jax.tree.map(lambda _: True, out)

  @jax.custom_batching.custom_vmap
  def one(*xs):
    return jax.tree.map(lambda o: o[0], batched_fn(*(x[None] for x in xs)))

  @one.def_vmap
  def _one_rule(axis_size, in_batched, *xs):
    out = many(*_broadcast_unbatched(axis_size, in_batched, xs))
    return out, jax.tree.map(lambda _: True, out)

  return one


def _complex_factor(dtype) -> int:
  # jaxlib triples its cost estimate for complex types.
  return 3 if jnp.issubdtype(dtype, jnp.complexfloating) else 1


def cholesky(a_DxD: jax.Array) -> jax.Array:
  """Lower Cholesky factor L L^T = a of a symmetric positive-definite matrix (LAPACK potrf).

  Args:
    a_DxD: [d, d] symmetric positive-definite (symmetrised as `jnp.linalg.cholesky` does).

  Returns:
    [d, d] lower-triangular L; NaN where a is not positive definite, like `jnp.linalg`.
  """
  d = a_DxD.shape[-1]
  cost = math.ceil(d**3 / 3) * _complex_factor(a_DxD.dtype)
  return _serially_batched(jnp.linalg.cholesky, cost)(a_DxD)


def _cholesky_solve(a_BxDxD, b_BxDxK):
  l_BxDxD = jnp.linalg.cholesky(a_BxDxD)
  y_BxDxK = lax.linalg.triangular_solve(l_BxDxD, b_BxDxK, left_side=True, lower=True)
  return lax.linalg.triangular_solve(l_BxDxD, y_BxDxK, left_side=True, lower=True,
                                     transpose_a=True, conjugate_a=True)


def solve_spd(a_DxD: jax.Array, b: jax.Array) -> jax.Array:
  """a^-1 b for symmetric positive-definite a, by Cholesky (potrf, then two trsm).

  Args:
    a_DxD: [d, d] symmetric positive-definite.
    b: [d] or [d, k] right-hand side(s).

  Returns:
    The solution, shaped like b; NaN where a is not positive definite.
  """
  d = a_DxD.shape[-1]
  b_DxK = b[:, None] if b.ndim == 1 else b
  k = b_DxK.shape[-1]
  cost = max(math.ceil(d**3 / 3), d * d * k) * _complex_factor(a_DxD.dtype)
  x_DxK = _serially_batched(_cholesky_solve, cost)(a_DxD, b_DxK)
  return x_DxK[:, 0] if b.ndim == 1 else x_DxK


def eigh(a_DxD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigendecomposition a = V diag(w) V^T of a symmetric matrix (LAPACK syevd).

  Args:
    a_DxD: [d, d] symmetric (symmetrised as `jnp.linalg.eigh` does).

  Returns:
    (w: [d] eigenvalues in ascending order, v: [d, d] orthonormal eigenvectors as columns).
  """
  d = a_DxD.shape[-1]
  cost = 5 * d**3 * _complex_factor(a_DxD.dtype)
  return _serially_batched(lambda a: tuple(jnp.linalg.eigh(a)), cost)(a_DxD)


def qr(a_MxN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Reduced QR decomposition a = Q R (LAPACK geqrf, then orgqr for Q).

  Args:
    a_MxN: [m, n].

  Returns:
    (q: [m, k] with orthonormal columns, r: [k, n] upper triangular), k = min(m, n).
  """
  m, n = a_MxN.shape[-2:]
  # 4 m n k bounds both jaxlib estimates: geqrf 2mnk - 2k^3/3, orgqr 4mnk - 2k^2(m+n) + 4k^3/3.
  cost = 4 * m * n * min(m, n) * _complex_factor(a_MxN.dtype)
  return _serially_batched(lambda a: tuple(jnp.linalg.qr(a, mode='reduced')), cost)(a_MxN)
