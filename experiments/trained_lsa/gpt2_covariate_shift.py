"""Figure 1 of Zhang, Frei & Bartlett (2023): GPT2 models under covariate shift, and NoPE.

  python -m experiments.trained_lsa.gpt2_covariate_shift \
      --config=experiments/trained_lsa/configs/gpt2_covariate_shift.py:quick --workdir=/tmp/g2

Trains GPT2-style transformers with Garg et al.'s recipe (Sec. 4.3, Appendix E) on linear
regression prompts with identity ('fixed') or random diagonal Exp(1) ('random') covariance, one
per training length N and per kind of positions: GPT2's learned absolute table, the paper's
setting, and none (NoPE) to test the paper's conjecture that the error spike at M > N comes from
learned positions that never trained beyond N. Every model is scored on the same test prompts:
64 covariances x 64 prompts per point (Appendix E), identity or c diag(Exp(1)) for each c, the
normalised squared error E (y_hat - y)^2 / E y^2 at the final query after M context pairs, with
percentile-bootstrap confidence intervals over the covariances. Baselines on the same prompts:
minimum-norm OLS, the zero estimator (1 by the normalisation), and the eq. (23) limit of the
linear self-attention layer trained on random covariances (Thm 8 optimum at N, M -> infinity,
closed form).

One sequence of max(M) + 1 points serves every M: under causal attention the prediction at
point M reads only the M pairs before it, so it is the prediction of a prompt of length M.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from experiments import common
from experiments.trained_lsa import lsa_common
from icl_jax import distributed, estimators, garg, plotting, population, results, theory, training
from icl_jax.models import transformer
from icl_jax.samplers import regression

T = theory.trained_lsa
EXPERIMENT = 'trained_lsa/gpt2_covariate_shift'
COVARIANCES = ('fixed', 'random')
SCHEDULES = ('constant', 'cosine')
POSITION_NAMES = {'learned': 'learned', 'none': 'nope', 'sinusoidal': 'sinusoidal'}


# --- config ------------------------------------------------------------------------------------

def validate(config) -> None:
  common.positive_int(config, 'd')
  common.positive_ints(config, 'n_train')
  for field, allowed in (('train_covariances', COVARIANCES),
                         ('positions', transformer.POSITIONS)):
    values = tuple(config[field])
    if not values or len(set(values)) != len(values) or not set(values) <= set(allowed):
      raise common.ConfigError(f'config.{field}={values!r}: must be distinct values from '
                               f'{", ".join(allowed)}')
  for field in ('model.depth', 'model.width', 'model.heads', 'train.batch_size',
                'train.max_steps', 'train.log_every', 'train.ckpt_every', 'train.dims_start',
                'train.points_start', 'train.curriculum_interval', 'eval.num_covariances',
                'eval.prompts_per_covariance', 'eval.bootstrap'):
    common.positive_int(config, field)
  for field in ('train.warmup_steps', 'train.dims_inc', 'train.points_inc'):
    if not isinstance(config.train[field.split('.')[1]], int) or \
        config.train[field.split('.')[1]] < 0:
      raise common.ConfigError(f'config.{field}={config.train[field.split(".")[1]]!r}: must '
                               'be a non-negative integer')
  if config.model.width % config.model.heads:
    raise common.ConfigError(f'config.model.width={config.model.width}: must be a multiple of '
                             f'config.model.heads={config.model.heads}')
  common.positive_float(config, 'train.lr')
  common.one_of(config, 'train.schedule', SCHEDULES)
  if config.train.warmup_steps >= config.train.max_steps:
    raise common.ConfigError(f'config.train.warmup_steps={config.train.warmup_steps}: must be '
                             f'below config.train.max_steps={config.train.max_steps}')
  common.multiple_of(config, 'train.max_steps', 'train.log_every')
  common.multiple_of(config, 'train.ckpt_every', 'train.log_every')
  common.positive_ints(config, 'eval.m_values')
  common.positive_floats(config, 'eval.scales')
  if not 0 < config.eval.ci_level < 1:
    raise common.ConfigError(f'config.eval.ci_level={config.eval.ci_level!r}: must be in (0, 1)')
  if max(config.n_train) > max(config.eval.m_values):
    raise common.ConfigError(f'config.eval.m_values: the largest must be >= the largest '
                             f'config.n_train={max(config.n_train)}')
  if 'random' in config.train_covariances and 1.0 not in config.eval.scales:
    raise common.ConfigError(f'config.eval.scales={tuple(config.eval.scales)!r}: must include '
                             '1.0 (the training law of the random-covariance models)')
  for field in ('train.batch_size', 'eval.num_covariances'):
    common.multiple_of_devices(config, field)
  for field in ('in_dist_max_error', 'beats_alpha', 'min_rise', 'min_rise_gap'):
    common.positive_float(config, f'claims.{field}')


def _specs(config):
  """The trained models, in order: (positions, training covariance, N)."""
  return [(p, c, n) for p in config.positions for c in config.train_covariances
          for n in config.n_train]


def _model_name(spec) -> str:
  p, c, n = spec
  return f'{c}_N{n}_{POSITION_NAMES[p]}'


def _dists(config):
  """Test distributions: name -> scale c (None for the identity covariance)."""
  return {'identity': None, **{f'random_c{c:g}': float(c) for c in config.eval.scales}}


def _home(cov: str) -> str:
  """The test law a model trained on covariance `cov` was trained on."""
  return 'identity' if cov == 'fixed' else 'random_c1'


def _second_moment(config, c) -> float:
  """E y^2 = tr E Lambda on a test law of scale c (None: identity), the normaliser."""
  return config.d * (1.0 if c is None else c)


def _dist_title(name: str) -> str:
  return 'identity covariance' if name == 'identity' else f'random covariance, c = {name[8:]}'


def _model(config, positions):
  return transformer.regressor(depth=config.model.depth, width=config.model.width,
                               heads=config.model.heads, positions=positions,
                               max_points=max(config.eval.m_values) + 1)


# --- training ----------------------------------------------------------------------------------

def _learning_rate(tc):
  """Adam's step size: linear warmup to train.lr, then constant or a cosine decay to 0 at
  train.max_steps (the decay removes most of the gradient noise left at the end)."""
  if tc.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, tc.lr, tc.warmup_steps, tc.max_steps)
  if tc.warmup_steps:
    return optax.join_schedules([optax.linear_schedule(0.0, tc.lr, tc.warmup_steps),
                                 optax.constant_schedule(tc.lr)], [tc.warmup_steps])
  return tc.lr


def _train_group(config, positions, specs, spec_ids, key, workdir, mesh):
  """Trains the models that share `positions` as one vmapped program (one Adam state each).

  A model's init and data keys depend on its (covariance, N) only, so the learned and the NoPE
  model of one setting start from the same weights and see the same sequences.
  """
  model = _model(config, positions)
  d, tc = config.d, config.train
  k_init, k_data = jax.random.split(key)
  ids = jnp.asarray(spec_ids)
  params = jax.jit(jax.vmap(lambda i: transformer.init(model, jax.random.fold_in(k_init, i), d)))(
      ids)
  random_cov = jnp.asarray([c == 'random' for _, c, _ in specs])
  points = jnp.asarray([n + 1 for _, _, n in specs])
  k_max = max(n for _, _, n in specs) + 1
  curriculum = garg.Curriculum(tc.dims_start, tc.dims_inc, tc.points_start, tc.points_inc,
                               tc.curriculum_interval) if tc.curriculum else None

  def loss_fn(p, key, step):
    dims = curriculum.dims(step, d) if curriculum else None

    def one(p_k, i, rc, pts):
      if curriculum:
        pts = jnp.minimum(pts, curriculum.points(step, k_max))
      s = garg.batch(jax.random.fold_in(key, i), tc.batch_size, mesh=mesh, num_points=k_max,
                     d=d, random_cov=rc, dims=dims)
      return garg.squared_error(transformer.apply(model, p_k, s.x, s.y), s.y, pts)

    return jnp.sum(jax.vmap(one)(p, ids, random_cov, points))

  lr = _learning_rate(tc)
  logging.info('training %d %s-position model(s) (%s) as one program, %d parameters each',
               len(specs), positions, ', '.join(map(_model_name, specs)),
               sum(x.size for x in jax.tree.leaves(params)) // len(specs))
  params, hist = training.fit(
      loss_fn, params, optax.adam(lr), key=k_data, max_steps=tc.max_steps,
      log_every=tc.log_every, ckpt_every=tc.ckpt_every,
      workdir=os.path.join(workdir, f'train_{POSITION_NAMES[positions]}'), mesh=mesh,
      keep_trajectory=False, pass_step=True)
  return model, params, hist


# --- evaluation --------------------------------------------------------------------------------

def _test_sequences(key, config, scale, mesh):
  """G covariances x P prompts of max(M) + 1 points: x [G P, K, d], y [G P, K] (group-major)."""
  g, p = config.eval.num_covariances, config.eval.prompts_per_covariance
  k_cov, k_seq = jax.random.split(key)

  def group(i):
    cov = garg.covariance(jax.random.fold_in(k_cov, i), config.d, scale is not None,
                          1.0 if scale is None else scale)
    keys = population.sample_keys(jax.random.fold_in(k_seq, i), 0, p)
    return jax.vmap(lambda k: garg.sequence(k, num_points=max(config.eval.m_values) + 1,
                                            cov=cov))(keys)

  ids = jax.lax.with_sharding_constraint(jnp.arange(g), distributed.batch_sharding(mesh))
  seqs = jax.vmap(group)(ids)
  return jax.tree.map(lambda a: a.reshape((g * p,) + a.shape[2:]), seqs)


@functools.partial(jax.jit, static_argnames=('model', 'm_values', 'chunk'))
def _model_errors(model, params, x, y, *, m_values, chunk):
  """Squared errors [models, prompts, len(m_values)] at the query after each M pairs."""
  idx = jnp.asarray(m_values)

  def per_model(p):
    def per_chunk(xy):
      return transformer.apply(model, p, xy[0], xy[1])[:, idx]
    pred = jax.lax.map(per_chunk, (x.reshape((-1, chunk) + x.shape[1:]),
                                   y.reshape((-1, chunk) + y.shape[1:])))
    return jnp.square(pred.reshape(y.shape[0], -1) - y[:, idx])

  return jax.lax.map(per_model, params)


@functools.partial(jax.jit, static_argnames=('m_values',))
def _baseline_errors(x, y, *, m_values):
  """OLS (minimum norm, float64) and zero squared errors [prompts, len(m_values)]."""
  idx = jnp.asarray(m_values)
  x64, y64 = x.astype(jnp.float64), y.astype(jnp.float64)
  ols = jax.vmap(lambda a, b: estimators.ols_prefixes(a, b, m_values))(x64, y64)
  return jnp.square(ols - y64[:, idx]), jnp.square(y64[:, idx])


def _group_means(err_PxM, num_groups):
  """Per-covariance means: [prompts, M] -> [M, groups]."""
  return np.asarray(err_PxM).reshape(num_groups, -1, err_PxM.shape[-1]).mean(1).T


def _lsa_limits(config):
  """eq. (23): normalised error of the LSA layer trained on Exp(1) covariances (the Thm 8
  optimum at N -> infinity, diag(E L^2 / E L^3)) on each test law as M -> infinity."""
  train = regression.law_moments('exponential', 1.0)
  product = T.random_covariance_product(train, config.d, np.inf)
  out = {}
  for name, c in _dists(config).items():
    moments = (1.0, 1.0, 1.0) if c is None else regression.law_moments('exponential', c)
    out[name] = float(T.random_covariance_error(product, moments, np.inf, 'same'))
  return out


def measure(config, workdir):
  mesh = distributed.data_mesh()
  key = common.jax_key(config)
  k_train, k_eval = jax.random.split(key)
  del key
  specs = _specs(config)
  settings = [(c, n) for c in config.train_covariances for n in config.n_train]
  m_values = tuple(int(m) for m in config.eval.m_values)
  dists = _dists(config)
  g = config.eval.num_covariances
  num_prompts = g * config.eval.prompts_per_covariance
  chunk = population.chunk_size(num_prompts, 64 * (max(m_values) + 1) * config.model.width * 4,
                                budget_bytes=256 << 20)
  # Test prompts first, so the baselines' numbers never depend on the training.
  meas = {'error': np.zeros((len(specs), len(dists), len(m_values), g)),
          'ols_error': np.zeros((len(dists), len(m_values), g)),
          'zero_error': np.zeros((len(dists), len(m_values), g))}
  seqs = {}
  with population.progress('test prompts and OLS / zero baselines (float64)'):
    for j, (name, c) in enumerate(dists.items()):
      seqs[name] = _test_sequences(jax.random.fold_in(k_eval, j), config, c, mesh)
      ey2 = _second_moment(config, c)
      with jax.enable_x64(True):
        ols, zero = _baseline_errors(seqs[name].x, seqs[name].y, m_values=m_values)
      meas['ols_error'][j] = _group_means(ols, g) / ey2
      meas['zero_error'][j] = _group_means(zero, g) / ey2
  losses = {}
  for positions in config.positions:
    idx = [i for i, s in enumerate(specs) if s[0] == positions]
    group = [specs[i] for i in idx]
    spec_ids = [settings.index((c, n)) for _, c, n in group]
    model, params, hist = _train_group(config, positions, group, spec_ids, k_train, workdir,
                                       mesh)
    losses[POSITION_NAMES[positions]] = hist.loss / len(group)
    with population.progress(f'scoring the {positions}-position models'):
      for j, (name, c) in enumerate(dists.items()):
        err = _model_errors(model, params, seqs[name].x, seqs[name].y, m_values=m_values,
                            chunk=chunk)
        ey2 = _second_moment(config, c)
        for k, i in enumerate(idx):
          meas['error'][i, j] = _group_means(err[k], g) / ey2
    for i in idx:
      _, cov, n = specs[i]
      home = list(dists).index(_home(cov))
      curve = meas['error'][i, home].mean(-1)
      at_n = curve[m_values.index(n)] if n in m_values else float('nan')
      logging.info('%s: in-distribution error %.4g at M = N, %.4g at M = %d', _model_name(specs[i]),
                   at_n, curve[-1], m_values[-1])
  for name, loss in losses.items():
    meas[f'train_loss_{name}'] = loss
  limits = _lsa_limits(config)
  theory_ = {'lsa_limit': np.asarray([limits[n] for n in dists])}
  return results.Evidence(measured=meas, theory=theory_), {}


# --- claims ------------------------------------------------------------------------------------

def _bootstrap_indices(config, num_groups):
  """The resampled covariance groups, shared by every curve (paired comparisons): [B, G]."""
  rng = np.random.default_rng([config.seed, 2023])
  return rng.integers(0, num_groups, size=(config.eval.bootstrap, num_groups))


def _ci(samples, level):
  alpha = (1.0 - level) / 2.0
  return np.quantile(samples, [alpha, 1.0 - alpha], axis=0)


def check(config, ev):
  c, mv, level = config.claims, ev.measured, config.eval.ci_level
  specs = _specs(config)
  names = list(_dists(config))
  m_values = [int(m) for m in config.eval.m_values]
  err = np.asarray(mv['error'])                       # [models, dists, M, G]
  boot = _bootstrap_indices(config, err.shape[-1])

  def at(spec, dist, m):
    """Per-group errors of a model on a test law at M: [G]."""
    return err[specs.index(spec), names.index(dist), m_values.index(m)]

  def rise(spec, dist, n):
    """Mean error over n < M <= max M minus the error at M = n, per group: [G]."""
    later = [m_values.index(m) for m in m_values if m > n]
    e = err[specs.index(spec), names.index(dist)]
    return e[later].mean(0) - e[m_values.index(n)]

  def low(values_G):
    return float(_ci(values_G[boot].mean(1), level)[0])

  claims, met = [], {}
  pct = f'{100 * level:g}%'
  for spec in specs:
    p, cov, n = spec
    home = _home(cov)
    if n not in m_values:
      continue
    e = float(at(spec, home, n).mean())
    met[f'in_dist_error_{_model_name(spec)}'] = e
    if p != 'learned' and 'learned' in config.positions:
      continue   # the paper's claim is about GPT2 (learned positions); NoPE's is reported
    claims.append(results.Claim(
        f'{_model_name(spec)}: tracks OLS in distribution ({_dist_title(home)}): normalised '
        f'error at M = N = {n} at most {c.in_dist_max_error:g} (OLS exact, zero estimator 1)',
        e, 0.0, c.in_dist_max_error, 'at_most'))
  for p in config.positions:
    if set(COVARIANCES) <= set(config.train_covariances):
      for n in config.n_train:
        for dist in names:
          if dist == 'identity' or float(dist[8:]) <= 1.0 or n not in m_values:
            continue
          diff = at((p, 'fixed', n), dist, n) - at((p, 'random', n), dist, n)
          met[f'random_minus_fixed_{dist}_N{n}_{POSITION_NAMES[p]}'] = -float(diff.mean())
          if p != 'learned' and 'learned' in config.positions:
            continue   # the paper's claim is about GPT2 (learned positions); NoPE is reported
          claims.append(results.Claim(
              f'{POSITION_NAMES[p]} positions, N = {n}, {_dist_title(dist)}: the random-'
              f'covariance-trained model beats the fixed-covariance-trained one at M = N '
              f'(share of bootstrap resamples with a lower error, one-sided at '
              f'{1 - c.beats_alpha:g})', np.mean(diff[boot].mean(1) > 0), 1 - c.beats_alpha,
              0.0, 'at_least'))
  max_m = max(m_values)
  for cov in config.train_covariances:
    home = _home(cov)
    for n in config.n_train:
      if n >= max_m or n not in m_values:
        continue
      rises = {p: rise((p, cov, n), home, n) for p in config.positions}
      for p, r in rises.items():
        met[f'rise_{cov}_N{n}_{POSITION_NAMES[p]}'] = float(r.mean())
        met[f'rise_{cov}_N{n}_{POSITION_NAMES[p]}_ci_low'] = low(r)
      if 'learned' in rises:
        claims.append(results.Claim(
            f'{cov}_N{n}, learned positions, {_dist_title(home)}: the error rises for M > N '
            f'(mean over N < M <= {max_m} minus M = N, lower {pct} bound at least '
            f'{c.min_rise:g})', low(rises['learned']), c.min_rise, 0.0, 'at_least'))
      if 'learned' in rises and 'none' in rises:
        claims.append(results.Claim(
            f'{cov}_N{n}, {_dist_title(home)}: the paper\'s conjecture holds: without positions '
            f'(NoPE) the rise for M > N is smaller than with learned positions (rise learned - '
            f'rise NoPE, lower {pct} bound at least {c.min_rise_gap:g})',
            low(rises['learned'] - rises['none']), c.min_rise_gap, 0.0, 'at_least'))
  return claims, met


# --- run ---------------------------------------------------------------------------------------

def run(config, workdir) -> results.Run:
  evidence, _ = measure(config, workdir)
  claims, met = check(config, evidence)
  mv, th = evidence.measured, evidence.theory
  specs, names = _specs(config), list(_dists(config))
  m_values = np.asarray(config.eval.m_values)
  boot = _bootstrap_indices(config, mv['error'].shape[-1])
  arrays = {'m_values': m_values, 'n_train': np.asarray(config.n_train),
            'scales': np.asarray(config.eval.scales), 'lsa_limit': th['lsa_limit']}
  curves, bands, hlines = {}, {}, {}
  for j, dist in enumerate(names):
    title = _dist_title(dist)
    curves[title], bands[title] = {}, {}
    for base in ('ols', 'zero'):
      arrays[f'{base}_error_{dist}'] = mv[f'{base}_error'][j].mean(-1)
    curves[title]['OLS (min norm)'] = arrays[f'ols_error_{dist}']
    hlines[title] = {'zero estimator': float(mv['zero_error'][j].mean()),
                     'LSA limit, eq. (23)': float(th['lsa_limit'][j])}
    for i, spec in enumerate(specs):
      name = _model_name(spec)
      e = mv['error'][i, j]                     # [M, G]
      ci = _ci(e[:, boot].mean(-1).T, config.eval.ci_level).T   # [M, 2]
      arrays[f'error_{name}_{dist}'] = e.mean(-1)
      arrays[f'error_{name}_{dist}_ci'] = ci
      curves[title][name] = e.mean(-1)
      bands[title][name] = (ci[:, 0], ci[:, 1])
  styles = {_model_name(s): {'ls': '-' if s[0] == 'learned' else '--'} for s in specs}
  styles['OLS (min norm)'] = {'color': 'k', 'lw': 1}
  figures = {'figure1.png': plotting.panels(
      m_values, curves, bands=bands, hlines=hlines, styles=styles, vlines=config.n_train,
      ylim=(0.0, 2.0), xlabel='test prompt length M', ylabel='normalised squared error',
      title=f'GPT2 ({config.model.depth} layers, width {config.model.width}) trained on N '
            f'points, d = {config.d}; {config.eval.ci_level:.0%} bootstrap CIs')}
  loss_curves = {k[len('train_loss_'):]: v for k, v in mv.items() if k.startswith('train_loss_')}
  for name, loss in loss_curves.items():
    arrays[f'train_loss_{name}'] = loss
  steps = np.arange(1, len(next(iter(loss_curves.values()))) + 1)
  figures['train_loss.png'] = plotting.curves(
      steps, loss_curves, xlabel='step', ylabel='Garg loss (mean over the models)', logy=True,
      title='Training (mean over each program\'s models)')
  met.update({f'lsa_limit_{n}': float(v) for n, v in zip(names, th['lsa_limit'])})
  return results.Run(metrics=met, claims=claims, arrays=arrays, figures=figures,
                     evidence=evidence)


if __name__ == '__main__':
  common.run_app(EXPERIMENT, validate, run, paper=lsa_common.PAPER,
                 reproduces='Sec. 4.3, Figure 1 (GPT2), and the NoPE test of its conjecture')
