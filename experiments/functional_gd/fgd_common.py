"""Shared parts of the functional-GD apps (Cheng, Chen & Sra 2024): config checks, Sigma per
seed, K-GP batches for a grid of models, training a grid as one program, and evaluation against
the Bayes estimator (13).

A grid is a list of `Spec(kernel, n, seed)`: the label kernel, the context length and the seed of
Sigma = U^T D U (Appendix H.1: U changes across seeds). Every model of a grid has the same
activations, layers and A-constraint, so the grid trains as one vmapped program: prompts of
different n are padded to the largest (`kernel_gp.pad_context`, the padded slots never act as
keys), and models with fewer layers than the grid's largest run the extra layers as identities
(`layer_mask`: r and A multiplied by 0, so those weights get no gradient).
"""

import os
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import common
from icl_jax import distributed, estimators, kernels, training
from icl_jax.models import kernel_attention as ka
from icl_jax.prompts import Prompt
from icl_jax.samplers import kernel_gp

PAPER = ('Cheng, Chen & Sra, Transformers Implement Functional Gradient Descent to Learn '
         'Non-Linear Functions In Context (ICML 2024)')


class Spec(NamedTuple):
  kernel: str   # label kernel of the K Gaussian process (kernels.KERNELS)
  n: int        # context length
  seed: int     # index of Sigma (covariances(config)[seed])


# --- config checks -----------------------------------------------------------------------------

def validate_problem(config) -> None:
  """d, covariance_diag, num_seeds and the kernel parameters (fields every app has)."""
  common.positive_int(config, 'd')
  common.positive_int(config, 'num_seeds')
  common.covariance_diag(config, 'covariance_diag', config.d)
  common.positive_float(config, 'kernel.bandwidth')
  if not 0.0 <= config.kernel.alpha <= 1.0:
    raise common.ConfigError(f'config.kernel.alpha={config.kernel.alpha}: must be in [0, 1]')
  for field in ('g1', 'g2'):
    g = getattr(config.kernel, field)
    if len(g) != config.d:
      raise common.ConfigError(f'config.kernel.{field}={tuple(g)}: needs d={config.d} entries '
                               '(the diagonal of G)')


def validate_kernels(config, field: str) -> None:
  """A non-empty tuple of label-kernel names."""
  names = common._get(config, field)
  if isinstance(names, str) or not names:
    raise common.ConfigError(f'config.{field}={names!r}: need a non-empty tuple of kernels from '
                             f'{", ".join(kernels.KERNELS)}')
  for name in names:
    if name not in kernels.KERNELS:
      raise common.ConfigError(f'config.{field}: unknown kernel {name!r}; allowed: '
                               f'{", ".join(kernels.KERNELS)}')


def validate_activations(config, field: str, heads: Optional[int] = None) -> None:
  """A non-empty tuple of activation names (one per head when heads is given)."""
  names = common._get(config, field)
  if isinstance(names, str) or not names:
    raise common.ConfigError(f'config.{field}={names!r}: need a non-empty tuple of activations '
                             f'from {", ".join(kernels.ACTIVATIONS)}')
  for name in names:
    if name not in kernels.ACTIVATIONS:
      raise common.ConfigError(f'config.{field}: unknown activation {name!r}; allowed: '
                               f'{", ".join(kernels.ACTIVATIONS)}')
  if heads is not None and len(names) != heads:
    raise common.ConfigError(f'config.{field}={tuple(names)}: {len(names)} activations for '
                             f'{heads} heads; need one per head')


def validate_train(config) -> None:
  """config.train: sizes, steps and optimiser."""
  for field in ('batch_size', 'steps', 'resample_every', 'log_every', 'ckpt_every', 'layers'):
    common.positive_int(config, f'train.{field}')
  common.multiple_of_devices(config, 'train.batch_size')   # sharded over every device
  for field in ('lr', 'clip', 'init_scale'):
    common.positive_float(config, f'train.{field}')
  common.multiple_of(config, 'train.steps', 'train.log_every')
  common.multiple_of(config, 'train.ckpt_every', 'train.log_every')


# --- Sigma, kernels, batches -------------------------------------------------------------------

def covariances(config) -> kernel_gp.Covariance:
  """Sigma = U^T D U for each of config.num_seeds seeds, stacked: [S, d, d] per field."""
  key = jax.random.fold_in(common.jax_key(config), 0)
  return jax.vmap(lambda s: kernel_gp.covariance(jax.random.fold_in(key, s),
                                                 config.covariance_diag))(
      jnp.arange(config.num_seeds))


def kernel_kwargs(config) -> dict:
  """kernels.gram's parameters from config.kernel (bandwidth; composite alpha, G1, G2)."""
  k = config.kernel
  return dict(bandwidth=k.bandwidth, alpha=k.alpha, g1=jnp.diag(jnp.asarray(k.g1, jnp.float32)),
              g2=jnp.diag(jnp.asarray(k.g2, jnp.float32)))


def _gram_switch(names: Sequence[str], kernel_kw: dict):
  """gram(index, xi): the Gram matrix of names[index] (a lax.switch, so one trace serves all)."""
  fns = [kernels.gram_fn(name, **kernel_kw) for name in names]
  return lambda i, xi: jax.lax.switch(i, [lambda u, f=f: f(u) for f in fns], xi)


def sample_grid(key: jax.Array, specs: Sequence[Spec], covs: kernel_gp.Covariance, *,
                batch: int, kernel_kw: dict) -> tuple[kernel_gp.KernelPrompt, jax.Array]:
  """`batch` K-GP prompts per model, padded to the grid's largest n.

  Returns:
    (KernelPrompt with leading axes [M, batch] (xi and k_plus padded too: zeros outside the
    model's n + 1 points, the query at index n_max), context masks [M, n_max]).
    Model m's prompts use the key fold_in(key, m).
  """
  names = sorted({s.kernel for s in specs})
  gram = _gram_switch(names, kernel_kw)
  n_max = max(s.n for s in specs)
  out = [None] * len(specs)
  for n in sorted({s.n for s in specs}):
    ids = [m for m, s in enumerate(specs) if s.n == n]
    k_idx = jnp.asarray([names.index(specs[m].kernel) for m in ids])
    seeds = jnp.asarray([specs[m].seed for m in ids])

    def one(m, ki, seed, n=n):
      cov = jax.tree.map(lambda a: a[seed], covs)
      keys = jax.random.split(jax.random.fold_in(key, m), batch)
      kp = jax.vmap(lambda k: kernel_gp.sample(k, n=n, cov=cov, gram=lambda u: gram(ki, u)))(keys)
      return _pad(kp, n, n_max)

    group = jax.vmap(one)(jnp.asarray(ids), k_idx, seeds)
    for j, m in enumerate(ids):
      out[m] = jax.tree.map(lambda a: a[j], group)
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *out)
  masks = jnp.asarray([np.arange(n_max) < s.n for s in specs])
  return stacked, masks


def _pad(kp: kernel_gp.KernelPrompt, n: int, n_max: int) -> kernel_gp.KernelPrompt:
  """Pads a batch of prompts with n context points to n_max (query kept last)."""
  pad = n_max - n
  p = kp.prompt
  prompt = Prompt(x=jnp.pad(p.x, ((0, 0), (0, pad), (0, 0))), y=jnp.pad(p.y, ((0, 0), (0, pad))),
                  x_query=p.x_query, y_query=p.y_query)
  xi = jnp.concatenate([jnp.pad(kp.xi[:, :n], ((0, 0), (0, pad), (0, 0))), kp.xi[:, n:]], 1)
  k = jnp.pad(kp.k_plus[:, :n, :n], ((0, 0), (0, pad + 1), (0, pad + 1)))  # [n_max + 1]^2
  k = k.at[:, :n, n_max].set(kp.k_plus[:, :n, n]).at[:, n_max, :n].set(kp.k_plus[:, n, :n])
  k = k.at[:, n_max, n_max].set(kp.k_plus[:, n, n])
  return kernel_gp.KernelPrompt(prompt, xi, k)


# --- models of a grid --------------------------------------------------------------------------

def layer_masks(layers_per_model: Sequence[int], layers_max: int) -> jax.Array:
  """[M, L_max] 1.0 for the layers a model has, 0.0 for the identity layers it pads with."""
  return jnp.asarray([np.arange(layers_max) < L for L in layers_per_model], jnp.float32)


def masked(params: ka.Params, mask_L: jax.Array) -> ka.Params:
  """params with r and A zeroed on masked layers: those layers are identities."""
  return params._replace(r=params.r * mask_L[:, None], a=params.a * mask_L[:, None, None, None])


def model_losses(params: ka.Params, prompts: Prompt, ctx_masks, lmasks, *, activations,
                 free_a: bool) -> jax.Array:
  """[M, B] in-context losses (5) of each model on its own prompts."""

  def per_model(p, pr, cm, lm):
    p = masked(p, lm)
    return jax.vmap(lambda q: ka.loss(p, q, activations=activations, context_mask=cm,
                                      free_a=free_a))(pr)

  return jax.vmap(per_model)(params, prompts, ctx_masks, lmasks)


def init_grid(key: jax.Array, num_models: int, *, d: int, layers: int, heads: int, scale: float,
              free_a: bool) -> ka.Params:
  """Independent N(0, scale^2) initialisations, model m from fold_in(key, m)."""
  return jax.vmap(lambda m: ka.init(jax.random.fold_in(key, m), d=d, layers=layers, heads=heads,
                                    scale=scale, free_a=free_a))(jnp.arange(num_models))


def train_grid(key: jax.Array, specs: Sequence[Spec], covs, *, activations: Sequence[str],
               tc, kernel_kw: dict, workdir: str, name: str, free_a: bool = True,
               layers_per_model: Optional[Sequence[int]] = None,
               keep_trajectory: bool = False,
               mesh: Optional[jax.sharding.Mesh] = None) -> tuple[ka.Params, training.History]:
  """Trains one model per spec as one program (Appendix H.1's recipe).

  Adam with a per-model global-norm gradient clip (tc.clip), a minibatch of tc.batch_size K-GP
  prompts per model, redrawn every tc.resample_every steps (the paper: 30000 every 10), split
  over `mesh` (`distributed.shard_batch` on the prompt axis; the state replicated on it).
  Checkpoints under workdir/name; History.loss is the sum of the models' losses.

  Args:
    key: PRNG key (init and data keys derive from it).
    specs: the grid.
    covs: `covariances(config)`.
    activations: one per head (tc.layers layers, len(activations) heads).
    tc: config.train (batch_size, steps, resample_every, lr, clip, init_scale, layers,
      log_every, ckpt_every).
    kernel_kw: `kernel_kwargs(config)`.
    workdir, name: checkpoints go to workdir/name.
    free_a: False: A_l = 0 (Theorem 4.5).
    layers_per_model: layers of each model (<= tc.layers); default all tc.layers.
    keep_trajectory: keep params every tc.log_every steps (Figs 3, 5, 6).
    mesh: `distributed.data_mesh()` for data parallelism, or None.
  """
  activations = tuple(activations)
  d = covs.sigma.shape[-1]
  k_init, k_data = jax.random.split(key)
  num = len(specs)
  lmasks = layer_masks(layers_per_model or [tc.layers] * num, tc.layers)
  params = jax.jit(lambda k: init_grid(k, num, d=d, layers=tc.layers, heads=len(activations),
                                       scale=tc.init_scale, free_a=free_a))(k_init)

  def sample_fn(k):
    kp, cmask = sample_grid(k, specs, covs, batch=tc.batch_size, kernel_kw=kernel_kw)
    prompts = kp.prompt
    if mesh is not None:
      # Drawn whole on every device, split only in the loss: the labels V sqrt|L| g take the
      # signs of eigh's eigenvectors, which change with how a batch is split, so a draw split
      # over the devices would not be the one-device draw (same law, other numbers).
      prompts = jax.lax.with_sharding_constraint(prompts, distributed.replicated(mesh))
    return prompts, cmask

  def loss_fn(p, batch):
    prompts, cmask = batch
    prompts = distributed.shard_batch(prompts, mesh, axis=1)   # [M, batch, ...]
    losses = model_losses(p, prompts, cmask, lmasks, activations=activations, free_a=free_a)
    return jnp.sum(jnp.mean(losses, axis=1))

  optimizer = training.per_model(optax.chain(optax.clip_by_global_norm(tc.clip),
                                             optax.adam(tc.lr)))
  logging.info('training %d models (%s attention, %d layers, A %s) as one program',
               num, '+'.join(activations), tc.layers, 'free' if free_a else '= 0')
  return training.fit(loss_fn, params, optimizer, key=k_data, max_steps=tc.steps,
                      log_every=tc.log_every, ckpt_every=tc.ckpt_every,
                      workdir=os.path.join(workdir, name), keep_trajectory=keep_trajectory,
                      sample_fn=sample_fn, resample_every=tc.resample_every, mesh=mesh)


# --- evaluation --------------------------------------------------------------------------------

class Evaluation(NamedTuple):
  """Per model, over the same test prompts (paired):
  loss, loss_se: mean and standard error of (TF + y_query)^2;
  bayes, bayes_se: mean and standard error of the Bayes risk given X (conditional variance of
    y_query under K_+, eq. (13)/(25)), the information-theoretic floor;
  excess, excess_se: mean and standard error of the per-prompt difference of the two."""
  loss: np.ndarray
  loss_se: np.ndarray
  bayes: np.ndarray
  bayes_se: np.ndarray
  excess: np.ndarray
  excess_se: np.ndarray


def bayes_pred_var(kp: kernel_gp.KernelPrompt, ctx_masks, kernel_idx, gram
                   ) -> tuple[jax.Array, jax.Array]:
  """[M, B] Bayes predictions (13) and risks given X (conditional variances, eq. (25)) of
  padded prompts: K_+ recomputed in float64 from xi.

  The caller enables x64. The Gram of the padded points is zeroed on the padded rows and
  columns before taking K_+ (K_+ of a block-diagonal matrix is that of its blocks, so the
  model's n + 1 points get exactly their own K_+), then the padded diagonal is set to 1: those
  rows decouple from the context and the query, and the Schur complement is the unpadded one.
  """

  def per_model(xi_BxTxD, y_BxN, ctx_N, ki):
    tmask = jnp.concatenate([ctx_N, jnp.ones((1,), bool)])
    both = tmask[:, None] & tmask[None, :]

    def one(xi_TxD, y_N):
      k = jnp.where(both, gram(ki, xi_TxD.astype(jnp.float64)), 0.0)
      k = kernel_gp.psd_part(k) + jnp.diag(jnp.where(tmask, 0.0, 1.0))
      return estimators.bayes(k, jnp.where(ctx_N, y_N.astype(jnp.float64), 0.0))

    return jax.vmap(one)(xi_BxTxD, y_BxN)

  return jax.vmap(per_model)(kp.xi, kp.prompt.y, ctx_masks, kernel_idx)


def evaluate(key: jax.Array, params: ka.Params, specs: Sequence[Spec], covs, *,
             activations: Sequence[str], kernel_kw: dict, num_prompts: int, chunk: int,
             free_a: bool = True, layers_per_model: Optional[Sequence[int]] = None
             ) -> Evaluation:
  """Each model's test loss and the Bayes risk on the same fresh prompts (paired).

  num_prompts per model, drawn chunk at a time (num_prompts a multiple of chunk), chunk c from
  fold_in(key, c); model m's prompts are the same whatever the rest of the grid.
  """
  if num_prompts % chunk:
    raise ValueError(f'num_prompts={num_prompts} must be a multiple of chunk={chunk}')
  activations = tuple(activations)
  layers_max = params.r.shape[1]
  lmasks = layer_masks(layers_per_model or [layers_max] * len(specs), layers_max)
  names = sorted({s.kernel for s in specs})
  kernel_idx = jnp.asarray([names.index(s.kernel) for s in specs])

  @jax.jit
  def block(c):
    kp, cmask = sample_grid(jax.random.fold_in(key, c), specs, covs, batch=chunk,
                            kernel_kw=kernel_kw)
    loss = model_losses(params, kp.prompt, cmask, lmasks, activations=activations,
                        free_a=free_a).astype(jnp.float64)
    kw64 = {k: (v.astype(jnp.float64) if hasattr(v, 'astype') else v)
            for k, v in kernel_kw.items()}
    bayes = bayes_pred_var(kp, cmask, kernel_idx, _gram_switch(names, kw64))[1]
    stats = lambda v: jnp.stack([jnp.sum(v, 1), jnp.sum(v * v, 1)])
    return jnp.stack([stats(loss), stats(bayes), stats(loss - bayes)])

  with jax.enable_x64():
    total = sum(np.asarray(block(c)) for c in range(num_prompts // chunk))
  mean = total[:, 0] / num_prompts
  var = np.maximum(total[:, 1] / num_prompts - mean**2, 0.0) * num_prompts / (num_prompts - 1)
  se = np.sqrt(var / num_prompts)
  return Evaluation(loss=mean[0], loss_se=se[0], bayes=mean[1], bayes_se=se[1], excess=mean[2],
                    excess_se=se[2])
