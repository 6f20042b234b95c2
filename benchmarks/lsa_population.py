"""Benchmark: population loss + gradient of one LSA layer at d = 20, N = 100 (CPU or any backend).

Three ways to get L(theta) and grad L(theta) for the linear self-attention layer of Zhang, Frei &
Bartlett (2023) on noiseless linear prompts, x ~ N(0, Lambda), w ~ N(0, I_d):

  (a) direct   Monte Carlo, `population.mc_value_and_grad` with `regression.linear_prompt` and
               `lsa.squared_error`: n d + 2 d = 2,040 normal draws per prompt, so it can go no
               faster than draws_per_s / 2,040 prompts/s whatever the arithmetic does.
  (b) wishart  Monte Carlo on sufficient statistics, `regression.sample_linear_stats` with
               `lsa.squared_error_stats`: S = X^T X / n drawn by the Bartlett decomposition
               (d(d-1)/2 normals + d chi2), plus w and the query (2 d normals), and kept as
               its factor F (S = F F^T), which the loss applies to two vectors.
  (c) exact    `jax.value_and_grad(theory.trained_lsa.population_loss)`: no sampling at all.

Sampling is included in (a) and (b); both use the same chunk (1,024 by default: the Wishart
rate is flat from 256 to 4,096 here, see --sweep_chunks). In the same run it measures two
ceilings: a jitted 2048 x 2048 float32 matmul (GFLOP/s), and the normal generator (draws/s at
1, 4 and 16 MiB arrays; the best gives the direct-sampling limit draws_per_s / 2,040 in
prompts/s). Then it shows that memory is flat in the number of prompts: the Wishart path runs
at P and 16 P prompts with the same chunk, each in a fresh subprocess (in this process with
--quick), reporting the peak RSS during the run.

Timing: every jitted function is lowered and compiled first (compile time reported apart), run
once as warm-up, then timed `--reps` times with `block_until_ready`; the best run is reported
and the median shown beside it (the machine is shared: the best is the least disturbed run).

  .venv/bin/python -m benchmarks.lsa_population            # full: 65,536 prompts, ~1-2 min
  .venv/bin/python -m benchmarks.lsa_population --quick    # small sizes, for the test (~30 s)

The last line of stdout is one JSON object with the headline figures; see benchmarks/README.md.
"""

import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import memory
from icl_jax import population
from icl_jax.models import lsa
from icl_jax.samplers import regression
from icl_jax.theory import trained_lsa

_QUICK = flags.DEFINE_bool('quick', False, 'small sizes (for the test): every figure, in seconds')
_NUM_PROMPTS = flags.DEFINE_integer('num_prompts', None,
                                    'prompts per Monte-Carlo evaluation (default 65,536; '
                                    '8,192 with --quick)')
_CHUNK = flags.DEFINE_integer('chunk', None, 'prompts per vmapped chunk (default 1,024)')
_REPS = flags.DEFINE_integer('reps', None, 'timed runs per figure, best reported '
                             '(default 5; 2 with --quick)')
_MEMORY_FACTOR = flags.DEFINE_integer('memory_factor', 16,
                                      'the large memory run has this many times more prompts')
_SWEEP_CHUNKS = flags.DEFINE_list('sweep_chunks', [],
                                  'optional: also time the Wishart path at these chunk sizes')
_MEMORY_CHILD = flags.DEFINE_integer('memory_child', None,
                                     'internal: run only the Wishart path at this many prompts '
                                     'and print its peak RSS as JSON')

D = 20
N = 100
SIGMA = 0.1
DIRECT_DRAWS = N * D + 2 * D                   # x_1..x_N, w, x_query: 2,040 normals per prompt
WISHART_DRAWS = D * (D + 1) // 2 + 2 * D       # Bartlett factor, w, x_query: 250 (d of them chi2,
                                               # each a normal + a uniform per rejection round)
MATMUL_SIZE = 2048
# Normal draws are timed at these array sizes (1, 4 and 16 MiB of float32). The generator's
# best rate over them sets the RNG limit; the largest is reported beside it (see rng_ceiling).
RNG_SIZES = (1 << 18, 1 << 20, 1 << 22)

# --- FLOP counts (analytic, per prompt or per evaluation) -----------------------------------------
#
# Convention: a multiply-add is 2 FLOPs, a (p x q)(q x r) product 2 p q r; elementwise scalings
# of whole arrays count 1 per element; random-bit generation (integer threefry), the chi2
# rejection sampler, reductions to a mean and transposes/concatenations count 0. The counts follow
# the library as written (e.g. a diagonal Lambda enters as a dense d x d matrix where the code
# builds one). Reverse mode is counted as 2 x the forward FLOPs of the parameter-dependent part
# (the usual value_and_grad ~ 3 x forward rule); the sampled prompt does not depend on theta, so
# sampling and the Gram matrix are counted once.
#
# LSA prediction (eq. (6)) from a Gram G [(d+1)^2]: v^T G (2 (d+1)^2), then @ W_KQ[:, :d]
# (2 (d+1) d), then @ x_query (2 d); value + gradient = 3 x that.
_MODEL_FWD = 2 * (D + 1)**2 + 2 * (D + 1) * D + 2 * D                   # 1,762
_MODEL_VG = 3 * _MODEL_FWD                                                # 5,286
# (a) direct: x = z * sqrt(Lambda) (N d), y = X w (2 N d), y_query (2 d); Gram blocks
# X^T X (2 N d^2), q q^T and / N (2 d^2), X^T y (2 N d), y^T y (2 N).
DIRECT_FLOPS = (N * D + 2 * N * D + 2 * D
                + 2 * N * D * D + 2 * D * D + 2 * N * D + 2 * N
                + _MODEL_VG)                                              # 96,326
# (b) wishart: F = sqrt(Lambda) B row-scaled (d^2) and / sqrt(n) (d^2), x_query scaling (d),
# y_query (2 d); then the factorised eq. (6) of `lsa.predict_stats`, all parameter-dependent:
# u = W_KQ[:, :d] x_query (2 (d+1) d), a = v_1 + v_2 w and b = u_1 + u_2 w (2 d each),
# a^T F and b^T F (2 d^2 each), their dot (2 d), v_1.q and q.u_1 (2 d each), product / n (2);
# value + gradient = 3 x that.
_STATS_FWD = 2 * (D + 1) * D + 4 * D + 4 * D * D + 6 * D + 2               # 2,642
WISHART_FLOPS = 2 * D * D + D + 2 * D + 3 * _STATS_FWD                      # 8,786
# (c) exact population loss (8): Lambda is a dense d x d matrix there; the forward pass has 13
# (d x d)(d x d) products (Lambda^2 once; tr(A^T L A L), tr(A^T L^2 A L), tr(A_s L A_s L) three
# each; A^T L, tr(A_s L), tr(A L^2) one each) and 28 vector-matrix products (2 d^2 each) in its
# chains of b, k, m through L and A; value + gradient = 3 x forward.
EXACT_FLOPS = 3 * (13 * 2 * D**3 + 28 * 2 * D * D)                       # 691,200
#
# Cross-check with XLA's own cost analysis (jitted.lower(...).compile().cost_analysis()): for (c)
# it counts 0.20 MFLOP forward (we say 0.23) and 0.48 MFLOP for value + gradient (its reverse pass
# is cheaper than 2 x forward). For (b)'s loss on given statistics it counts 2,643 FLOP forward
# (we say 2,642) and 4,925 for value + gradient (we say 7,926, the same cheaper reverse pass).
# For (a) and (b) with sampling it also counts the generator's arithmetic (about 90 ops per
# normal draw in threefry + erfinv), which the convention above leaves out.


# --- measurement helpers --------------------------------------------------------------------------

def _compile(fn: Callable[..., Any], *args) -> tuple[Callable[..., Any], float]:
  """(jax.jit(fn), seconds to lower and compile it for args).

  The jitted function is returned rather than the AOT `Compiled`: its calls go through jit's
  fast C++ dispatch, which matters for the exact path's sub-millisecond calls, and find the
  executable just built in JAX's compilation cache (were it ever rebuilt, the untimed warm-up
  call would absorb that).
  """
  jitted = jax.jit(fn)
  start = time.perf_counter()
  jitted.lower(*args).compile()
  return jitted, time.perf_counter() - start


def _time(run: Callable[[int], Any], reps: int) -> tuple[float, float, Any]:
  """(best, median) seconds of run(i) for i = 1..reps, after one warm-up run(0); and run(0)."""
  first = jax.block_until_ready(run(0))
  times = []
  for i in range(1, reps + 1):
    start = time.perf_counter()
    jax.block_until_ready(run(i))
    times.append(time.perf_counter() - start)
  return min(times), statistics.median(times), first


def matmul_gflops(size: int, reps: int) -> tuple[float, float]:
  """GFLOP/s of a jitted float32 size x size matmul, best of reps; and its compile seconds."""
  ka, kb = jax.random.split(jax.random.key(1))
  a = jax.random.normal(ka, (size, size), jnp.float32)
  b = jax.random.normal(kb, (size, size), jnp.float32)
  compiled, compile_s = _compile(jnp.matmul, a, b)
  best, _, _ = _time(lambda i: compiled(a, b), max(reps, 3))
  return 2.0 * size**3 / best / 1e9, compile_s


def normal_draws_per_s(count: int, reps: int) -> tuple[float, float]:
  """Draws/s of jax.random.normal(key, (count,)) float32 (default PRNG), best of reps."""
  compiled, compile_s = _compile(lambda k: jax.random.normal(k, (count,), jnp.float32),
                                 jax.random.key(0))
  keys = [jax.random.key(i) for i in range(max(reps, 3) + 1)]
  best, _, _ = _time(lambda i: compiled(keys[i]), max(reps, 3))
  return count / best, compile_s


def rng_ceiling(sizes: tuple[int, ...], reps: int) -> dict[int, float]:
  """Normal draws/s at each array size.

  The best over sizes is the generator's ceiling, and the RNG limit is derived from it: on
  this CPU an array of 2^22 draws (16 MiB) comes out 2-3x slower than one of 2^18-2^20 (1-4 MiB),
  while the direct sampler draws 2,040 per prompt. A limit taken from the large array alone is
  one that direct Monte Carlo itself has beaten here on a busy machine.
  """
  return {size: normal_draws_per_s(size, reps)[0] for size in sizes}


def problem():
  """(params, cov): Assumption 3's init perturbed so every block is nonzero; anisotropic Lambda."""
  k_init, k_kq, k_pv = jax.random.split(jax.random.key(0), 3)
  params = lsa.init(k_init, D, SIGMA)
  params = lsa.Params(
      w_kq=params.w_kq + 0.01 * jax.random.normal(k_kq, params.w_kq.shape),
      w_pv=params.w_pv + 0.01 * jax.random.normal(k_pv, params.w_pv.shape))
  cov = jnp.linspace(0.5, 2.0, D, dtype=jnp.float32)
  return params, cov


def mc_fn(path: str, cov: jax.Array, num_prompts: int, chunk: int):
  """(params, key) -> (loss, grad) for the 'direct' or 'wishart' Monte-Carlo path."""
  if path == 'direct':
    loss_fn, sample = lsa.squared_error, functools.partial(regression.linear_prompt, n=N, cov=cov)
  elif path == 'wishart':
    loss_fn = lsa.squared_error_stats
    sample = functools.partial(regression.sample_linear_stats, n=N, cov=cov)
  else:
    raise ValueError(path)
  return functools.partial(population.mc_value_and_grad, loss_fn, sample,
                           num_prompts=num_prompts, chunk=chunk)


def time_mc(path: str, params, cov, num_prompts: int, chunk: int, reps: int) -> dict:
  """Compile seconds, best and median run seconds, prompts/s and the loss of one MC path."""
  fn = mc_fn(path, cov, num_prompts, chunk)
  keys = [jax.random.key(100 + i) for i in range(reps + 1)]
  compiled, compile_s = _compile(fn, params, keys[0])
  best, median, (loss, _) = _time(lambda i: compiled(params, keys[i]), reps)
  return dict(compile_s=compile_s, best_s=best, median_s=median,
              prompts_per_s=num_prompts / best, loss=float(loss))


def time_exact(params, cov, reps: int, calls: int, batch: int) -> dict:
  """Exact loss + gradient evaluations/s: one jitted call at a time, and vmapped.

  The vmapped figure evaluates `batch` parameter sets in one program (the arithmetic without
  per-call dispatch); batch = 0 skips it.
  """
  value_and_grad = jax.value_and_grad(
      lambda w_kq, w_pv: trained_lsa.population_loss(w_kq, w_pv, cov, N), argnums=(0, 1))
  jitted, compile_s = _compile(value_and_grad, params.w_kq, params.w_pv)
  # `calls` dispatches back to back, as a training loop issues them; best of reps.
  best, median, outs = _time(lambda i: [jitted(params.w_kq, params.w_pv) for _ in range(calls)],
                             reps)
  result = dict(compile_s=compile_s, evals_per_s=calls / best, median_evals_per_s=calls / median,
                loss=float(outs[0][0]), batched_evals_per_s=math.nan,
                batched_median_evals_per_s=math.nan)
  if batch:
    k_kq, k_pv = jax.random.split(jax.random.key(7))
    kq_b = params.w_kq + 0.01 * jax.random.normal(k_kq, (batch,) + params.w_kq.shape)
    pv_b = params.w_pv + 0.01 * jax.random.normal(k_pv, (batch,) + params.w_pv.shape)
    batched, _ = _compile(jax.vmap(value_and_grad), kq_b, pv_b)
    batched_best, batched_median, _ = _time(lambda i: batched(kq_b, pv_b), reps)
    result['batched_evals_per_s'] = batch / batched_best
    result['batched_median_evals_per_s'] = batch / batched_median
  return result


def measure_memory(num_prompts: int, chunk: int) -> dict:
  """Compile, then run the Wishart path once; RSS before the run and its peak during the run.

  The peak is VmHWM after resetting it to the current RSS just before the run (Linux
  /proc/self/clear_refs), so it is the run's own peak even in a process that has done other
  work. Where the reset is unavailable it is the process's lifetime peak (ru_maxrss).
  """
  params, cov = problem()
  key = jax.random.key(100)
  rss_setup_mb = memory.proc_status_kib('VmRSS') / 1024.0
  compiled, _ = _compile(mc_fn('wishart', cov, num_prompts, chunk), params, key)
  # No warm-up run (it would double the large run's time): the first run's own allocations are
  # part of its peak at either size alike.
  rss_before_mb = memory.proc_status_kib('VmRSS') / 1024.0
  reset = memory.reset_peak_rss()
  start = time.perf_counter()
  jax.block_until_ready(compiled(params, key))
  run_s = time.perf_counter() - start
  run_peak_mb = memory.peak_rss_mb()
  return dict(num_prompts=num_prompts, chunk=chunk, rss_setup_mb=rss_setup_mb,
              rss_before_run_mb=rss_before_mb, peak_rss_mb=run_peak_mb, peak_reset=reset,
              run_s=run_s)


def run_memory_child(num_prompts: int, chunk: int) -> dict:
  """`measure_memory` in a fresh Python process."""
  cmd = [sys.executable, '-m', 'benchmarks.lsa_population', f'--memory_child={num_prompts}',
         f'--chunk={chunk}']
  out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return json.loads(out.stdout.strip().splitlines()[-1])


# --- main -----------------------------------------------------------------------------------------

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  quick = _QUICK.value
  num_prompts = _NUM_PROMPTS.value or (8192 if quick else 65536)
  chunk = _CHUNK.value or 1024
  reps = _REPS.value or (2 if quick else 5)
  if num_prompts % chunk:
    raise app.UsageError(f'--num_prompts={num_prompts} must be a multiple of --chunk={chunk}')

  if _MEMORY_CHILD.value is not None:
    print(json.dumps(measure_memory(_MEMORY_CHILD.value, chunk)))
    return

  matmul_size = 512 if quick else MATMUL_SIZE
  rng_sizes = RNG_SIZES
  params, cov = problem()
  wall_start = time.perf_counter()

  # Ceilings before and after the paths (best of both), so a busy spell hurts neither side alone.
  mm1, _ = matmul_gflops(matmul_size, reps)
  rng1 = rng_ceiling(rng_sizes, reps)
  direct = time_mc('direct', params, cov, num_prompts, chunk, reps)
  wishart = time_mc('wishart', params, cov, num_prompts, chunk, reps)
  exact = time_exact(params, cov, reps, calls=200 if quick else 2000, batch=0 if quick else 4096)
  sweep = {}
  for c in (int(c) for c in _SWEEP_CHUNKS.value):
    if c != chunk and num_prompts % c == 0:
      sweep[c] = time_mc('wishart', params, cov, num_prompts, c, reps)
  mm2, _ = matmul_gflops(matmul_size, reps)
  rng2 = rng_ceiling(rng_sizes, reps)
  rng_by_size = {size: max(rng1[size], rng2[size]) for size in rng_sizes}
  matmul = max(mm1, mm2)
  draws_per_s = max(rng_by_size.values())
  rng_limit = draws_per_s / DIRECT_DRAWS
  large_rng_size = max(rng_sizes)
  large_rng_limit = rng_by_size[large_rng_size] / DIRECT_DRAWS

  large = num_prompts * _MEMORY_FACTOR.value
  if quick:  # in this process (the peak is reset before each run): saves two startups, a compile
    mem_small, mem_large = measure_memory(num_prompts, chunk), measure_memory(large, chunk)
  else:      # each in a fresh process: the cleanest figure
    mem_small, mem_large = run_memory_child(num_prompts, chunk), run_memory_child(large, chunk)
  wall = time.perf_counter() - wall_start

  rows = [
      ('(a) direct MC', direct['prompts_per_s'], num_prompts / direct['median_s'], DIRECT_FLOPS,
       direct['compile_s'], direct['loss']),
      ('(b) Wishart MC', wishart['prompts_per_s'], num_prompts / wishart['median_s'],
       WISHART_FLOPS, wishart['compile_s'], wishart['loss']),
      ('(c) exact', exact['evals_per_s'], exact['median_evals_per_s'], EXACT_FLOPS,
       exact['compile_s'], exact['loss']),
  ]
  if not math.isnan(exact['batched_evals_per_s']):
    rows.append(('(c) exact, vmapped', exact['batched_evals_per_s'],
                 exact['batched_median_evals_per_s'], EXACT_FLOPS, math.nan, exact['loss']))
  gflops = {row[0]: row[1] * row[3] / 1e9 for row in rows}
  speedup_direct = wishart['prompts_per_s'] / direct['prompts_per_s']
  speedup_rng = wishart['prompts_per_s'] / rng_limit

  print(f'LSA population loss + gradient, d = {D}, N = {N}, {num_prompts:,} prompts, '
        f'chunk {chunk:,}, best of {reps} timed runs')
  print(f'jax {jax.__version__}, {jax.devices()[0].platform} backend, {os.cpu_count()} CPUs, '
        f'load average {os.getloadavg()[0]:.2f} at the end; wall time {wall:.0f} s')
  print()
  print('Ceilings (measured before and after the paths; best of both)')
  print(f'  float32 matmul {matmul_size}x{matmul_size}  {matmul:10.1f} GFLOP/s   '
        f'(runs: {mm1:.1f}, {mm2:.1f})')
  print(f'  jax.random.normal          {draws_per_s / 1e6:10.1f} M draws/s (best over sizes: '
        + ', '.join(f'2^{size.bit_length() - 1}: {rate / 1e6:.1f}'
                    for size, rate in rng_by_size.items()) + ')')
  large_log2 = large_rng_size.bit_length() - 1
  print(f'  direct-sampling limit      {rng_limit:10,.0f} prompts/s  '
        f'(best draws/s / {DIRECT_DRAWS:,})')
  print(f'    from the 2^{large_log2} array alone {large_rng_limit:10,.0f} prompts/s  '
        '(not a true limit: see README)')
  print()
  print(f'  {"path":20s} {"rate /s":>10s} {"median /s":>10s} {"FLOP each":>10s} {"GFLOP/s":>8s} '
        f'{"/ matmul":>9s} {"compile s":>9s} {"loss":>8s}')
  for name, rate, median, flops, compile_s, loss in rows:
    print(f'  {name:20s} {rate:10,.0f} {median:10,.0f} {flops:10,d} {gflops[name]:8.2f} '
          f'{gflops[name] / matmul:9.2%} {compile_s:9.1f} {loss:8.4f}')
  print('  rate: best of the timed runs; prompts/s for (a), (b) (sampling included, '
        f'{DIRECT_DRAWS:,} and {WISHART_DRAWS} draws a prompt),')
  print('  loss + gradient evaluations/s for (c) (exact population loss, no sampling)')
  for c, res in sorted(sweep.items()):
    print(f'  (b) Wishart MC at chunk {c:<6,d} {res["prompts_per_s"]:10,.0f} prompts/s')
  print()
  print(f'  Wishart / direct           {speedup_direct:6.2f} x')
  print(f'  Wishart / RNG limit        {speedup_rng:6.2f} x   (target >= 2)')
  print(f'  direct / RNG limit         {direct["prompts_per_s"] / rng_limit:6.2f} x')
  print(f'  Wishart / 2^{large_log2}-array limit  '
        f'{wishart["prompts_per_s"] / large_rng_limit:6.2f} x')
  print()
  where = 'in this process' if quick else 'each in a fresh process'
  print(f'Memory: Wishart path, chunk {chunk:,}, {where}')
  growth = {}
  for mem in (mem_small, mem_large):
    growth[mem['num_prompts']] = mem['peak_rss_mb'] - mem['rss_before_run_mb']
    print(f'  {mem["num_prompts"]:>10,d} prompts: peak RSS {mem["peak_rss_mb"]:6.1f} MiB during '
          f'the run, {growth[mem["num_prompts"]]:+5.1f} MiB over the RSS before it; '
          f'run {mem["run_s"]:.1f} s')
  print(f'  x{_MEMORY_FACTOR.value} prompts: peak RSS '
        f'{mem_large["peak_rss_mb"] - mem_small["peak_rss_mb"]:+.1f} MiB, growth during the run '
        f'{growth[large] - growth[num_prompts]:+.1f} MiB')
  print('  (the RSS before a run, after imports and compilation, varies by tens of MiB between '
        'processes)')
  print()

  summary = dict(
      benchmark='lsa_population',
      prompts_per_s=wishart['prompts_per_s'],
      ratio_to_ceiling=gflops['(b) Wishart MC'] / matmul,
      matmul_gflops=matmul,
      rng_limit_prompts_per_s=rng_limit,
      direct_prompts_per_s=direct['prompts_per_s'],
      wishart_prompts_per_s=wishart['prompts_per_s'],
      speedup_vs_rng_limit=speedup_rng,
      exact_evals_per_s=exact['evals_per_s'],
      peak_rss_mb_small=mem_small['peak_rss_mb'],
      peak_rss_mb_large=mem_large['peak_rss_mb'],
      num_prompts=num_prompts,
      d=D,
      n=N,
  )
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
