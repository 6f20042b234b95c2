"""LAPACK linear algebra that cannot deadlock the XLA CPU runtime of jaxlib 0.10.x.

The hazard. jaxlib 0.10.2's CPU LAPACK kernels (potrf, getrf, trsm, geqrf/orgqr, syevd, gesdd,
...; `jaxlib/cpu/lapack_kernels.cc`) split a batched call into chunks, `Schedule` them on XLA's
intra-op thread pool and block in `absl::BlockingCounter::Wait` until they are done
(`jax::ParallelBatchMap`). XLA runs independent thunks of one program concurrently on that same
pool, so as many independent batched LAPACK calls as the pool has threads can each hold a thread
while waiting for chunks queued behind the others: a deadlock, every `tf_XLAEigen` thread parked
in `ParallelBatchMap`. The pool has max(cores, host devices) threads (`PJRT_NPROC` replaces the
core count; `xla/pjrt/cpu/cpu_client.cc`), so two calls suffice on this 2-core machine with
one device, and the 8 host devices `tests/conftest.py` forces hide the hazard (8 threads).
jaxlib 0.9.2 has no parallel path; 0.11.1+ leaves it out of open-source builds.

The mechanism used here. A kernel only goes parallel when batch x cost_per_matrix reaches
kMinWorkPerTask = 2e5 FLOP (`GetLapackBatchChunkSize`; cost d^3/3 for potrf, 5 d^3 for syevd,
...); below that it runs inline on the calling thread and never waits on the pool. Each function
here takes one matrix; vmapped (nested vmaps fold into one batch, through
`jax.custom_batching.custom_vmap`), it calls LAPACK on CPU in a `lax.map` over batches of at most
`serial_batch_size(cost)` matrices. No call can then block, whatever the number of independent
calls, the program's structure, the pool size or the XLA flags. Other platforms get the whole
batch in one call (`lax.platform_dependent`): cuSOLVER has no such hazard.

Hang rates measured (2-core machine, pool of 2 threads, one device; a jitted 4-step `lax.scan`
whose body makes two independent batched calls on 4096 random SPD 20 x 20 matrices, 10 calls of
it per run; a run hangs when it uses no CPU for 3 s):
  * raw `jnp.linalg`: solve hung in 10/10 runs, eigh 5/5, cholesky 4/5, qr 4/5, svd 5/5; solve
    on 4096 5 x 5 systems 1/3, 2048 0/3, 1024 (below the threshold: inline) 0/3. With the 8
    host devices of the tests 0/6; with 2 devices 3/4, with 3 or 4 0/4.
  * this module: solve_spd 0/20 (also 0/5 with four independent solves), eigh, cholesky and qr
    0/5 each. `tests/linalg_test.py`'s pattern (two solves and two eighs per step, batch 2048):
    raw 10/10 at load 1.7, this module 0/20 runs (160 calls).
  * one batched call over the stacked systems: 0/10. Safe, but every independent solve of a
    program must be gathered by hand, which library functions that apps vmap cannot do.
  * chaining the calls with `lax.optimization_barrier`: 8/10 hung. XLA orders thunks by buffer
    conflicts, and the barrier adds none.
  * `--xla_cpu_multi_thread_eigen=false`: 5/5 hung; `--xla_cpu_use_thunk_runtime=false`: 3/3.
  * a bigger pool (`PJRT_NPROC=4`: 0/5; host devices >= 3): only while a program holds fewer
    independent calls than threads. `PJRT_NPROC=1`: 0/10, but it must be set before jax starts
    and takes away all intra-op parallelism (Gauss-Jordan solves of 16384 20 x 20 systems
    166 vs 87 ms).
The race is rarer on a loaded machine (the test's pattern, raw, 16 calls a run: 2/6 at load 5).

Speed, jit(vmap) on 2 shared cores (load 2-5), best of 11, this module vs raw `jnp.linalg`
(one call per program, so that it completes), batches of 1024 / 4096 / 16384, float32:
  * solve_spd (Cholesky) vs `jnp.linalg.solve` (LU): d = 5: 0.39/1.6/7.4 vs 0.48/2.0/8.2 ms;
    d = 10: 0.80/3.4/14 vs 1.35/5.1/21 ms; d = 20: 2.4/9.3/54 vs 3.7/15/124 ms.
  * eigh: 0.97-1.09x the raw time, except at 16384 x 20 x 20, where the raw call can split over
    both cores (best of 11: 265-645 ms over three runs, against 491-494 here; medians ~500 ms).
  * qr, in the projection v - Q Q^T v: 0.74-1.8x the raw time (n x d from 2 x 5 to 19 x 20).
  What a single big call loses is its split over the cores; independent calls still run in
  parallel. The hand-written Gauss-Jordan (`estimators._spd_solve`) and Gram-Schmidt
  (`regression.orthogonal_to_span`) are kept where they measured faster than this module.

The rule for library code: call LAPACK (`jnp.linalg`, `jax.scipy.linalg`, `lax.linalg`) only
through this module. An unbatched call on one matrix is safe, but the caller does not know
whether an app will vmap it. `tests/linalg_test.py` reruns the deadlocking pattern with raw
`jnp.linalg` in a subprocess: once it stops hanging with a new jaxlib (XPASS there, on an idle
machine), this module can become plain aliases of `jnp.linalg`.

Limitations: no reverse-mode autodiff (`custom_vmap` has no transpose; `jax.jvp` works). On a
CPU mesh of several devices the chunk loop over a sharded batch makes XLA gather it (4096 20 x 20
solves on 8 virtual devices: 89 ms vs 17 ms raw); the apps run on one CPU device. Complex dtypes
are costed like jaxlib does (x3) but untested.
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
