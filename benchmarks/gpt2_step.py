"""Benchmark: one Adam training step of the GPT2 regressor at Garg et al.'s size, JAX vs PyTorch.

The model is the library's `icl_jax.models.transformer` GargRegressor at the size Garg et al.
(2022) and Zhang, Frei & Bartlett (2023, Appendix E) train: 12 layers, width 256, 8 heads, learned
positions, d = 20 and 41 points (82 tokens), batch 64. One step is the loss (Garg's: the mean
over the batch and the 41 positions of (pred_i - y_i)^2), its gradient and an `optax.adam(1e-4)`
update, jitted as one program with the train state donated, as the library's training runs it.

What a user would otherwise run is Garg et al.'s PyTorch model: HuggingFace `GPT2Model` with the
same sizes (dropout off, no KV cache), a linear read-in and a linear read-out at the x tokens,
and `torch.optim.Adam(lr=1e-4)`. When torch and transformers are installed (the optional `peers`
extra: `pip install -e .[peers]`) the benchmark builds that model here, loads it with the same
initial parameters as the JAX model (their predictions must agree to float32 rounding; the
difference is reported), and times its full step (zero_grad, forward, loss, backward,
optimizer.step) on the same batch with `torch.set_num_threads(os.cpu_count())`. The two are timed
side by side, one step of each in turn, so both see the same load (a busy machine still slows
torch's OpenMP threads far more than XLA's: see benchmarks/README.md).
Without torch the table says 'torch not installed: skipped' and the torch figures are null.

Ceiling: a jitted float32 2048 x 2048 matmul (GFLOP/s), measured before and after the steps in the
same run (best of both). `ratio_to_ceiling` is the JAX step's model GFLOP/s over it.

Timing: the JAX step is lowered and compiled first (compile time reported apart), each framework
runs one warm-up step, then `--reps` timed steps each; the best is reported and the median shown
beside it (the machine is shared: the best is the least disturbed step).

  .venv/bin/python -m benchmarks.gpt2_step            # the paper's size, ~1 min idle
  .venv/bin/python -m benchmarks.gpt2_step --quick    # small sizes, for the test (10-25 s)

The last line of stdout is one JSON object with the headline figures; see benchmarks/README.md.
"""

import functools
import json
import math
import os
import statistics
import time
from typing import Callable, Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import memory
from icl_jax import distributed
from icl_jax.models import transformer

_QUICK = flags.DEFINE_bool('quick', False, 'small sizes (for the test): every figure, in seconds')
_REPS = flags.DEFINE_integer('reps', None, 'timed steps per framework, best reported '
                             '(default 5; 2 with --quick)')
_BATCH = flags.DEFINE_integer('batch', None, 'sequences per step (default 64; 8 with --quick)')
_POINTS = flags.DEFINE_integer('points', None, '(x, y) pairs per sequence (default 41; 11 with '
                               '--quick)')
_D = flags.DEFINE_integer('d', None, 'covariate dimension (default 20; 5 with --quick)')
_DEPTH = flags.DEFINE_integer('depth', None, 'layers (default 12; 2 with --quick)')
_WIDTH = flags.DEFINE_integer('width', None, 'model width (default 256; 64 with --quick)')
_HEADS = flags.DEFINE_integer('heads', None, 'attention heads (default 8; 4 with --quick)')
_TORCH = flags.DEFINE_bool('torch', True, 'time the PyTorch peer when torch is installed')
_TORCH_ATTN = flags.DEFINE_string('torch_attn', None,
                                  "transformers' attn_implementation for the peer ('sdpa', "
                                  "'eager'; default: transformers' own default)")

LR = 1e-4
MATMUL_SIZE = 2048
SWITCH_PAUSE_S = 0.2   # between the two frameworks' steps: lets the other's idle workers sleep


# --- sizes and FLOP count -------------------------------------------------------------------------

def sizes() -> dict:
  quick = _QUICK.value
  pick = lambda flag, full, small: flag.value if flag.value is not None else (small if quick
                                                                                else full)
  return dict(batch=pick(_BATCH, 64, 8), points=pick(_POINTS, 41, 11), d=pick(_D, 20, 5),
              depth=pick(_DEPTH, 12, 2), width=pick(_WIDTH, 256, 64), heads=pick(_HEADS, 8, 4))


def model_flop_per_step(batch: int, points: int, d: int, depth: int, width: int) -> float:
  """Matmul FLOPs of one training step of the library's model (forward + backward).

  Convention: a (p x q)(q x r) product is 2 p q r FLOPs; layer norms, GELU, softmax, residual
  adds and Adam count 0; the backward pass is 2x the forward (the usual value_and_grad ~ 3x
  forward rule). It counts what the library computes: every block's queries at all T = 2 n tokens
  except the last block's, which are the n x tokens the loss reads (its keys and values still
  cover all T); attention scores and the weighted sum count every (query, key) pair, the masked
  half included, as computed. The dense layers alone at all T tokens in every block,
  24 B T C^2 per block, are 297 GFLOP forward + backward at the paper's size; this count is 303.
  """
  t, c = 2 * points, width
  per_query = 2 * c * c + 2 * c * 4 * c + 2 * 4 * c * c           # c_proj, c_fc, mlp_proj
  attention = lambda q: 2 * 2 * q * t * c                           # q k^T and weights @ v
  block = lambda q: batch * (2 * t * c * 3 * c + q * per_query + attention(q))
  forward = (batch * t * 2 * d * c                                   # read-in
             + (depth - 1) * block(t) + block(points)
             + batch * points * 2 * c)                               # read-out
  return 3.0 * forward


# --- measurement helpers --------------------------------------------------------------------------

def matmul_gflops(size: int, reps: int) -> float:
  """GFLOP/s of a jitted float32 size x size matmul, best of max(reps, 3) after a warm-up."""
  ka, kb = jax.random.split(jax.random.key(1))
  a = jax.random.normal(ka, (size, size), jnp.float32)
  b = jax.random.normal(kb, (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  best = math.inf
  for _ in range(max(reps, 3)):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best / 1e9


def make_batch(batch: int, points: int, d: int) -> tuple[np.ndarray, np.ndarray]:
  """Garg's noiseless linear regression: x ~ N(0, I_d), y_i = <w, x_i>, w ~ N(0, I_d) per row."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, points, d)).astype(np.float32)
  w = rng.standard_normal((batch, d)).astype(np.float32)
  return x, np.einsum('bnd,bd->bn', x, w).astype(np.float32)


# --- the JAX step ---------------------------------------------------------------------------------

class JaxStep:
  """The library's model and an optax Adam step, jitted as one program with the state donated."""

  def __init__(self, sz: dict, x: np.ndarray, y: np.ndarray):
    self.model = transformer.regressor(depth=sz['depth'], width=sz['width'], heads=sz['heads'],
                                       positions='learned', max_points=sz['points'])
    # Jitted: flax's init and apply run op by op otherwise (seconds at --quick's size).
    self.params = jax.jit(lambda key: transformer.init(self.model, key, sz['d']))(
        jax.random.key(0))
    self.optimizer = optax.adam(LR)
    self.x, self.y = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(params, x_BxNxD, y_BxN):
      pred_BxN = transformer.apply(self.model, params, x_BxNxD, y_BxN)
      return jnp.mean(jnp.square(pred_BxN - y_BxN))

    def step(state, x_BxNxD, y_BxN):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, x_BxNxD, y_BxN)
      updates, opt_state = self.optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    # A copy of the initial params: the donated state must not delete `self.params`.
    self.state = (jax.tree.map(jnp.array, self.params), self.optimizer.init(self.params))
    self.devices = jax.device_count()
    if self.devices > 1:
      # Several devices (e.g. XLA_FLAGS=--xla_force_host_platform_device_count=2 on a CPU): the
      # batch split over them, the state replicated, as gpt2_covariate_shift trains.
      mesh = distributed.data_mesh()
      self.x, self.y = jax.device_put((self.x, self.y), distributed.batch_sharding(mesh))
      self.state = jax.device_put(self.state, distributed.replicated(mesh))
    self.jitted = jax.jit(step, donate_argnums=0)
    start = time.perf_counter()
    self.jitted.lower(self.state, self.x, self.y).compile()
    self.compile_s = time.perf_counter() - start
    self.num_params = sum(p.size for p in jax.tree.leaves(self.params))

  def predict(self) -> np.ndarray:
    """Predictions [B, N] at the initial params."""
    return np.asarray(jax.jit(functools.partial(transformer.apply, self.model))(
        self.params, self.x, self.y))

  def __call__(self) -> float:
    """One training step; returns the loss before it (waits for the step to finish)."""
    self.state, loss = self.jitted(self.state, self.x, self.y)
    jax.block_until_ready(self.state)
    return float(loss)


# --- the PyTorch peer -----------------------------------------------------------------------------

def _torch_or_none():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return torch, transformers


class TorchStep:
  """Garg et al.'s model in PyTorch (HF GPT2Model), the same params and batch, Adam(lr=1e-4)."""

  def __init__(self, sz: dict, x: np.ndarray, y: np.ndarray, jax_params, attn: Optional[str]):
    torch, transformers = _torch_or_none()
    torch.set_num_threads(os.cpu_count() or 1)
    self.torch = torch
    nn = torch.nn
    kwargs = {} if attn is None else dict(attn_implementation=attn)
    config = transformers.GPT2Config(
        n_positions=2 * sz['points'], n_embd=sz['width'], n_layer=sz['depth'],
        n_head=sz['heads'], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
        **kwargs)
    d, width = sz['d'], sz['width']

    class GargModel(nn.Module):
      """Read-in, GPT2 on inputs_embeds, read-out at the x tokens (written for this benchmark)."""

      def __init__(self):
        super().__init__()
        self.read_in = nn.Linear(d, width)
        self.backbone = transformers.GPT2Model(config)
        self.read_out = nn.Linear(width, 1)

      def forward(self, x_BxNxD, y_BxN):
        b, n, _ = x_BxNxD.shape
        y_tok = torch.cat([y_BxN[..., None], x_BxNxD.new_zeros(b, n, d - 1)], dim=-1)
        z_BxTxD = torch.stack([x_BxNxD, y_tok], dim=2).reshape(b, 2 * n, d)
        h = self.backbone(inputs_embeds=self.read_in(z_BxTxD)).last_hidden_state
        return self.read_out(h[:, ::2])[..., 0]

    self.model = GargModel()
    # transformers' resolved choice ('sdpa' by default in 5.x); it has no public accessor.
    config_ = self.model.backbone.config
    self.attn_implementation = config_._attn_implementation  # pylint: disable=protected-access
    self._load(jax_params)
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
    self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
    self.num_params = sum(p.numel() for name, p in self.model.named_parameters()
                          if not name.startswith('backbone.wte'))   # token embeddings: unused

  def _load(self, jax_params) -> None:
    """Copies the JAX params in (HF's Conv1D weights are [in, out], like a flax kernel)."""
    p = jax.tree.map(lambda a: self.torch.from_numpy(np.array(a)), jax_params)
    state = {'read_in.weight': p['read_in']['kernel'].T, 'read_in.bias': p['read_in']['bias'],
             'read_out.weight': p['read_out']['kernel'].T, 'read_out.bias': p['read_out']['bias'],
             'backbone.wpe.weight': p['backbone']['wpe'],
             'backbone.ln_f.weight': p['backbone']['ln_f']['scale'],
             'backbone.ln_f.bias': p['backbone']['ln_f']['bias']}
    names = {'ln_1': 'ln_1', 'ln_2': 'ln_2', 'c_attn': 'attn.c_attn', 'c_proj': 'attn.c_proj',
             'c_fc': 'mlp.c_fc', 'mlp_proj': 'mlp.c_proj'}
    for i in range(self.model.backbone.config.n_layer):
      block = p['backbone'][f'h_{i}']
      for ours, theirs in names.items():
        weight = block[ours]['scale'] if ours.startswith('ln') else block[ours]['kernel']
        state[f'backbone.h.{i}.{theirs}.weight'] = weight
        state[f'backbone.h.{i}.{theirs}.bias'] = block[ours]['bias']
    missing = set(state) - set(self.model.state_dict())
    if missing:
      raise KeyError(f'no such torch parameters: {sorted(missing)}')
    result = self.model.load_state_dict(state, strict=False)
    unloaded = [k for k in result.missing_keys if not k.startswith('backbone.wte')]
    if unloaded:   # token embeddings are never read (inputs_embeds); all else must be ours
      raise KeyError(f'torch parameters left at their own init: {unloaded}')

  def predict(self) -> np.ndarray:
    with self.torch.no_grad():
      return self.model(self.x, self.y).numpy()

  def __call__(self) -> float:
    """One full training step; returns the loss before it."""
    self.optimizer.zero_grad()
    loss = self.torch.mean(self.torch.square(self.model(self.x, self.y) - self.y))
    loss.backward()
    self.optimizer.step()
    return loss.item()


# --- main -----------------------------------------------------------------------------------------

def _time_interleaved(steps: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
  """Seconds of each step, one of each in turn, `reps` rounds (warm-ups done by the caller)."""
  times = {name: [] for name in steps}
  for _ in range(reps):
    for name, step in steps.items():
      if len(steps) > 1:
        time.sleep(SWITCH_PAUSE_S)
      start = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - start)
  return times


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  quick = _QUICK.value
  sz = sizes()
  if sz['width'] % sz['heads']:
    raise app.UsageError(f'--width={sz["width"]} must be a multiple of --heads={sz["heads"]}')
  if sz['batch'] % jax.device_count():
    raise app.UsageError(f'--batch={sz["batch"]} must be a multiple of the device count '
                         f'{jax.device_count()}')
  reps = _REPS.value or (2 if quick else 5)
  matmul_size = 512 if quick else MATMUL_SIZE
  x, y = make_batch(sz['batch'], sz['points'], sz['d'])
  wall_start = time.perf_counter()

  mm1 = matmul_gflops(matmul_size, reps)
  jax_step = JaxStep(sz, x, y)
  # The JAX step's peak RSS: the warm-up step alone, before any torch allocation.
  rss_before_mb = memory.proc_status_kib('VmRSS') / 1024.0
  peak_reset = memory.reset_peak_rss()
  first_loss = jax_step()
  peak_rss_mb = memory.peak_rss_mb()

  steps: dict[str, Callable[[], float]] = {'jax': jax_step}
  torch_step, torch_note, torch_diff, torch_first_loss = None, '', None, None
  if not _TORCH.value:
    torch_note = 'torch peer: off (--notorch)'
  elif _torch_or_none() is None:
    torch_note = 'torch not installed: skipped (pip install -e .[peers] to time the peer)'
  else:
    torch_step = TorchStep(sz, x, y, jax_step.params, _TORCH_ATTN.value)
    torch_diff = float(np.max(np.abs(torch_step.predict() - jax_step.predict())))
    torch_rss_before_mb = memory.proc_status_kib('VmRSS') / 1024.0
    memory.reset_peak_rss()
    torch_first_loss = torch_step()
    torch_step_mb = memory.peak_rss_mb() - torch_rss_before_mb
    steps['torch'] = torch_step

  times = _time_interleaved(steps, reps)
  mm2 = matmul_gflops(matmul_size, reps)
  matmul = max(mm1, mm2)
  wall = time.perf_counter() - wall_start

  best = {name: min(t) for name, t in times.items()}
  median = {name: statistics.median(t) for name, t in times.items()}
  flop = model_flop_per_step(sz['batch'], sz['points'], sz['d'], sz['depth'], sz['width'])
  gflops = flop / best['jax'] / 1e9
  speedup = best['torch'] / best['jax'] if torch_step else None

  tokens = 2 * sz['points']
  print(f'GPT2 regressor training step: {sz["depth"]} layers, width {sz["width"]}, '
        f'{sz["heads"]} heads, d = {sz["d"]}, {sz["points"]} points ({tokens} tokens), '
        f'batch {sz["batch"]}, Adam; best of {reps} timed steps')
  print(f'jax {jax.__version__}, {jax.devices()[0].platform} backend ({jax_step.devices} '
        f'device{"s" * (jax_step.devices > 1)}, the batch split over them), {os.cpu_count()} CPUs, '
        f'load average {os.getloadavg()[0]:.2f} at the end; wall time {wall:.0f} s')
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  print()
  print(f'Ceiling: float32 matmul {matmul_size}x{matmul_size}  {matmul:8.1f} GFLOP/s   '
        f'(before / after the steps: {mm1:.1f}, {mm2:.1f})')
  print(f'Model: {jax_step.num_params:,} params, {flop / 1e9:.1f} GFLOP a step (matmuls, '
        'forward + backward)')
  print()
  print(f'  {"step":8s} {"s/step":>8s} {"median":>8s} {"steps/s":>8s} {"GFLOP/s":>8s} '
        f'{"/ matmul":>9s} {"compile s":>9s} {"loss 0":>9s}')
  print(f'  {"jax":8s} {best["jax"]:8.3f} {median["jax"]:8.3f} {1 / best["jax"]:8.3f} '
        f'{gflops:8.1f} {gflops / matmul:9.1%} {jax_step.compile_s:9.1f} {first_loss:9.5f}')
  if torch_step:
    torch_gflops = flop / best['torch'] / 1e9
    print(f'  {"torch":8s} {best["torch"]:8.3f} {median["torch"]:8.3f} {1 / best["torch"]:8.3f} '
          f'{torch_gflops:8.1f} {torch_gflops / matmul:9.1%} {"":>9s} {torch_first_loss:9.5f}')
    print(f'  torch {torch_step.torch.__version__}, transformers '
          f'{_torch_or_none()[1].__version__}, attention {torch_step.attn_implementation!r}, '
          f'{torch_step.torch.get_num_threads()} threads; {torch_step.num_params:,} params used')
    print(f'  same params, same batch: predictions differ by at most {torch_diff:.2e}')
    print(f'  speedup vs torch (best / best): {speedup:.2f} x   (median / median: '
          f'{median["torch"] / median["jax"]:.2f} x)')
  else:
    print(f'  {torch_note}')
  print()
  print(f'Memory: peak RSS {peak_rss_mb:.0f} MiB during the JAX warm-up step, '
        f'{peak_rss_mb - rss_before_mb:+.0f} MiB over the RSS before it'
        + ('' if peak_reset else ' (lifetime peak: could not reset it)'))
  if torch_step:
    print(f'  the torch warm-up step: {torch_step_mb:+.0f} MiB over the RSS before it')
  print()

  summary = dict(
      benchmark='gpt2_step',
      s_per_step=best['jax'],
      steps_per_s=1.0 / best['jax'],
      median_s_per_step=median['jax'],
      compile_s=jax_step.compile_s,
      ratio_to_ceiling=gflops / matmul,
      matmul_gflops=matmul,
      model_gflop_per_step=flop / 1e9,
      achieved_gflops=gflops,
      peak_rss_mb=peak_rss_mb,
      torch_s_per_step=best['torch'] if torch_step else None,
      speedup_vs_torch=speedup,
      torch_max_abs_diff=torch_diff,
      params=jax_step.num_params,
      batch=sz['batch'],
      points=sz['points'],
      tokens=tokens,
      d=sz['d'],
      depth=sz['depth'],
      width=sz['width'],
      heads=sz['heads'],
      devices=jax_step.devices,
  )
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
