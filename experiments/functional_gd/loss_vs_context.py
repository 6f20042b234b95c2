"""Figure 1 and Proposition 3.4 of Cheng, Chen & Sra (2024): in-context loss against context
length n, for each label kernel K (eq. (11)) and attention activation h~ (eq. (12)).

  python -m experiments.functional_gd.loss_vs_context \
      --config=experiments/functional_gd/configs/loss_vs_context.py:quick --workdir=/tmp/lvc

For each activation, one grid of 3-layer transformers (eq. (3), A_l free, Appendix H.1) is
trained as one program (`fgd_common.train_grid`): a model per (label kernel, n, seed). Every
model is then scored on fresh K-GP test prompts, the same prompts for every activation, beside
the Bayes risk given X (the conditional variance of eq. (25) under K_+, the floor of eq. (13)),
so that the differences loss - Bayes and loss(h~) - loss(h~') are paired and their standard
errors small.

Claims (tolerances in the config): every activation's grid trains to the end with finite
losses; per label kernel, the Bayes estimator (13) errs on the test labels by the risk it
predicts (the mean conditional variance; this checks K_+ and the Schur complement the floor
rests on); every trained loss is at or above the Bayes loss within Monte-Carlo error; for K_linear
and K_relu labels the matching activation has the lowest loss among linear / relu / exp at the
stated n (Fig 1 (a), (b); Prop 3.4); for K_exp labels softmax beats exp at the larger n (Fig
1(c)); for K_linear labels the Bayes risk is 1 - n/d for n < d and 0 for n >= d (the residual of
projecting xi_query on the span of n < d points uniform on the sphere). "Beats" compares the
paired per-prompt gap with the loser's loss capped (eval.gap_clip): a lower bound on the true
gap, robust to the rare prompts on which an exp-attention model overflows.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from ml_collections import config_dict

from experiments import common
from experiments.functional_gd import fgd_common as fc
from icl_jax import distributed, plotting, results
from icl_jax.models import kernel_attention as ka

EXPERIMENT = 'functional_gd/loss_vs_context'


# --- config ------------------------------------------------------------------------------------

def validate_n_values(config, field: str) -> None:
  """Strictly increasing positive context lengths."""
  common.positive_ints(config, field)
  values = list(common._get(config, field))
  if values != sorted(set(values)):
    raise common.ConfigError(f'config.{field}={tuple(values)}: must be strictly increasing '
                             'positive integers')


def validate_subset(config, field: str, of_field: str) -> None:
  """Every entry of config.<field> is one of config.<of_field>."""
  values, of = common._get(config, field), tuple(common._get(config, of_field))
  if isinstance(values, str) or any(v not in of for v in values):
    raise common.ConfigError(f'config.{field}={values!r}: each entry must be one of '
                             f'config.{of_field}={of}')


OPTIMIZER_FIELDS = ('lr', 'clip', 'init_scale', 'batch_size', 'steps')
# Beside the optimiser: free_a (bool), whether A_l is trained (Appendix H.1) or held at 0 (the
# value matrix of Proposition 3.1 / Theorem 4.5).
ACTIVATION_FIELDS = OPTIMIZER_FIELDS + ('free_a',)


def validate_by_activation(config, activations: Sequence[str]) -> None:
  """config.by_activation gives lr, clip, init_scale, batch_size, steps and free_a per
  activation."""
  for act in activations:
    if act not in config.by_activation:
      raise common.ConfigError(f'config.by_activation has no entry for activation {act!r}; '
                               f'it has {", ".join(config.by_activation)}')
    for field in ACTIVATION_FIELDS:
      if field not in config.by_activation[act]:
        raise common.ConfigError(
            f'config.by_activation.{act} needs {", ".join(ACTIVATION_FIELDS)}')
    if not isinstance(config.by_activation[act].free_a, bool):
      raise common.ConfigError(f'config.by_activation.{act}.free_a='
                               f'{config.by_activation[act].free_a!r}: must be True or False')
    for field in OPTIMIZER_FIELDS:
      check = common.positive_int if field in ('batch_size', 'steps') else common.positive_float
      check(config, f'by_activation.{act}.{field}')
    common.multiple_of_devices(config, f'by_activation.{act}.batch_size')   # sharded


def validate_train(config) -> None:
  """config.train (shared sizes) and config.by_activation (optimiser per activation)."""
  validate_by_activation(config, config.activations)
  retries = config.train.retries
  if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
    raise common.ConfigError(f'config.train.retries={retries!r}: must be an integer >= 0')
  if not 0.0 < config.train.retry_lr_factor < 1.0:
    raise common.ConfigError(f'config.train.retry_lr_factor={config.train.retry_lr_factor!r}: '
                             'must be in (0, 1)')
  for act in config.activations:
    fc.validate_train(config_dict.ConfigDict({'train': train_config(config, act)}))


def validate_eval(config) -> None:
  common.positive_int(config, 'eval.num_prompts')
  common.positive_int(config, 'eval.chunk')
  common.multiple_of(config, 'eval.num_prompts', 'eval.chunk')
  if config.eval.num_prompts < 2:
    raise common.ConfigError('config.eval.num_prompts: need at least 2 for a standard error')


def validate_grid(config) -> None:
  """What loss_vs_context and loss_vs_layers share: the problem, distinct label kernels and
  activations, the training (`validate_train`) and the context lengths n."""
  fc.validate_problem(config)
  fc.validate_kernels(config, 'kernels')
  fc.validate_activations(config, 'activations')
  for field in ('kernels', 'activations'):
    names = tuple(common._get(config, field))
    if len(set(names)) != len(names):
      raise common.ConfigError(f'config.{field}={names}: names must not repeat')
  validate_train(config)
  validate_n_values(config, 'n_values')


def validate(config) -> None:
  validate_grid(config)
  validate_eval(config)
  c = config.claims
  for field in ('k_bayes', 'k_best', 'k_closed', 'zero_floor'):
    common.positive_float(config, f'claims.{field}')
  validate_subset(config, 'claims.best_n', 'n_values')
  validate_subset(config, 'claims.softmax_n', 'n_values')
  del c


def train_config(config, activation: str):
  """config.train with the activation's Adam step, clip, initial scale, batch and steps."""
  tc = config.train.copy_and_resolve_references()
  with tc.unlocked():
    del tc['retries'], tc['retry_lr_factor']
    for field in OPTIMIZER_FIELDS:
      tc[field] = config.by_activation[activation][field]
  return tc


# --- evaluation of several activations on the same prompts --------------------------------------

class Scores(NamedTuple):
  """Per model m of a grid (means over the test prompts, float64, with standard errors):
  loss [A, M] of each activation a; bayes [M] the Bayes risk given X (the conditional variance
  of eq. (25)); bayes_sqerr [M] the squared error of the Bayes estimator (13) on the drawn
  y_query, whose mean must equal the Bayes risk; excess_se [A, M] the stderr of the per-prompt
  loss - Bayes risk; gap, gap_se [A, A, M] the mean and stderr of min(loss_a, clip) - loss_b
  (a's loss capped: see `evaluate_activations`); bayes_check_se [M] the stderr of sqerr - risk.
  Means of unclipped differences are differences of means (same prompts)."""
  loss: np.ndarray
  loss_se: np.ndarray
  bayes: np.ndarray
  bayes_se: np.ndarray
  bayes_sqerr: np.ndarray
  excess_se: np.ndarray
  gap: np.ndarray
  gap_se: np.ndarray
  bayes_check_se: np.ndarray


def evaluate_activations(key: jax.Array, params: Sequence[ka.Params], specs: Sequence[fc.Spec],
                         covs, *, activations: Sequence[str], kernel_kw: dict, num_prompts: int,
                         chunk: int, gap_clip: float = np.inf,
                         free_a: Sequence[bool] | bool = True, layers_per_model=None) -> Scores:
  """`fgd_common.evaluate` for one grid per activation, on one set of test prompts.

  The same K-GP prompts (chunk c from fold_in(key, c), model m's from fold_in(., m): as in
  fc.evaluate) score every activation's grid and the Bayes estimator, in one compiled program
  whose parameters are arguments: fc.evaluate closes over its params, so each call compiles
  the sampler again (~15 s CPU at 3 kernels x 4 context lengths here) and the Bayes risk is
  computed once per activation.

  The comparison of two activations a, b uses the per-prompt min(loss_a, gap_clip) - loss_b:
  its mean is a lower bound on mean loss_a - mean loss_b, so "b beats a" shown on it holds for
  the uncapped losses too, and a few prompts on which a's model overflows (exp attention: a
  loss of 1e6-1e18 on 1 prompt in 8000, see the config) no longer swamp the standard error.

  Args:
    params: one grid (leading model axis M) per activation.
    activations: [A] one single-head activation per grid.
    gap_clip: the cap on loss_a in the comparisons.
    free_a: per activation (or one for all): whether its grid was trained with A_l free.
    layers_per_model: as in fc.train_grid.
  """
  if num_prompts % chunk:
    raise ValueError(f'num_prompts={num_prompts} must be a multiple of chunk={chunk}')
  activations = tuple(activations)
  num_act, num_models = len(activations), len(specs)
  free_a = (free_a,) * num_act if isinstance(free_a, bool) else tuple(free_a)
  layers_max = params[0].r.shape[1]
  lmasks = fc.layer_masks(layers_per_model or [layers_max] * num_models, layers_max)
  names = sorted({s.kernel for s in specs})
  kernel_idx = jnp.asarray([names.index(s.kernel) for s in specs])

  @jax.jit
  def block(params, c):
    kp, cmask = fc.sample_grid(jax.random.fold_in(key, c), specs, covs, batch=chunk,
                               kernel_kw=kernel_kw)
    loss_AxMxB = jnp.stack([
        fc.model_losses(p, kp.prompt, cmask, lmasks, activations=(a,), free_a=fa)
        for p, a, fa in zip(params, activations, free_a)]).astype(jnp.float64)
    kw64 = {k: (v.astype(jnp.float64) if hasattr(v, 'astype') else v)
            for k, v in kernel_kw.items()}
    pred_MxB, bayes_MxB = fc.bayes_pred_var(kp, cmask, kernel_idx,
                                            fc._gram_switch(names, kw64))
    sqerr_MxB = jnp.square(pred_MxB - kp.prompt.y_query.astype(jnp.float64))
    capped = jnp.minimum(loss_AxMxB, gap_clip)
    diff = (capped[:, None] - loss_AxMxB[None]).reshape(num_act * num_act, num_models, -1)
    values = jnp.concatenate([loss_AxMxB, bayes_MxB[None], loss_AxMxB - bayes_MxB[None], diff,
                              sqerr_MxB[None], (sqerr_MxB - bayes_MxB)[None]])
    return jnp.stack([jnp.sum(values, -1), jnp.sum(values * values, -1)])

  with jax.enable_x64():
    params = jax.tree.map(lambda p: p.astype(jnp.float64), tuple(params))
    total = sum(np.asarray(block(params, c)) for c in range(num_prompts // chunk))
  mean = total[0] / num_prompts
  var = np.maximum(total[1] / num_prompts - mean**2, 0.0) * num_prompts / (num_prompts - 1)
  se = np.sqrt(var / num_prompts)
  a = num_act
  end = 2 * a + 1 + a * a
  return Scores(loss=mean[:a], loss_se=se[:a], bayes=mean[a], bayes_se=se[a],
                bayes_sqerr=mean[end], excess_se=se[a + 1:2 * a + 1],
                gap=mean[2 * a + 1:end].reshape(a, a, num_models),
                gap_se=se[2 * a + 1:end].reshape(a, a, num_models), bayes_check_se=se[end + 1])


def seed_average(mean: np.ndarray, se: np.ndarray, num_seeds: int):
  """Means over the trailing seed axis (models ordered seed-fastest) and their stderr:
  different seeds' models are scored on independent prompts."""
  mean = np.asarray(mean).reshape(np.shape(mean)[:-1] + (-1, num_seeds))
  se = np.asarray(se).reshape(mean.shape)
  return mean.mean(-1), np.sqrt(np.sum(se**2, -1)) / num_seeds


def free_a_of(config) -> tuple:
  """Per activation: whether its A_l is trained (config.by_activation.<act>.free_a)."""
  return tuple(config.by_activation[a].free_a for a in config.activations)


def train_all(config, workdir: str, specs, covs, *, layers_per_model=None, mesh=None):
  """One grid per activation, each one program (fc.train_grid), all from the same key: every
  activation sees the same initial draws and training prompts; each batch split over `mesh`.

  A grid whose loss turns non-finite (FloatingPointError from training.fit: an exp-attention
  model whose features overflow float32 on a rare prompt, see the config) is trained again from
  the start with its step times train.retry_lr_factor, at most train.retries times. If every try
  diverges it is reported, not hidden: its parameters become nan, so its test losses are nan and
  every claim that reads them fails, and `diverged` marks it.

  Returns:
    (params per activation, loss history per activation (of the last try), diverged [A] 0/1,
     lr used [A], tries [A]).
  """
  key = jax.random.fold_in(common.jax_key(config), 1)
  params, losses, diverged, lrs, tries = [], [], [], [], []
  for act in config.activations:
    tc = train_config(config, act)
    free_a = config.by_activation[act].free_a
    for attempt in range(config.train.retries + 1):
      with tc.unlocked():
        tc.lr = config.by_activation[act].lr * config.train.retry_lr_factor**attempt
      name = f'train_{act}' + (f'_retry{attempt}' if attempt else '')
      try:
        p, h = fc.train_grid(key, specs, covs, activations=(act,), tc=tc,
                             kernel_kw=fc.kernel_kwargs(config), workdir=workdir, name=name,
                             free_a=free_a, layers_per_model=layers_per_model, mesh=mesh)
        loss, failed = h.loss, 0
        break
      except FloatingPointError as e:
        logging.warning('%s attention, lr %g: training diverged (%s)', act, tc.lr, e)
        failed = 1
    if failed:
      logging.warning('%s attention: every try diverged; its losses are reported as nan', act)
      shape = jax.eval_shape(lambda k: fc.init_grid(
          k, len(specs), d=config.d, layers=tc.layers, heads=1, scale=tc.init_scale,
          free_a=free_a), key)
      p = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shape)
      loss = np.full(tc.steps, np.nan)
    params.append(p)
    losses.append(loss)
    diverged.append(failed)
    lrs.append(tc.lr)
    tries.append(attempt + 1)
  return params, losses, np.asarray(diverged), np.asarray(lrs), np.asarray(tries)


# --- the app -----------------------------------------------------------------------------------

def specs_of(config):
  """The grid: (kernel, n, seed), seed fastest."""
  return [fc.Spec(k, n, s) for k in config.kernels for n in config.n_values
          for s in range(config.num_seeds)]


def measure(config, workdir):
  covs = fc.covariances(config)
  specs = specs_of(config)
  params, train_losses, diverged, lrs, tries = train_all(config, workdir, specs, covs,
                                                         mesh=distributed.data_mesh())
  sc = evaluate_activations(jax.random.fold_in(common.jax_key(config), 2), params, specs, covs,
                            activations=config.activations, kernel_kw=fc.kernel_kwargs(config),
                            num_prompts=config.eval.num_prompts, chunk=config.eval.chunk,
                            gap_clip=config.eval.gap_clip, free_a=free_a_of(config))
  shape = (len(config.kernels), len(config.n_values))
  s = config.num_seeds
  avg = lambda m, e, lead=(): tuple(x.reshape(lead + shape) for x in seed_average(m, e, s))
  a = (len(config.activations),)
  loss, loss_se = avg(sc.loss, sc.loss_se, a)
  bayes, bayes_se = avg(sc.bayes, sc.bayes_se)
  _, excess_se = avg(sc.loss, sc.excess_se, a)
  gap, gap_se = avg(sc.gap, sc.gap_se, a + a)
  bayes_sqerr, bayes_check_se = avg(sc.bayes_sqerr, sc.bayes_check_se)
  measured = {'loss': loss, 'loss_se': loss_se, 'bayes': bayes, 'bayes_se': bayes_se,
              'bayes_sqerr': bayes_sqerr, 'bayes_check_se': bayes_check_se,
              'excess_se': excess_se, 'gap': gap, 'gap_se': gap_se,
              'diverged': diverged, 'lr_used': lrs, 'tries': tries}
  n = np.asarray(config.n_values, np.float64)
  theory = {'bayes_linear': np.maximum(1.0 - n / config.d, 0.0)}
  return results.Evidence(measured=measured, theory=theory), {'train_losses': train_losses}


def diverged_claim(config, diverged) -> results.Claim:
  """Every activation's grid trained to the end with finite losses."""
  bad = [a for a, d in zip(config.activations, np.asarray(diverged)) if d]
  return results.Claim('training stayed finite for every activation'
                       + (f' (diverged: {", ".join(bad)})' if bad else ''),
                       float(np.sum(diverged)), 0.0, 0.0, 'at_most')


def bayes_check_claims(config, mv, metrics: dict) -> list:
  """Per label kernel: the Bayes estimator's mean squared error on the drawn labels equals the
  Bayes risk it predicts (the mean conditional variance), within k_closed paired stderrs plus
  zero_floor (where both are 0 up to rounding: K_linear, n >= d). A wrong risk (a wrong K_+,
  Schur complement or kernel) breaks the equality; the Bayes floor claims rest on it."""
  c = config.claims
  sqerr, bayes = np.asarray(mv['bayes_sqerr']), np.asarray(mv['bayes'])
  tol = c.k_closed * np.asarray(mv['bayes_check_se']) + c.zero_floor
  claims = []
  for k, kern in enumerate(config.kernels):
    worst = float(np.max(np.abs(sqerr[k] - bayes[k]) / tol[k]))
    metrics[f'bayes_check_{kern}'] = worst
    claims.append(results.Claim(
        f'K_{kern} labels: the Bayes estimator (13) errs on the test labels by its predicted risk '
        f'(max over the grid of |mean sq. error - mean cond. variance| / ({c.k_closed:g} paired '
        f'stderr + {c.zero_floor:g}) <= 1)', worst, 0.0, 1.0, 'at_most'))
  return claims


def _beats_claim(text: str, gap, gap_se, better: int, worse: Sequence[int], n_idx, k: float,
                 metrics: dict, key: str):
  """min over (worse activation w, n) of mean(min(loss_w, clip) - loss_better) / stderr >= k."""
  z = np.asarray([[gap[w, better, j] / gap_se[w, better, j] for j in n_idx] for w in worse])
  metrics[f'{key}_min_z'] = float(z.min())
  for w in worse:
    for j in n_idx:
      metrics[f'{key}_gap_{w}_{j}'] = float(gap[w, better, j])
  return results.Claim(f'{text} (min over n of the paired gap / its stderr >= {k:g})',
                       z.min(), k, 0.0, 'at_least')


def check(config, ev):
  mv, th, c = ev.measured, ev.theory, config.claims
  acts, kerns, ns = list(config.activations), list(config.kernels), list(config.n_values)
  loss, bayes = np.asarray(mv['loss'], np.float64), np.asarray(mv['bayes'], np.float64)
  excess_se = np.asarray(mv['excess_se'])
  gap, gap_se = np.asarray(mv['gap'], np.float64), np.asarray(mv['gap_se'], np.float64)
  claims, met = [], {}
  claims.append(diverged_claim(config, mv['diverged']))
  for a, act in enumerate(acts):
    met[f'lr_used_{act}'] = float(mv['lr_used'][a])
    met[f'tries_{act}'] = float(mv['tries'][a])
  for a, act in enumerate(acts):
    for k, kern in enumerate(kerns):
      for j, n in enumerate(ns):
        met[f'loss_{kern}_{act}_n{n}'] = float(loss[a, k, j])
  for k, kern in enumerate(kerns):
    for j, n in enumerate(ns):
      met[f'bayes_{kern}_n{n}'] = float(bayes[k, j])

  claims += bayes_check_claims(config, mv, met)
  # Bayes is the floor (eq. (13)/(25)): loss - Bayes >= -k stderr, paired per prompt.
  for k, kern in enumerate(kerns):
    z = (loss[:, k] - bayes[k][None]) / excess_se[:, k]
    met[f'excess_min_z_{kern}'] = float(z.min())
    claims.append(results.Claim(
        f'K_{kern} labels: every trained loss >= the Bayes loss (min over h~, n of (loss - '
        f'Bayes) / paired stderr >= -{c.k_bayes:g})', z.min(), 0.0, c.k_bayes, 'at_least'))

  # Fig 1 (a), (b): the matching activation is best among linear / relu / exp.
  pool = [a for a in ('linear', 'relu', 'exp') if a in acts]
  best_idx = [ns.index(n) for n in c.best_n]
  for kern in ('linear', 'relu'):
    if kern in kerns and kern in acts and len(pool) > 1 and best_idx:
      k = kerns.index(kern)
      others = [acts.index(a) for a in pool if a != kern]
      claims.append(_beats_claim(
          f'K_{kern} labels, n in {tuple(c.best_n)}: h~_{kern} has the lowest loss among '
          f'{" / ".join(pool)} (Fig 1, Prop 3.4)', gap[:, :, k], gap_se[:, :, k],
          acts.index(kern), others, best_idx, c.k_best, met, f'best_{kern}'))

  # Fig 1 (c): softmax beats exp on K_exp labels at the larger n.
  sm_idx = [ns.index(n) for n in c.softmax_n]
  if 'exp' in kerns and {'exp', 'softmax'} <= set(acts) and sm_idx:
    k = kerns.index('exp')
    claims.append(_beats_claim(
        f'K_exp labels, n in {tuple(c.softmax_n)}: h~_softmax beats h~_exp (Fig 1(c))',
        gap[:, :, k], gap_se[:, :, k], acts.index('softmax'), [acts.index('exp')], sm_idx,
        c.k_best, met, 'softmax_exp'))

  # Bayes risk of K_linear labels: 1 - n/d below d, 0 from d on.
  if 'linear' in kerns:
    k = kerns.index('linear')
    closed = np.asarray(th['bayes_linear'], np.float64)
    for j, n in enumerate(ns):
      if n < config.d:
        claims.append(results.stderr_claim(
            f'K_linear labels, n = {n} < d: Bayes risk = 1 - n/d', bayes[k, j],
            mv['bayes_se'][k, j], closed[j], c.k_closed))
      else:
        claims.append(results.Claim(
            f'K_linear labels, n = {n} >= d: Bayes risk = 0 (within {c.zero_floor:g}, float64 '
            'rounding)', bayes[k, j], closed[j], c.zero_floor))
  return claims, met


def train_loss_figure(activations: Sequence[str], losses: Sequence[np.ndarray]):
  """Each activation's training curve (the sum of its grid's minibatch losses) against step."""
  return plotting.curves(None, dict(zip(activations, losses)),
                         xs={a: np.arange(1, len(t) + 1) for a, t in zip(activations, losses)},
                         xlabel='step', ylabel='sum of the grid\'s minibatch losses', logy=True,
                         title='training (one program per activation)')


def log_panels(x, curves: dict, ses: dict, floor: float, **kwargs):
  """plotting.panels on a log scale, as the paper's figures: values at or below `floor` (a
  Bayes risk that is 0 up to rounding) are not drawn, and the +-2 stderr bands stop at half the
  panel's smallest drawn value (a band reaching below 0 says the mean is not resolved there)."""
  drawn, bands = {}, {}
  for panel, ys in curves.items():
    ys = {name: np.where(np.asarray(y) > floor, y, np.nan) for name, y in ys.items()}
    low = 0.5 * np.nanmin([np.nanmin(y) for y in ys.values()])
    drawn[panel] = ys
    bands[panel] = {name: (np.maximum(ys[name] - 2 * se, low), ys[name] + 2 * se)
                    for name, se in ses[panel].items()}
  return plotting.panels(x, drawn, bands=bands, logy=True,
                         styles={'Bayes': {'color': 'k', 'lw': 2}}, **kwargs)


def _figure(config, loss, loss_se, bayes):
  curves, ses = {}, {}
  for k, kern in enumerate(config.kernels):
    panel = f'K_{kern} labels (L = {config.train.layers})'
    curves[panel] = {f'h~ {a}': loss[i, k] for i, a in enumerate(config.activations)}
    curves[panel]['Bayes'] = bayes[k]
    ses[panel] = {f'h~ {a}': loss_se[i, k] for i, a in enumerate(config.activations)}
  return log_panels(np.asarray(config.n_values), curves, ses, config.claims.zero_floor,
                    xlabel='context length n', ylabel='test ICL loss',
                    title='Figure 1: in-context loss vs n (mean of '
                          f'{config.num_seeds} Sigma seed(s); K_linear Bayes = 0 for n >= d '
                          'not drawn)')


def run(config, workdir) -> results.Run:
  evidence, aux = measure(config, workdir)
  claims, met = check(config, evidence)
  mv = evidence.measured
  arrays = {'n_values': np.asarray(config.n_values)}
  for k, kern in enumerate(config.kernels):
    arrays[f'bayes_loss_{kern}'] = mv['bayes'][k]
    arrays[f'bayes_loss_{kern}_stderr'] = mv['bayes_se'][k]
    for a, act in enumerate(config.activations):
      arrays[f'loss_{kern}_{act}'] = mv['loss'][a, k]
      arrays[f'loss_{kern}_{act}_stderr'] = mv['loss_se'][a, k]
  for a, act in enumerate(config.activations):
    arrays[f'train_loss_{act}'] = aux['train_losses'][a]
    met[f'final_train_loss_sum_{act}'] = float(aux['train_losses'][a][-1])
  if 'linear' in config.kernels:
    arrays['bayes_loss_linear_closed_form'] = evidence.theory['bayes_linear']
  figures = {'figure1.png': _figure(config, mv['loss'], mv['loss_se'], mv['bayes']),
             'train_loss.png': train_loss_figure(config.activations, aux['train_losses'])}
  return results.Run(metrics=met, claims=claims, arrays=arrays, figures=figures,
                     evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=fc.PAPER, reproduces='Fig 1, Prop 3.4')
