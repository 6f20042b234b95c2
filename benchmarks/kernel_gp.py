"""Benchmark: kernel-GP prompts and training steps of the functional-GD suite (CPU or any backend).

Two paths of Cheng, Chen & Sra (2024), Appendix H.1's setting (d = 5), each against a plain
per-prompt NumPy version timed in the same run:

  (1) sampler   `jax.jit(jax.vmap(kernel_gp.sample))` over keys at n = 30 (31 points with the
                query), for the linear, relu and exp label kernels: sphere covariates,
                x = Sigma^{1/2} xi, the Gram K(xi), K_+ = V |Lambda| V^T (one `linalg.eigh`) and
                Y ~ N(0, K_+) (`gaussian_labels`, a second eigh). The NumPy version is what one
                would write without JAX: a Python loop over prompts with NumPy's PCG64, one
                float64 `np.linalg.eigh` per prompt, K_+ and Y from it. A third JAX row,
                "one eigh", draws Y from the first decomposition (what the library would do
                if `sample` reused it): the same distribution, half the LAPACK work.
  (2) training  one Adam + global-norm-clip step of the 3-layer softmax model
                (`models.kernel_attention`, one head, A free) on a batch of 30,000 exp-kernel
                prompts, n = 30: the loss (5), its gradient and the optax update, jitted as one
                program with the state donated. The NumPy version is a per-prompt loop of a
                hand-written forward and backward pass of eq. (3) (float64), the same clip and
                Adam on the summed gradient; its gradient is checked against `jax.grad` on the
                same prompts (`numpy_grad_max_rel_diff`). A full NumPy step takes minutes, so it
                is timed on `--numpy_batch` prompts and scaled linearly (it is a loop over
                prompts: its time is linear in the batch), and the table says so.

Ceiling: a jitted float32 2048 x 2048 matmul (GFLOP/s), measured before and after the paths
(best of both); `ratio_to_ceiling` is the training step's model GFLOP/s over it (the sampler is
bound by LAPACK's eigh on 31 x 31 matrices and gets no FLOP ratio). Peak RSS: of the training
step's warm-up (VmHWM reset just before it) and of the sampler's at `--num_prompts`.

Diagnostics beside the library (not library code): the sampler with one eigh, linear labels
with none (Y = Xi g), and the training step over chunks of `--chunk` prompts (lax.map).

BLAS threads: OpenBLAS (NumPy's copy, and SciPy's, whose LAPACK jaxlib's CPU eigh calls through
scipy.linalg.cython_lapack) is limited to 1 thread unless OPENBLAS_NUM_THREADS is set: with its
default threads a NumPy eigh of a 31 x 31 matrix took 0.8-33 ms on this shared 2-core machine
instead of ~0.16 ms, which would inflate the speedup for the wrong reason (see
benchmarks/README.md).

Timing: every jitted function is lowered and compiled first (compile time reported apart); each
path runs once as warm-up, then the JAX and NumPy paths of a comparison run one after the other,
`--reps` rounds, so a busy spell on the shared machine hurts both alike; the best run is
reported and the median shown beside it.

  .venv/bin/python -m benchmarks.kernel_gp            # 30,000 prompts / batch 30,000, 5-6 min busy
  .venv/bin/python -m benchmarks.kernel_gp --quick    # small sizes, for the test

The last line of stdout is one JSON object with the headline figures; see benchmarks/README.md.
"""

import os

# Before NumPy and SciPy's OpenBLAS (jaxlib's LAPACK) are loaded; see the docstring.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import memory  # noqa: E402
from icl_jax import kernels, linalg  # noqa: E402
from icl_jax.models import kernel_attention as ka  # noqa: E402
from icl_jax.prompts import Prompt  # noqa: E402
from icl_jax.samplers import kernel_gp  # noqa: E402

_QUICK = flags.DEFINE_bool('quick', False, 'small sizes (for the test): every figure, in seconds')
_NUM_PROMPTS = flags.DEFINE_integer('num_prompts', None, 'JAX sampler prompts per timed run '
                                    '(default 30,000; 2,048 with --quick)')
_NUMPY_PROMPTS = flags.DEFINE_integer('numpy_prompts', None, 'NumPy sampler prompts per timed '
                                      'run (default 3,000; 200 with --quick)')
_BATCH = flags.DEFINE_integer('batch', None, 'training batch (default 30,000; 512 with --quick)')
_NUMPY_BATCH = flags.DEFINE_integer('numpy_batch', None, 'prompts of the NumPy training step '
                                    'actually run, then scaled to --batch (default 300; 16 '
                                    'with --quick)')
_REPS = flags.DEFINE_integer('reps', None, 'timed runs per figure, best reported '
                             '(default 5; 2 with --quick)')
_N = flags.DEFINE_integer('n', 30, 'context length n')
_CHUNK = flags.DEFINE_integer('chunk', 1000, 'diagnostic training step: loss and gradient over '
                              'chunks of this many prompts (lax.map); 0 or --quick: skipped')

D = 5
LAYERS = 3
LABEL_KERNELS = ('linear', 'relu', 'exp')
HEADLINE_KERNEL = 'relu'      # the non-PSD kernel: K_+ != K, the eigendecomposition is needed
TRAIN_KERNEL = 'exp'          # labels of the training batch (softmax's companion kernel)
LR, CLIP, INIT_SCALE = 1e-3, 1.0, 0.1
MATMUL_SIZE = 2048


# --- FLOP count of the training step (analytic, per prompt) ---------------------------------------
#
# Convention of benchmarks/gpt2_step.py: a (p x q)(q x r) product is 2 p q r FLOPs; softmax,
# residual adds, clip and Adam count 0; backward = 2 x forward. Per layer, T = n + 1 tokens, one
# head, as `kernel_attention._layer` computes it: B x and C x for every token (2 x 2 T d^2), the
# scores S = (XB^T)(XC^T)^T (2 T^2 d), the label update y^T W (2 T^2), the covariate update
# (W^T X) A^T (2 T^2 d + 2 T d^2). The last layer's covariate update is never read (only TF, a
# label entry, is), so XLA removes it as dead code: it is left out there.

def model_flop_per_prompt(n: int, d: int = D, layers: int = LAYERS) -> float:
  t = n + 1
  label_part = 2 * 2 * t * d * d + 2 * t * t * d + 2 * t * t
  x_update = 2 * t * t * d + 2 * t * d * d
  forward = layers * label_part + (layers - 1) * x_update
  return 3.0 * forward


# --- measurement helpers --------------------------------------------------------------------------

def _compile(fn: Callable[..., Any], *args, **jit_kw) -> tuple[Callable[..., Any], float]:
  """(jax.jit(fn), seconds to lower and compile it for args)."""
  jitted = jax.jit(fn, **jit_kw)
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


def _interleaved(runs: dict[str, Callable[[int], Any]], reps: int) -> dict[str, dict]:
  """Times each run(i) for i = 1..reps, one of each in turn per round, after one warm-up run(0)
  each, so that a busy spell on the shared machine hurts every path of a comparison alike.

  Returns:
    {name: dict(best_s, median_s, first=run(0)'s result)}.
  """
  first = {name: jax.block_until_ready(run(0)) for name, run in runs.items()}
  times = {name: [] for name in runs}
  for i in range(1, reps + 1):
    for name, run in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(run(i))
      times[name].append(time.perf_counter() - start)
  return {name: dict(best_s=min(t), median_s=statistics.median(t), first=first[name])
          for name, t in times.items()}


def matmul_gflops(size: int, reps: int) -> float:
  """GFLOP/s of a jitted float32 size x size matmul, best of max(reps, 3) after a warm-up."""
  ka_, kb = jax.random.split(jax.random.key(1))
  a = jax.random.normal(ka_, (size, size), jnp.float32)
  b = jax.random.normal(kb, (size, size), jnp.float32)
  compiled, _ = _compile(jnp.matmul, a, b)
  best, _, _ = _time(lambda i: compiled(a, b), max(reps, 3))
  return 2.0 * size**3 / best / 1e9


# --- (1) the sampler ------------------------------------------------------------------------------

def sample_one_eigh(key: jax.Array, *, n: int, cov: kernel_gp.Covariance,
                    gram) -> kernel_gp.KernelPrompt:
  """`kernel_gp.sample` with Y drawn from the decomposition that gave K_+ (V sqrt|Lambda| g):
  the same distribution with one eigh per prompt instead of two. A diagnostic, not library."""
  k_xi, k_y = jax.random.split(key)
  xi_TxD = kernel_gp.sphere(k_xi, n + 1, cov.sigma.shape[0])
  x_TxD = xi_TxD @ cov.sqrt
  w, v = linalg.eigh(gram(xi_TxD))
  k_plus = (v * jnp.abs(w)[None, :]) @ v.T
  y_T = v @ (jnp.sqrt(jnp.abs(w)) * jax.random.normal(k_y, w.shape))
  return kernel_gp.KernelPrompt(Prompt(x=x_TxD[:n], y=y_T[:n], x_query=x_TxD[n],
                                       y_query=y_T[n]), xi_TxD, k_plus)


def sample_linear_no_eigh(key: jax.Array, *, n: int, cov: kernel_gp.Covariance,
                          gram) -> kernel_gp.KernelPrompt:
  """Linear-kernel prompts without any eigh: K = Xi Xi^T is PSD of rank d, so K_+ = K and
  Y = Xi g with g ~ N(0, I_d) has covariance K_+ exactly. A diagnostic, not library."""
  del gram
  k_xi, k_y = jax.random.split(key)
  d = cov.sigma.shape[0]
  xi_TxD = kernel_gp.sphere(k_xi, n + 1, d)
  x_TxD = xi_TxD @ cov.sqrt
  y_T = xi_TxD @ jax.random.normal(k_y, (d,))
  return kernel_gp.KernelPrompt(Prompt(x=x_TxD[:n], y=y_T[:n], x_query=x_TxD[n],
                                       y_query=y_T[n]), xi_TxD, xi_TxD @ xi_TxD.T)


def jax_sampler(sample_fn, name: str, cov, n: int, num_prompts: int, reps: int):
  """(run(i) -> labels of num_prompts prompts from keys set i, compile seconds)."""
  gram = kernels.gram_fn(name)
  fn = jax.vmap(lambda k: sample_fn(k, n=n, cov=cov, gram=gram).prompt.y)
  keys = [jax.random.split(jax.random.key(100 + i), num_prompts) for i in range(reps + 1)]
  compiled, compile_s = _compile(fn, keys[0])
  return (lambda i: compiled(keys[i])), compile_s


def _np_gram(name: str, xi: np.ndarray) -> np.ndarray:
  ip = xi @ xi.T
  if name == 'linear':
    return ip
  if name == 'relu':
    return np.maximum(ip, 0.0)
  return np.exp(ip)


def numpy_sample(rng: np.random.Generator, name: str, n: int, sigma_sqrt: np.ndarray):
  """One K-GP prompt the plain way (Definition 3.3, App. H.1): float64, one eigh."""
  g = rng.standard_normal((n + 1, D))
  xi = g / np.linalg.norm(g, axis=1, keepdims=True)
  x = xi @ sigma_sqrt
  w, v = np.linalg.eigh(_np_gram(name, xi))
  k_plus = (v * np.abs(w)) @ v.T
  y = v @ (np.sqrt(np.abs(w)) * rng.standard_normal(n + 1))
  return x, y, k_plus


def numpy_sampler(name: str, cov, n: int, num_prompts: int):
  """run(i) -> labels [num_prompts, n] of a Python loop over prompts, NumPy's PCG64 seeded i."""
  sq = np.asarray(cov.sqrt, np.float64)

  def run(i):
    rng = np.random.default_rng(i)
    return np.stack([numpy_sample(rng, name, n, sq)[1][:n] for _ in range(num_prompts)])

  return run


def sampler_peak_rss(cov, n: int, num_prompts: int) -> float:
  """Peak RSS (MiB) of one run of the library sampler (relu kernel) at num_prompts."""
  gram = kernels.gram_fn(HEADLINE_KERNEL)
  fn = jax.jit(jax.vmap(lambda k: kernel_gp.sample(k, n=n, cov=cov, gram=gram)))
  keys = jax.random.split(jax.random.key(7), num_prompts)
  fn.lower(keys).compile()
  memory.reset_peak_rss()
  jax.block_until_ready(fn(keys))
  return memory.peak_rss_mb()


# --- (2) the training step ------------------------------------------------------------------------

def make_train_batch(cov, n: int, batch: int) -> Prompt:
  """The training batch: `batch` exp-kernel prompts from the library sampler."""
  gram = kernels.gram_fn(TRAIN_KERNEL)
  fn = jax.jit(jax.vmap(lambda k: kernel_gp.sample(k, n=n, cov=cov, gram=gram).prompt))
  return fn(jax.random.split(jax.random.key(3), batch))


def _loss(params, batch: Prompt):
  """The in-context loss (5) averaged over the batch, one softmax head."""
  return jnp.mean(jax.vmap(lambda p: ka.loss(params, p, activations=('softmax',)))(batch))


def _optimizer():
  return optax.chain(optax.clip_by_global_norm(CLIP), optax.adam(LR))


def _chunked_value_and_grad(params, batch: Prompt, chunk: int):
  """value_and_grad of `_loss` as the mean over equal chunks of the batch, one chunk at a time
  (`lax.map`): the same numbers to float32 rounding, a working set of one chunk."""
  chunks = jax.tree.map(lambda a: a.reshape((-1, chunk) + a.shape[1:]), batch)
  loss, grads = jax.lax.map(lambda c: jax.value_and_grad(_loss)(params, c), chunks)
  return jnp.mean(loss), jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)


class JaxStep:
  """One Adam + clip step on a fixed batch, jitted with the state donated (as training.fit).

  chunk = 0: the loss and gradient of the whole batch at once (as the apps compute them);
  chunk > 0: `_chunked_value_and_grad` (a diagnostic of the step's memory-boundness).
  """

  def __init__(self, params, batch: Prompt, chunk: int = 0):
    self.batch = batch
    opt = _optimizer()

    def step(state, batch):
      params, opt_state = state
      if chunk:
        loss, grads = _chunked_value_and_grad(params, batch, chunk)
      else:
        loss, grads = jax.value_and_grad(_loss)(params, batch)
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    self.state = (jax.tree.map(jnp.array, params), opt.init(params))
    self.jitted, self.compile_s = _compile(step, self.state, batch, donate_argnums=0)

  def __call__(self) -> float:
    self.state, loss = self.jitted(self.state, self.batch)
    jax.block_until_ready(self.state)
    return float(loss)


def numpy_forward_backward(params: dict, x, y, xq, yq):
  """Loss (TF_3 + y_q)^2 of one prompt and its gradient, eq. (3) by hand, float64.

  Token-major Z [T, d+1] (query last, its label 0); per layer, one softmax head:
    P = X B^T, Q = X C^T, S = P Q^T (key i, query j), W = softmax over the n context keys of
    each column (the query's row 0), Y += r W^T Y, X += (W^T X) A^T.
  The backward pass reverses these steps (softmax: gS = W * (gW - sum_i W gW)).
  """
  a, r, b, c = params['a'], params['r'], params['b'], params['c']
  n = x.shape[0]
  z = np.zeros((n + 1, D + 1))
  z[:n, :D], z[:n, D], z[n, :D] = x, y, xq
  tape = []
  for l in range(a.shape[0]):
    xl, yl = z[:, :D], z[:, D]
    p_, q_ = xl @ b[l].T, xl @ c[l].T
    s = p_ @ q_.T
    e = np.exp(s[:n] - s[:n].max(axis=0, keepdims=True))
    w = np.zeros_like(s)
    w[:n] = e / e.sum(axis=0, keepdims=True)
    u = w.T @ xl
    z = z + np.concatenate([u @ a[l].T, (r[l] * (w.T @ yl))[:, None]], axis=1)
    tape.append((xl, yl, p_, q_, w, u))
  err = z[n, D] + yq
  gz = np.zeros_like(z)
  gz[n, D] = 2.0 * err
  grads = {k: np.zeros_like(v) for k, v in params.items()}
  for l in reversed(range(a.shape[0])):
    xl, yl, p_, q_, w, u = tape[l]
    gx_out, gy_out = gz[:, :D], gz[:, D]
    wty = w.T @ yl
    grads['r'][l] = gy_out @ wty
    gy = gy_out + r[l] * (w @ gy_out)
    gw = r[l] * np.outer(yl, gy_out)
    gu = gx_out @ a[l]
    grads['a'][l] = gx_out.T @ u
    gx = gx_out + w @ gu
    gw += xl @ gu.T
    gs = w * (gw - np.sum(w * gw, axis=0, keepdims=True))
    gp, gq = gs @ q_, gs.T @ p_
    grads['b'][l] = gp.T @ xl
    grads['c'][l] = gq.T @ xl
    gx = gx + gp @ b[l] + gq @ c[l]
    gz = np.concatenate([gx, gy[:, None]], axis=1)
  return err**2, grads


def numpy_step(params: dict, opt_state: dict, batch, t: int):
  """Loss, gradient (mean over the batch), global-norm clip and Adam (optax's defaults)."""
  x, y, xq, yq = batch
  total = {k: np.zeros_like(v) for k, v in params.items()}
  loss = 0.0
  for i in range(len(yq)):
    li, gi = numpy_forward_backward(params, x[i], y[i], xq[i], yq[i])
    loss += li
    for k in total:
      total[k] += gi[k]
  grads = {k: v / len(yq) for k, v in total.items()}
  norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
  scale = min(1.0, CLIP / max(norm, 1e-30))
  b1, b2, eps = 0.9, 0.999, 1e-8
  new = {}
  for k, g in grads.items():
    g = g * scale
    m = b1 * opt_state['m'][k] + (1 - b1) * g
    v = b2 * opt_state['v'][k] + (1 - b2) * g * g
    opt_state['m'][k], opt_state['v'][k] = m, v
    new[k] = params[k] - LR * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  return new, opt_state, loss / len(yq), grads


def _np_params(params: ka.Params) -> dict:
  """kernel_attention Params (one head) as float64 NumPy [L, ...] arrays."""
  return dict(a=np.asarray(params.a[:, 0], np.float64), r=np.asarray(params.r[:, 0], np.float64),
              b=np.asarray(params.b[:, 0], np.float64), c=np.asarray(params.c[:, 0], np.float64))


class NumpyStep:
  """The NumPy training step on the first numpy_batch prompts of the batch (state kept)."""

  def __init__(self, params: ka.Params, batch: Prompt, numpy_batch: int):
    sub = jax.tree.map(lambda a: np.asarray(a[:numpy_batch], np.float64), batch)
    self.data = (sub.x, sub.y, sub.x_query, sub.y_query)
    self.params = _np_params(params)
    zeros = lambda: {k: np.zeros_like(v) for k, v in self.params.items()}
    self.opt_state = dict(m=zeros(), v=zeros())
    self.t = 0
    self.first_grads = None

  def __call__(self) -> float:
    self.t += 1
    self.params, self.opt_state, loss, grads = numpy_step(self.params, self.opt_state, self.data,
                                                          self.t)
    if self.first_grads is None:
      self.first_grads = grads   # at the initial params, for `grad_max_rel_diff`
    return loss


def grad_max_rel_diff(np_grads: dict, params: ka.Params, batch: Prompt, numpy_batch: int) -> float:
  """max |NumPy gradient - jax.grad| / max |jax.grad| on the same prompts, initial params."""
  jax_grads = jax.jit(jax.grad(_loss))(params, jax.tree.map(lambda a: a[:numpy_batch], batch))
  jg = _np_params(jax_grads)
  scale = max(float(np.max(np.abs(v))) for v in jg.values())
  return max(float(np.max(np.abs(np_grads[k] - jg[k]))) for k in jg) / scale


# --- main -----------------------------------------------------------------------------------------

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  quick = _QUICK.value
  pick = lambda flag, full, small: flag.value if flag.value is not None else (small if quick
                                                                                else full)
  n = _N.value
  num_prompts = pick(_NUM_PROMPTS, 30000, 2048)
  numpy_prompts = pick(_NUMPY_PROMPTS, 3000, 200)
  batch_size = pick(_BATCH, 30000, 512)
  numpy_batch = min(pick(_NUMPY_BATCH, 300, 16), batch_size)
  reps = pick(_REPS, 5, 2)
  matmul_size = 512 if quick else MATMUL_SIZE
  for name, value in (('n', n), ('num_prompts', num_prompts), ('numpy_prompts', numpy_prompts),
                      ('batch', batch_size), ('numpy_batch', numpy_batch), ('reps', reps)):
    if value <= 0:
      raise app.UsageError(f'--{name}={value} must be positive')
  wall_start = time.perf_counter()
  cov = jax.jit(kernel_gp.covariance)(jax.random.key(0))

  mm1 = matmul_gflops(matmul_size, reps)
  # (1) the sampler. --quick times the headline kernel only (each kernel is one more compile).
  kernel_names = (HEADLINE_KERNEL,) if quick else LABEL_KERNELS
  runs, compile_s = {}, {}
  for name in kernel_names:
    runs['jax', name], compile_s[name] = jax_sampler(kernel_gp.sample, name, cov, n,
                                                     num_prompts, reps)
    runs['numpy', name] = numpy_sampler(name, cov, n, numpy_prompts)
  if not quick:   # the diagnostics: one more compilation each
    runs['one_eigh'], _ = jax_sampler(sample_one_eigh, HEADLINE_KERNEL, cov, n, num_prompts,
                                      reps)
    runs['no_eigh'], _ = jax_sampler(sample_linear_no_eigh, 'linear', cov, n, num_prompts, reps)
  timed = _interleaved(runs, reps)
  count = lambda key: numpy_prompts if key[0] == 'numpy' else num_prompts
  rows = {key: dict(prompts_per_s=count(key) / t['best_s'],
                    median_prompts_per_s=count(key) / t['median_s'],
                    mean_y2=float(np.mean(np.square(np.asarray(t['first'], np.float64)))))
          for key, t in timed.items()}
  jax_rows = {name: rows['jax', name] for name in kernel_names}
  np_rows = {name: rows['numpy', name] for name in kernel_names}
  one_eigh, no_eigh = rows.get('one_eigh'), rows.get('no_eigh')
  sampler_rss = sampler_peak_rss(cov, n, num_prompts)

  # (2) the training step.
  batch = make_train_batch(cov, n, batch_size)
  params = ka.init(jax.random.key(5), d=D, layers=LAYERS, heads=1, scale=INIT_SCALE)
  jax_step = JaxStep(params, batch)
  rss_before_mb = memory.proc_status_kib('VmRSS') / 1024.0
  memory.reset_peak_rss()
  first_loss = jax_step()            # a warm-up step, and the one whose peak RSS is reported
  peak_rss_mb = memory.peak_rss_mb()
  chunk = 0 if quick else _CHUNK.value
  chunked_step, chunked_rss_mb = None, None
  if chunk:
    if batch_size % chunk:
      raise app.UsageError(f'--batch={batch_size} must be a multiple of --chunk={chunk}')
    chunked_step = JaxStep(params, batch, chunk)
    rss_chunked_before_mb = memory.proc_status_kib('VmRSS') / 1024.0
    memory.reset_peak_rss()
    chunked_step()
    chunked_rss_mb = memory.peak_rss_mb()
  np_step = NumpyStep(params, batch, numpy_batch)
  train_runs = {'jax': lambda i: jax_step(), 'numpy': lambda i: np_step()}
  if chunked_step is not None:
    train_runs['chunked'] = lambda i: chunked_step()
  train = _interleaved(train_runs, reps)
  chunked_s = train['chunked']['best_s'] if chunked_step is not None else None
  s_per_step, median_s = train['jax']['best_s'], train['jax']['median_s']
  numpy_train = dict(best_s=train['numpy']['best_s'],
                     grad_max_rel_diff=grad_max_rel_diff(np_step.first_grads, params, batch,
                                                         numpy_batch))
  mm2 = matmul_gflops(matmul_size, reps)
  matmul = max(mm1, mm2)
  wall = time.perf_counter() - wall_start

  numpy_s_per_step = numpy_train['best_s'] * batch_size / numpy_batch
  flop = model_flop_per_prompt(n) * batch_size
  achieved = flop / s_per_step / 1e9
  head, head_np = jax_rows[HEADLINE_KERNEL], np_rows[HEADLINE_KERNEL]
  speedup = head['prompts_per_s'] / head_np['prompts_per_s']

  print(f'Kernel-GP prompts and 3-layer softmax training steps, d = {D}, n = {n} '
        f'({n + 1} points); best of {reps} timed runs')
  print(f'jax {jax.__version__}, {jax.devices()[0].platform} backend, {os.cpu_count()} CPUs, '
        f'OPENBLAS_NUM_THREADS={os.environ.get("OPENBLAS_NUM_THREADS")}, load average '
        f'{os.getloadavg()[0]:.2f} at the end; wall time {wall:.0f} s')
  print()
  print(f'Ceiling: float32 matmul {matmul_size}x{matmul_size}  {matmul:8.1f} GFLOP/s   '
        f'(before / after: {mm1:.1f}, {mm2:.1f})')
  print()
  print(f'(1) Sampler: JAX {num_prompts:,} prompts per run (jit(vmap(kernel_gp.sample))), NumPy '
        f'{numpy_prompts:,} (a Python loop, float64, one eigh each)')
  print(f'  {"kernel":8s} {"JAX /s":>10s} {"median":>10s} {"NumPy /s":>10s} {"median":>10s} '
        f'{"speedup":>8s} {"compile s":>9s} {"E y^2 JAX":>9s} {"NumPy":>7s}')
  for name in kernel_names:
    j, p = jax_rows[name], np_rows[name]
    print(f'  {name:8s} {j["prompts_per_s"]:10,.0f} {j["median_prompts_per_s"]:10,.0f} '
          f'{p["prompts_per_s"]:10,.0f} {p["median_prompts_per_s"]:10,.0f} '
          f'{j["prompts_per_s"] / p["prompts_per_s"]:7.2f}x {compile_s[name]:9.1f} '
          f'{j["mean_y2"]:9.3f} {p["mean_y2"]:7.3f}')
  if quick:
    print('  (--quick: the relu kernel only, no diagnostics)')
  if one_eigh is not None:
    print('  diagnostics (not the library):')
    print(f'  {HEADLINE_KERNEL:8s} {one_eigh["prompts_per_s"]:10,.0f} '
          f'{one_eigh["median_prompts_per_s"]:10,.0f}   one eigh (Y from the decomposition of '
          f'K_+): {one_eigh["prompts_per_s"] / head["prompts_per_s"]:.2f}x the library, '
          f'{one_eigh["prompts_per_s"] / head_np["prompts_per_s"]:.2f}x NumPy')
    print(f'  {"linear":8s} {no_eigh["prompts_per_s"]:10,.0f} '
          f'{no_eigh["median_prompts_per_s"]:10,.0f}   no eigh (Y = Xi g, g ~ N(0, I_d)): '
          f'{no_eigh["prompts_per_s"] / jax_rows["linear"]["prompts_per_s"]:.1f}x the library, '
          f'{no_eigh["prompts_per_s"] / np_rows["linear"]["prompts_per_s"]:.1f}x NumPy; '
          f'E y^2 {no_eigh["mean_y2"]:.3f}')
  print("  E y^2 is the mean of K_+'s diagonal: 1 for linear, 1 for relu, e = 2.718 for exp "
        '(a check that both draw the same thing)')
  print(f'  sampler peak RSS at {num_prompts:,} prompts ({HEADLINE_KERNEL}): {sampler_rss:.1f} MiB')
  print()
  print(f'(2) Training step: 3 layers, softmax, A free, batch {batch_size:,} {TRAIN_KERNEL}-kernel '
        f'prompts, clip {CLIP} + Adam {LR}')
  print(f'  JAX    {s_per_step:8.3f} s/step (median {median_s:.3f}), {1 / s_per_step:.2f} steps/s, '
        f'compile {jax_step.compile_s:.1f} s, first loss {first_loss:.4f}')
  print(f'  NumPy  {numpy_s_per_step:8.3f} s/step, scaled from {numpy_train["best_s"]:.3f} s on '
        f'{numpy_batch:,} prompts (a per-prompt loop: linear in the batch); '
        f'its gradient vs jax.grad: max rel diff {numpy_train["grad_max_rel_diff"]:.1e}')
  print(f'  speedup {numpy_s_per_step / s_per_step:.1f}x')
  if chunked_step is not None:
    print(f'  diagnostic: the same step over chunks of {chunk:,} prompts (lax.map): '
          f'{chunked_s:.3f} s/step (median {train["chunked"]["median_s"]:.3f}), '
          f'{s_per_step / chunked_s:.2f}x the whole-batch step; peak RSS {chunked_rss_mb:.1f} MiB '
          f'({chunked_rss_mb - rss_chunked_before_mb:+.1f})')
  print(f'  model {flop / 1e9:.2f} GFLOP/step ({model_flop_per_prompt(n):,.0f} per prompt), '
        f'{achieved:.1f} GFLOP/s = {achieved / matmul:.1%} of the matmul ceiling')
  print(f'  peak RSS during the warm-up step (after compiling) {peak_rss_mb:.1f} MiB '
        f'({peak_rss_mb - rss_before_mb:+.1f} over the RSS before it)')
  print()

  rate = lambda row: None if row is None else row['prompts_per_s']
  summary = dict(
      benchmark='kernel_gp',
      prompts_per_s=head['prompts_per_s'],
      numpy_prompts_per_s=head_np['prompts_per_s'],
      speedup=speedup,
      # Full runs only (null with --quick): the other label kernels and the diagnostics.
      prompts_per_s_linear=rate(jax_rows.get('linear')),
      prompts_per_s_exp=rate(jax_rows.get('exp')),
      numpy_prompts_per_s_linear=rate(np_rows.get('linear')),
      numpy_prompts_per_s_exp=rate(np_rows.get('exp')),
      linear_no_eigh_prompts_per_s=rate(no_eigh),
      one_eigh_prompts_per_s=rate(one_eigh),
      steps_per_s=1.0 / s_per_step,
      s_per_step=s_per_step,
      numpy_s_per_step=numpy_s_per_step,
      train_speedup=numpy_s_per_step / s_per_step,
      chunked_s_per_step=chunked_s,          # null with --quick (diagnostic)
      chunked_peak_rss_mb=chunked_rss_mb,    # null with --quick
      numpy_grad_max_rel_diff=numpy_train['grad_max_rel_diff'],
      matmul_gflops=matmul,
      model_gflop_per_step=flop / 1e9,
      achieved_gflops=achieved,
      ratio_to_ceiling=achieved / matmul,
      peak_rss_mb=peak_rss_mb,
      sampler_peak_rss_mb=sampler_rss,
      num_prompts=num_prompts,
      numpy_prompts=numpy_prompts,
      batch=batch_size,
      numpy_batch=numpy_batch,
      d=D,
      n=n,
      layers=LAYERS,
  )
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
