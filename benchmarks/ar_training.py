"""Benchmark: training throughput of the augmented autoregressive model of Sander et al. (2024).

The model is the library's 3-layer stack of eq. (4) with LayerNorm (`ar_attention.deep_all`,
Sec 6 "Augmented setting", Fig 5): d = 5 (tokens e_t = (0, s_t, s_{t-1}) in R^15), T_max = 50,
loss (3) summed over every prefix T = 2..T_max and averaged over the batch, Adam (lr 5e-3),
batch 1,024, an epoch of 2^14 sequences (real Haar-orthogonal contexts, `samplers.autoregressive`).
One epoch is one jitted program: a `lax.scan` over its 16 steps, each drawing its minibatch from
the fixed training set by `training.epoch_batch` (a fresh permutation per epoch), with no host
round trip inside the epoch. Two implementations of the causal linear attention are timed:
'quadratic' (masked T x T scores, `causal_linear_attention_quadratic`) and 'prefix' (chunked
prefix sums of the key-value outer products, `causal_linear_attention`); the headline is the
faster of the two.

Peer: when torch is installed (the optional `peers` extra), the same model written in PyTorch --
each layer x <- x + LN(mask(x A^T x^T) x B^T), the prediction the first d coordinates, the same
loss, `torch.optim.Adam`, batches from a `torch.randperm` per epoch -- from the same initial
parameters (their losses must agree to float32 rounding; the difference is reported), timed an
epoch at a time, one epoch of each framework in turn so both see the same load. It runs where JAX
does: on CUDA when JAX's backend is a GPU (skipped when torch has no CUDA). The authors' own
code (github.com/michaelsdr/ical, augmented.py) trains a slightly larger model (biases, an
output projection per layer and a read-out) through a DataLoader; this peer is its lean core.
With --authors_script=<a clone>/augmented.py their own model and loop are timed too (not shipped:
their code is theirs), which is the comparison the issue's aim is stated in.

Ceiling: a jitted float32 2048 x 2048 matmul, measured before and after (best of both).
`ratio_to_ceiling` is the headline's model GFLOP/s (analytic count, `model_flop_per_sequence`)
over it.

  .venv/bin/python -m benchmarks.ar_training            # the paper's sizes, ~1-2 min idle
  .venv/bin/python -m benchmarks.ar_training --quick    # small sizes, for the test

The last line of stdout is one JSON object with the headline figures; see benchmarks/README.md.
"""

import importlib.util
import json
import os
import statistics
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import memory
from icl_jax import distributed, training
from icl_jax.models import ar_attention as ar
from icl_jax.samplers import autoregressive as sar

_QUICK = flags.DEFINE_bool('quick', False, 'small sizes (for the test): every figure, in seconds')
_REPS = flags.DEFINE_integer('reps', None, 'timed epochs per path, best reported (default 4; 2 '
                             'with --quick)')
_SEQUENCES = flags.DEFINE_integer('sequences', None, 'training sequences per epoch (default '
                                  '2^14; 2^10 with --quick)')
_BATCH = flags.DEFINE_integer('batch', None, 'sequences per step (default 1024; 256 with '
                              '--quick)')
_T_MAX = flags.DEFINE_integer('t_max', None, 'T_max (default 50; 20 with --quick)')
_D = flags.DEFINE_integer('d', 5, 'dimension of s_t (tokens have 3d coordinates)')
_LAYERS = flags.DEFINE_integer('layers', 3, 'layers of eq. (4)')
_AUTHORS = flags.DEFINE_string('authors_script', None, 'path to augmented.py of the authors\' '
                               'code (a clone of github.com/michaelsdr/ical; it needs torch, '
                               'scipy): its model and training loop are timed beside the others')
_LR = 5e-3


def model_flop_per_sequence(t_max: int, d: int, layers: int, impl: str = 'quadratic') -> float:
  """Analytic FLOP of loss + gradient for one sequence (2 per multiply-add; reverse mode 2x the
  forward). Per layer, width E = 3d, T = t_max tokens: the projections x A^T and x B^T
  (2 T E^2 MACs); 'quadratic': the masked scores and their product with the values, computed in
  full (2 T^2 E MACs); 'prefix' with chunks of C: 2 T C E within chunks and 2 T E^2 for the
  state; LayerNorm ~ 8 T E. The loss and the optimiser are left out (O(T d))."""
  e, t = 3 * d, t_max
  if impl == 'quadratic':
    attn = 2 * t * t * e
  else:
    c = min(t, 16)
    attn = 2 * t * c * e + 2 * t * e * e
  per_layer = 2 * (2 * t * e * e + attn) + 8 * t * e
  return 3.0 * layers * per_layer


def _time(run: Callable[[int], Any], reps: int) -> tuple[float, float]:
  times = []
  for i in range(1, reps + 1):
    start = time.perf_counter()
    jax.block_until_ready(run(i))
    times.append(time.perf_counter() - start)
  return min(times), statistics.median(times)


def matmul_gflops(size: int = 2048, reps: int = 3) -> float:
  """GFLOP/s of a jitted float32 size x size matmul, best of reps after a warm-up."""
  ka, kb = jax.random.split(jax.random.key(1))
  a = jax.random.normal(ka, (size, size), jnp.float32)
  b = jax.random.normal(kb, (size, size), jnp.float32)
  mm = jax.jit(jnp.matmul)
  jax.block_until_ready(mm(a, b))
  best, _ = _time(lambda i: mm(a, b), reps)
  return 2.0 * size**3 / best / 1e9


def dataset(num: int, d: int, t_max: int) -> jax.Array:
  """[num, t_max + 1, d] sequences with Haar-orthogonal contexts (Sec 6's non-commuting case)."""
  return jax.jit(sar.sequences, static_argnums=(1, 2, 3, 4))(jax.random.key(0), 'orthogonal', d,
                                                             t_max, num)


def jax_epoch(train: jax.Array, batch: int, impl: str, mesh=None):
  """A jitted epoch (params, opt_state, epoch) -> (params, opt_state, losses [steps]); each batch
  split over `mesh` as the apps split theirs (`distributed.shard_batch`)."""
  optimizer = optax.adam(_LR)
  steps = train.shape[0] // batch
  order_key = jax.random.key(2)

  def step(carry, i):
    params, opt_state = carry
    s_BxTp1xD = distributed.shard_batch(training.epoch_batch(train, i, order_key, batch), mesh)
    loss, grads = jax.value_and_grad(ar.mean_loss)(params, s_BxTp1xD, impl=impl)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  @jax.jit
  def epoch(params, opt_state, e):
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                               e * steps + jnp.arange(steps))
    return params, opt_state, losses

  return epoch, optimizer


def torch_device() -> str:
  """The peer's device: 'cuda' when JAX runs on a GPU, else 'cpu'.

  Raises:
    ImportError: torch is not installed, or JAX runs on a GPU and torch has no CUDA (a CPU peer
      beside a GPU JAX would not be a comparison).
  """
  import torch  # noqa: PLC0415  (optional peer)
  if jax.default_backend() == 'gpu':
    if not torch.cuda.is_available():
      raise ImportError('torch has no CUDA while JAX runs on the GPU')
    return 'cuda'
  return 'cpu'


def torch_epoch_fn(params: ar.DeepParams, train: np.ndarray, batch: int):
  """The same model, loss and Adam in PyTorch; returns (run_epoch(e) -> losses, loss0 fn)."""
  import torch  # noqa: PLC0415  (optional peer)
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  device = torch_device()
  d = train.shape[-1]
  tensors = [torch.tensor(np.asarray(p), requires_grad=True, device=device) for p in params]
  a, b, g, beta = tensors
  data = torch.tensor(np.asarray(train), device=device)
  t = data.shape[1] - 1
  mask = torch.tril(torch.ones(t, t, device=device))
  opt = torch.optim.Adam(tensors, lr=_LR)

  def loss_of(s):
    x = s[:, :-1]
    prev = torch.nn.functional.pad(x[:, :-1], (0, 0, 1, 0))
    e = torch.cat([torch.zeros_like(x), x, prev], dim=-1)
    for l in range(a.shape[0]):
      q = e @ a[l].T
      v = e @ b[l].T
      u = ((q @ e.transpose(1, 2)) * mask) @ v
      e = e + torch.nn.functional.layer_norm(u, (u.shape[-1],), g[l], beta[l], eps=1e-5)
    r = e[:, 1:, :d] - s[:, 2:]
    return (r * r).sum(dim=(1, 2)).mean()

  def run_epoch(_):
    losses = []
    for idx in torch.randperm(data.shape[0])[:data.shape[0] // batch * batch].view(-1, batch):
      opt.zero_grad()
      loss = loss_of(data[idx])
      loss.backward()
      opt.step()
      losses.append(loss.detach())
    return torch.stack(losses).cpu().numpy()  # one host sync an epoch, as the JAX side

  def first_loss(s):
    with torch.no_grad():
      return float(loss_of(torch.tensor(np.asarray(s), device=device)))

  return run_epoch, first_loss


def authors_epoch_fn(path: str, train: np.ndarray, batch: int, layers: int):
  """One epoch of the authors' training loop (augmented.py of github.com/michaelsdr/ical, loaded
  from `path`, not shipped here): their `Transformer` (width 3d, `layers` layers, one head, an
  output projection and LayerNorm per layer, a read-out), their `CustomDataset` of augmented
  tokens (0, s_t, s_{t-1}) over our training sequences, a shuffling DataLoader, `nn.MSELoss` on
  the first d outputs and Adam, as their `train`. Returns run_epoch(e) -> last loss."""
  import torch  # noqa: PLC0415  (optional peer)
  spec = importlib.util.spec_from_file_location('ical_augmented', path)
  authors = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(authors)
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  device = torch.device(torch_device())
  d = train.shape[-1]
  tokens = np.asarray(jax.vmap(sar.augmented)(train))
  loader = torch.utils.data.DataLoader(authors.CustomDataset(tokens), batch_size=batch,
                                       shuffle=True)
  model = authors.Transformer(dim_in=3 * d, embed_size=3 * d, num_layers=layers,
                              forward_expansion=1, heads=1, device=device).to(device)
  opt = torch.optim.Adam(model.parameters(), lr=_LR)
  criterion = torch.nn.MSELoss()

  def run_epoch(_):
    for inputs, targets in loader:
      inputs, targets = inputs.to(device), targets.to(device)
      opt.zero_grad()
      loss = criterion(model(inputs)[:, :, :d], targets[:, :, d:2 * d])
      loss.backward()
      opt.step()
    return loss.item()

  return run_epoch


def main(argv):
  del argv
  quick = _QUICK.value
  reps = _REPS.value or (2 if quick else 4)
  num = _SEQUENCES.value or (2**10 if quick else 2**14)
  batch = _BATCH.value or (256 if quick else 1024)
  t_max = _T_MAX.value or (20 if quick else 50)
  d, layers = _D.value, _LAYERS.value
  if not 0 < batch <= num:
    raise app.UsageError(f'--batch={batch}: must be in [1, --sequences={num}]')
  if t_max < 2:
    raise app.UsageError(f'--t_max={t_max}: must be >= 2')
  if _AUTHORS.value:
    if not os.path.isfile(_AUTHORS.value):
      raise app.UsageError(f'--authors_script={_AUTHORS.value}: no such file (augmented.py of a '
                           'clone of github.com/michaelsdr/ical)')
    try:
      torch_device()
      if importlib.util.find_spec('scipy') is None:   # the authors' script imports scipy.stats
        raise ImportError('No module named scipy')
    except ImportError as e:
      raise app.UsageError(f'--authors_script needs torch and scipy: {e} (pip install -e '
                           '.[peers] scipy)') from None

  devices = jax.device_count()
  if batch % devices:
    raise app.UsageError(f'--batch={batch}: must be a multiple of the device count {devices}')
  ceiling = matmul_gflops(1024 if quick else 2048)
  train = dataset(num, d, t_max)
  params0 = ar.init_deep(jax.random.key(1), d, layers, scale=0.1)
  # Several devices (e.g. XLA_FLAGS=--xla_force_host_platform_device_count=2 on a CPU): each
  # batch is split over them and the state replicated, as the apps train.
  mesh = distributed.data_mesh() if devices > 1 else None
  epochs, first = {}, {}
  for impl in ('quadratic', 'prefix'):
    epoch, optimizer = jax_epoch(train, batch, impl, mesh)
    state = [params0, optimizer.init(params0)]
    if mesh is not None:
      state = list(jax.device_put(state, distributed.replicated(mesh)))
    start = time.perf_counter()
    compiled = epoch.lower(state[0], state[1], 0).compile()
    compile_s = time.perf_counter() - start

    def run(e, compiled=compiled, state=state):
      state[0], state[1], losses = compiled(state[0], state[1], e)
      return losses

    first[impl] = float(run(0)[0])
    epochs[impl] = dict(run=run, compile_s=compile_s)

  torch_run, torch_loss_diff, torch_skip = None, None, None
  try:
    torch_run, torch_first = torch_epoch_fn(params0, np.asarray(train), batch)
    s0 = training.epoch_batch(train, 0, jax.random.key(2), batch)
    torch_loss_diff = abs(torch_first(s0) - float(ar.mean_loss(params0, s0, impl='quadratic')))
    torch_run(0)
  except ImportError as e:
    torch_skip = str(e)

  authors_run = None
  if _AUTHORS.value:
    authors_run = authors_epoch_fn(_AUTHORS.value, np.asarray(train), batch, layers)
    authors_run(0)

  # Interleaved timing: one epoch of each path per round.
  paths = {k: v['run'] for k, v in epochs.items()}
  if torch_run is not None:
    paths['torch'] = torch_run
  if authors_run is not None:
    paths['authors'] = authors_run
  times = {k: [] for k in paths}
  for i in range(1, reps + 1):
    for name, run in paths.items():
      start = time.perf_counter()
      jax.block_until_ready(run(i))
      times[name].append(time.perf_counter() - start)
  ceiling = max(ceiling, matmul_gflops(1024 if quick else 2048))

  rate = {k: num // batch * batch / min(v) for k, v in times.items()}
  best = max(('quadratic', 'prefix'), key=lambda k: rate[k])
  gflops = {k: rate[k] * model_flop_per_sequence(t_max, d, layers, k) / 1e9
            for k in ('quadratic', 'prefix')}
  print(f'augmented model: {layers} layers of eq. (4) + LayerNorm, d = {d} (width {3 * d}), '
        f'T_max = {t_max}, batch {batch}, {num} sequences an epoch, Adam')
  print(f'float32 matmul ceiling: {ceiling:.1f} GFLOP/s')
  print(f'{"path":>10} {"epoch s (best)":>15} {"median":>8} {"seq/s":>9} {"GFLOP/s":>8} '
        f'{"of ceiling":>10} {"compile s":>9}')
  for name, t in times.items():
    comp = f'{epochs[name]["compile_s"]:9.1f}' if name in epochs else f'{"-":>9}'
    if name == 'authors':   # a larger model than the FLOP count's: no GFLOP/s
      flops = f'{"-":>8} {"-":>10}'
    else:
      gf = gflops.get(name, rate[name] * model_flop_per_sequence(t_max, d, layers) / 1e9)
      flops = f'{gf:8.2f} {gf / ceiling:10.3f}'
    print(f'{name:>10} {min(t):15.3f} {statistics.median(t):8.3f} {rate[name]:9.0f} {flops} '
          f'{comp}')
  precision = jax.config.jax_default_matmul_precision or 'default (TF32 on recent NVIDIA GPUs)'
  print(f'device: JAX on {jax.default_backend()} ({devices} device{"s" * (devices > 1)}), '
        f'matmul precision {precision}; torch on {"-" if torch_run is None else torch_device()}')
  if torch_run is None:
    print(f'torch skipped: {torch_skip} (pip install -e .[peers])')
  else:
    print(f'first-batch loss, torch - JAX: {torch_loss_diff:.2e}')
  summary = {
      'benchmark': 'ar_training', 'quick': quick, 'd': d, 't_max': t_max, 'layers': layers,
      'batch': batch, 'sequences': num, 'best_impl': best,
      'sequences_per_s': rate[best], 'ratio_to_ceiling': gflops[best] / ceiling,
      'matmul_gflops': ceiling,
      'quadratic_sequences_per_s': rate['quadratic'], 'prefix_sequences_per_s': rate['prefix'],
      'torch_sequences_per_s': rate.get('torch'),
      'speedup_vs_torch': rate[best] / rate['torch'] if 'torch' in rate else None,
      'torch_loss_diff': torch_loss_diff,
      'authors_sequences_per_s': rate.get('authors'),
      'speedup_vs_authors': rate[best] / rate['authors'] if 'authors' in rate else None,
      'peak_rss_mb': memory.peak_rss_mb(),
      'backend': jax.default_backend(), 'devices': devices,
  }
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
