"""Prop D.1 and Fig 4 of Cheng, Chen & Sra (2024): heads with different activations compose kernels.

  python -m experiments.functional_gd.multihead \
      --config=experiments/functional_gd/configs/multihead.py:quick --workdir=/tmp/fgd_multihead

By Prop D.1 a transformer whose heads carry the activations h~^s = K^s runs functional GD in the
RKHS of the composite kernel sum_s K^s(G^s u, G^s v), and so (D.1(B)) approaches the Bayes
estimator of a K^diamond Gaussian process with depth. Fig 4 trains three models at each depth —
1-head linear, 1-head exp and 2-head linear + exp (eq. (26)) — on K-GP prompts (n = 14) of
(a) K_lin, (b) K_exp and (c) the composite alpha K_lin(G1 u, G1 v) + (1 - alpha) K_exp(G2 u, G2 v),
and sees the 2-head model match the better single head on (a) and (b) and beat both on (c).

Each model is trained as one program over the grid (data kernel x depth x seed of Sigma,
`fgd_common.train_grid`; shallower models pad with identity layers), all three from the same data
key, so they see the same training prompts. The test prompts are also shared: one evaluation
draws them once and scores every model and the Bayes risk (13) on them, so the comparisons are
paired differences whose standard errors are those of the per-prompt differences.

Claims, at the largest depth (per-depth values are metrics), losses averaged over the seeds:
every multi-head model's loss on each pure kernel is at most (1 + match_margin) x the better
single-head model's (plus k_match stderr of the paired difference); on the composite kernel it is
below each single-head model's by at least k_beats stderr; every trained loss is at least the
Bayes risk within k_bayes stderr of the paired difference.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from experiments.functional_gd import fgd_common
from icl_jax import distributed, estimators, kernels, plotting, results
from icl_jax.samplers import kernel_gp

EXPERIMENT = 'functional_gd/multihead'
PURE = ('linear', 'relu', 'exp')   # data kernels a multi-head model should match, not beat


def validate(config) -> None:
  fgd_common.validate_problem(config)
  fgd_common.validate_train(config)
  common.positive_int(config, 'n')
  fgd_common.validate_kernels(config, 'data_kernels')
  common.positive_ints(config, 'depths')
  common.positive_ints(config, 'heads')
  models = config.models
  if isinstance(models, str) or not models or any(isinstance(m, str) for m in models):
    raise common.ConfigError(f'config.models={models!r}: need a tuple of models, each a tuple '
                             f'of activations (one per head) from {", ".join(kernels.ACTIVATIONS)}')
  if len(config.heads) != len(models):
    raise common.ConfigError(f'config.heads={tuple(config.heads)}: {len(config.heads)} head '
                             f'counts for {len(models)} models in config.models; need one each')
  for i, (acts, heads) in enumerate(zip(models, config.heads)):
    for name in acts:
      if name not in kernels.ACTIVATIONS:
        raise common.ConfigError(f'config.models[{i}]: unknown activation {name!r}; allowed: '
                                 f'{", ".join(kernels.ACTIVATIONS)}')
    if len(acts) != heads:
      raise common.ConfigError(f'config.models[{i}]={tuple(acts)}: {len(acts)} activations for '
                               f'config.heads[{i}]={heads} heads; need one per head')
  if not any(h == 1 for h in config.heads) or not any(h > 1 for h in config.heads):
    raise common.ConfigError(f'config.heads={tuple(config.heads)}: the claims compare multi-head '
                             'models with single-head ones; need at least one of each')
  if config.train.layers != max(config.depths):
    raise common.ConfigError(f'config.train.layers={config.train.layers}: must equal '
                             f'max(config.depths)={max(config.depths)} (the padded grid depth)')
  common.one_of(config, 'train.lr_schedule', ('cosine', 'constant'))
  common.positive_int(config, 'eval.num_prompts')
  common.positive_int(config, 'eval.chunk')
  common.multiple_of(config, 'eval.num_prompts', 'eval.chunk')
  for field in ('match_margin', 'k_match', 'k_beats', 'k_bayes'):
    common.positive_float(config, f'claims.{field}')


# --- the grid ----------------------------------------------------------------------------------

def grid(config) -> tuple[list, list]:
  """Specs and depths of the models every program trains: data kernel x depth x seed."""
  specs, depths = [], []
  for kernel in config.data_kernels:
    for depth in config.depths:
      for seed in range(config.num_seeds):
        specs.append(fgd_common.Spec(kernel, config.n, seed))
        depths.append(depth)
  return specs, depths


def index(config, kernel: str, depth: int) -> list:
  """Grid indices of (kernel, depth), one per seed."""
  k, l, s = (config.data_kernels.index(kernel), config.depths.index(depth), config.num_seeds)
  return [(k * len(config.depths) + l) * s + i for i in range(s)]


def model_name(activations) -> str:
  return '+'.join(activations)


def train_spec(config):
  """config.train as train_grid reads it, with lr an optax schedule when asked (optax.adam
  takes either; the schedule's count lives in the optimiser state, so a resumed run continues
  it)."""
  tc = config.train
  lr = (optax.cosine_decay_schedule(tc.lr, tc.steps) if tc.lr_schedule == 'cosine' else tc.lr)
  fields = ('batch_size', 'steps', 'resample_every', 'clip', 'init_scale', 'layers', 'log_every',
            'ckpt_every')
  return types.SimpleNamespace(lr=lr, **{f: tc[f] for f in fields})


# --- paired evaluation -------------------------------------------------------------------------

def paired_evaluation(key, params_list, activations_list, specs, covs, *, kernel_kw: dict,
                      layers_per_model, free_a: bool, num_prompts: int, chunk: int) -> dict:
  """Every model's test loss and the Bayes risk on the same prompts, with paired stderrs.

  As `fgd_common.evaluate` (float64, prompts drawn chunk by chunk from fold_in(key, c), the Bayes
  risk given X from K_+ recomputed in float64), but for several programs at once, so that the
  standard error of a difference of two programs' losses is that of the per-prompt differences.
  All specs share n (no padding).

  Returns:
    {'loss', 'loss_se', 'excess_se': [P, M]; 'diff_se': [P, P, M] stderr of loss_a - loss_b;
     'bayes', 'bayes_se': [M]}, P programs, M grid models.
  """
  layers_max = params_list[0].r.shape[1]
  lmasks = fgd_common.layer_masks(layers_per_model, layers_max)
  names = sorted({s.kernel for s in specs})
  groups = {name: np.asarray([m for m, s in enumerate(specs) if s.kernel == name])
            for name in names}

  @jax.jit
  def block(c):
    kp, cmask = fgd_common.sample_grid(jax.random.fold_in(key, c), specs, covs, batch=chunk,
                                       kernel_kw=kernel_kw)
    loss_PxMxB = jnp.stack([
        fgd_common.model_losses(p, kp.prompt, cmask, lmasks, activations=a, free_a=free_a)
        for p, a in zip(params_list, activations_list)]).astype(jnp.float64)
    kw64 = {k: (jnp.asarray(v, jnp.float64) if hasattr(v, 'shape') else v)
            for k, v in kernel_kw.items()}
    bayes_MxB = jnp.zeros(loss_PxMxB.shape[1:], jnp.float64)
    for name, ids in groups.items():
      gram = kernels.gram_fn(name, **kw64)

      def risk(xi_TxD, y_N, gram=gram):
        k_plus = kernel_gp.psd_part(gram(xi_TxD.astype(jnp.float64)))
        return estimators.bayes(k_plus, y_N.astype(jnp.float64))[1]

      bayes_MxB = bayes_MxB.at[ids].set(
          jax.vmap(jax.vmap(risk))(kp.xi[ids], kp.prompt.y[ids]))
    diff_PxPxMxB = loss_PxMxB[:, None] - loss_PxMxB[None, :]
    excess_PxMxB = loss_PxMxB - bayes_MxB[None]
    stats = lambda v: jnp.stack([jnp.sum(v, -1), jnp.sum(v * v, -1)])
    return (stats(loss_PxMxB), stats(bayes_MxB), stats(excess_PxMxB), stats(diff_PxPxMxB))

  with jax.enable_x64():
    totals = None
    for c in range(num_prompts // chunk):
      out = jax.tree.map(np.asarray, block(c))
      totals = out if totals is None else jax.tree.map(np.add, totals, out)

  def mean_se(t):
    mean = t[0] / num_prompts
    var = np.maximum(t[1] / num_prompts - mean**2, 0.0) * num_prompts / (num_prompts - 1)
    return mean, np.sqrt(var / num_prompts)

  (loss, loss_se), (bayes, bayes_se), (_, excess_se), (_, diff_se) = map(mean_se, totals)
  return {'loss': loss, 'loss_se': loss_se, 'excess_se': excess_se, 'diff_se': diff_se,
          'bayes': bayes, 'bayes_se': bayes_se}


# --- measure / check / run ---------------------------------------------------------------------

def measure(config, workdir):
  key = common.jax_key(config)
  k_train, k_eval = jax.random.split(jax.random.fold_in(key, 1))
  covs = fgd_common.covariances(config)
  kw = fgd_common.kernel_kwargs(config)
  specs, depths = grid(config)
  tc = train_spec(config)
  params_list, hists = [], []
  for acts in config.models:
    # The same key for every model: the same initial-key split, so the same training prompts.
    params, hist = fgd_common.train_grid(
        k_train, specs, covs, activations=acts, tc=tc, kernel_kw=kw, workdir=workdir,
        name=f'model_{model_name(acts)}', free_a=config.free_a, layers_per_model=depths,
        mesh=distributed.data_mesh())
    params_list.append(params)
    hists.append(hist)
  ev = paired_evaluation(k_eval, params_list, [tuple(a) for a in config.models], specs, covs,
                         kernel_kw=kw, layers_per_model=depths, free_a=config.free_a,
                         num_prompts=config.eval.num_prompts, chunk=config.eval.chunk)
  measured = {k: ev[k] for k in ('loss', 'loss_se', 'excess_se', 'diff_se')}
  measured['train_loss_final'] = np.asarray([h.loss[-1] for h in hists])
  theory = {'bayes': ev['bayes'], 'bayes_se': ev['bayes_se']}
  aux = {'params': params_list, 'hists': hists}
  return results.Evidence(measured=measured, theory=theory), aux


def seed_mean(values, ids):
  return float(np.mean(np.asarray(values)[..., ids]))


def seed_se(ses, ids):
  """stderr of the mean over seeds of independent per-seed means."""
  ses = np.asarray(ses)[..., ids]
  return float(np.sqrt(np.sum(ses**2)) / len(ids))


def check(config, ev):
  cl, mv, th = config.claims, ev.measured, ev.theory
  names = [model_name(a) for a in config.models]
  multi = [i for i, h in enumerate(config.heads) if h > 1]
  single = [i for i, h in enumerate(config.heads) if h == 1]
  loss, diff_se = np.asarray(mv['loss'], np.float64), np.asarray(mv['diff_se'], np.float64)
  bayes = np.asarray(th['bayes'], np.float64)
  claims, met = [], {}
  top = max(config.depths)
  for kernel in config.data_kernels:
    for depth in config.depths:
      ids = index(config, kernel, depth)
      met[f'bayes_{kernel}_L{depth}'] = seed_mean(bayes, ids)
      for i, name in enumerate(names):
        met[f'loss_{kernel}_L{depth}_{name}'] = seed_mean(loss[i], ids)
      for h in multi:
        for s in single:
          gap = seed_mean(loss[s] - loss[h], ids)
          met[f'z_{names[s]}_minus_{names[h]}_{kernel}_L{depth}'] = gap / seed_se(diff_se[s, h],
                                                                                  ids)
    ids = index(config, kernel, top)
    for h in multi:
      if kernel in PURE:
        best = min(single, key=lambda s: seed_mean(loss[s], ids))
        l_best, l_h = seed_mean(loss[best], ids), seed_mean(loss[h], ids)
        se = seed_se(diff_se[h, best], ids)
        met[f'ratio_{names[h]}_to_best_{kernel}'] = l_h / l_best
        tol = cl.match_margin + cl.k_match * se / l_best
        claims.append(results.Claim(
            f'Fig 4 / Prop D.1, {kernel} data, L = {top}: the {names[h]} model matches the better '
            f'single head ({names[best]}), one-sided (better is fine): '
            f'L_{names[h]} / L_{names[best]} - 1 <= {cl.match_margin:g} + {cl.k_match:g} x '
            f'stderr of the paired difference / L_{names[best]} (= {tol:.3g})',
            l_h / l_best - 1.0, 0.0, tol, 'at_most'))
      else:
        for s in single:
          z = seed_mean(loss[s] - loss[h], ids) / seed_se(diff_se[s, h], ids)
          claims.append(results.Claim(
              f'Fig 4(c) / Prop D.1, {kernel} data, L = {top}: the {names[h]} model beats the '
              f'1-head {names[s]} model: (L_{names[s]} - L_{names[h]}) / stderr of the paired '
              f'difference >= {cl.k_beats:g}', z, cl.k_beats, 0.0, 'at_least'))
  # Bayes is the floor: every model's paired excess, in stderrs, over the whole grid.
  excess_se = np.asarray(mv['excess_se'], np.float64)
  z_excess = (loss - bayes[None]) / np.maximum(excess_se, 1e-300)
  worst = np.unravel_index(np.argmin(z_excess), z_excess.shape)
  met['min_excess_z'] = float(z_excess[worst])
  specs, depths = grid(config)
  spec = specs[worst[1]]
  claims.append(results.Claim(
      f'every trained loss >= the Bayes risk (13) within {cl.k_bayes:g} stderr of the paired '
      f'difference (min (L - Bayes) / stderr over all {loss.size} models; the lowest is '
      f'{names[worst[0]]} on {spec.kernel}, L = {depths[worst[1]]})', float(z_excess[worst]),
      -cl.k_bayes, 0.0, 'at_least'))
  for i, name in enumerate(names):
    met[f'train_loss_final_{name}'] = float(np.asarray(mv['train_loss_final'])[i])
  return claims, met


def figures(config, ev, hists) -> dict:
  """Fig 4: log test loss vs layers, one panel per data kernel, the models and Bayes (black)."""
  names = [model_name(a) for a in config.models]
  loss, loss_se = np.asarray(ev.measured['loss']), np.asarray(ev.measured['loss_se'])
  bayes = np.asarray(ev.theory['bayes'])
  labels = {name: f'{h}-head {name}' for name, h in zip(names, config.heads)}
  curves, bands = {}, {}
  for kernel in config.data_kernels:
    title = {'composite': f'composite (alpha={config.kernel.alpha:g})'}.get(kernel, kernel)
    title = f'{title} data' + (' (Bayes risk 0: n > d)' if kernel == 'linear' and
                                config.n > config.d else '')
    curves[title], bands[title] = {}, {}
    for i, name in enumerate(names):
      mean = np.asarray([seed_mean(loss[i], index(config, kernel, L)) for L in config.depths])
      se = np.asarray([seed_se(loss_se[i], index(config, kernel, L)) for L in config.depths])
      curves[title][labels[name]] = mean
      bands[title][labels[name]] = (mean - 2 * se, mean + 2 * se)
    floor = np.asarray([seed_mean(bayes, index(config, kernel, L)) for L in config.depths])
    # The linear kernel's Bayes risk is 0 for n >= d (rounding: ~1e-16), off a log axis.
    curves[title]['Bayes'] = np.where(floor > 1e-8, floor, np.nan)
  fig4 = plotting.panels(np.asarray(config.depths), curves, xlabel='layers L',
                         ylabel='test ICL loss', bands=bands, logy=True,
                         styles={'Bayes': {'color': 'k', 'ls': '--'}},
                         title=f'Fig 4: loss vs layers, n = {config.n} (bands: +-2 stderr)')
  train = plotting.curves(np.arange(1, len(hists[0].loss) + 1),
                          {labels[n]: h.loss for n, h in zip(names, hists)}, xlabel='step',
                          ylabel='training loss (sum over the grid)', logy=True,
                          title='Training (each model: one program over the grid)')
  return {'figure4.png': fig4, 'train_loss.png': train}


def run(config, workdir) -> results.Run:
  evidence, aux = measure(config, workdir)
  claims, met = check(config, evidence)
  names = [model_name(a) for a in config.models]
  arrays = {'depths': np.asarray(config.depths), 'bayes': evidence.theory['bayes'],
            'bayes_se': evidence.theory['bayes_se'],
            **{k: evidence.measured[k] for k in ('loss', 'loss_se', 'excess_se', 'diff_se')}}
  for name, params, hist in zip(names, aux['params'], aux['hists']):
    arrays[f'train_loss_{name}'] = hist.loss
    for field in ('r', 'b', 'c'):
      arrays[f'params_{name}_{field}'] = np.asarray(getattr(params, field))
  return results.Run(metrics=met, claims=claims, arrays=arrays,
                     figures=figures(config, evidence, aux['hists']), evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=fgd_common.PAPER, reproduces='Prop D.1, Fig 4')
