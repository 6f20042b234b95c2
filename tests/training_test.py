"""Tests of icl_jax.training.fit: convergence, NaN guard, checkpoint/resume, early stopping."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from icl_jax import training

TARGET = np.array([1.0, -2.0, 0.5], np.float32)


def _quadratic(params, key):
  del key
  return jnp.sum(jnp.square(params - TARGET))


def _noisy_quadratic(params, key):
  """A loss that depends on the step's key, so a resumed run only matches an unbroken one if
  the step counter (and so fold_in(key, step)) is restored too."""
  return jnp.sum(jnp.square(params - TARGET - 0.3 * jax.random.normal(key, (3,))))


def test_fit_converges_on_quadratic():
  """SGD (lr 0.1) on |p - t|^2 contracts the error by 0.8 per step: after 200 steps it is
  0.8^200 ~ 4e-20, so params == t to float32 rounding (atol 1e-6). Also checks the History
  shapes and that the logged loss is the loss before each step."""
  p0 = jnp.zeros(3)
  params, hist = training.fit(_quadratic, p0, optax.sgd(0.1), key=jax.random.key(0),
                              max_steps=200, log_every=50)
  np.testing.assert_allclose(params, TARGET, atol=1e-6)
  assert hist.loss.shape == hist.grad_norm.shape == (200,)
  assert hist.loss[0] == pytest.approx(float(np.sum(TARGET**2)), rel=1e-6)
  assert np.all(np.diff(hist.loss) <= 0)
  assert hist.trajectory.shape == (5, 3)
  np.testing.assert_array_equal(hist.trajectory_steps, [0, 50, 100, 150, 200])
  np.testing.assert_array_equal(hist.trajectory[0], 0.0)
  np.testing.assert_allclose(hist.trajectory[-1], params)
  assert not hist.converged and hist.resumed_from == 0
  # the caller's initial params survive (the jitted step donates its state)
  np.testing.assert_array_equal(p0, 0.0)


def test_gradient_flow_is_gradient_descent_with_step_lr():
  """On L(p) = |p - t|^2 (gradient 2 (p - t)), gradient descent with step lr has the closed-form
  iterate p_s = t + (1 - 2 lr)^s (p_0 - t). gradient_flow(lr = 0.05) must follow it: the final
  params, the logged loss |p_s - t|^2 before each step and the trajectory at every log point.
  Fails on another step size (e.g. lr / 2), momentum or any adaptive rescaling; rtol 1e-5 is
  float32 rounding accumulated over 20 steps."""
  lr, steps, log_every = 0.05, 20, 5
  p0 = np.array([2.0, 0.0, -1.0], np.float32)
  params, hist = training.gradient_flow(_quadratic, jnp.asarray(p0), lr=lr,
                                        key=jax.random.key(1), max_steps=steps,
                                        log_every=log_every)
  s = np.arange(steps + 1)
  closed = TARGET + (1 - 2 * lr)**s[:, None] * (p0 - TARGET)       # [steps + 1, 3], float64
  np.testing.assert_allclose(params, closed[-1], rtol=1e-5)
  np.testing.assert_allclose(hist.loss, np.sum(np.square(closed[:-1] - TARGET), axis=1),
                             rtol=1e-5)
  np.testing.assert_allclose(hist.trajectory, closed[::log_every], rtol=1e-5, atol=1e-7)


def _nan_at_step_5(params, key):
  """params['t'] counts steps: its gradient is -1, so SGD(lr=1) makes t = s at step s. The
  loss is x^2 - t, so the loss before step 4 is -4, and nan from step 5 on."""
  del key
  t = params['t']
  return jnp.square(params['x']) - t + jnp.where(t >= 4.5, jnp.nan, 0.0)


def test_nan_guard_names_step_and_last_finite_loss():
  """A loss that becomes nan at step 5 raises FloatingPointError naming step 5 and the last
  finite loss (-4 at step 4), even though the chunk (log_every = 4) runs steps 4-7 at once."""
  params = {'x': jnp.zeros(()), 't': jnp.zeros(())}
  with pytest.raises(FloatingPointError, match=r'at step 5; last finite loss: -4 at step 4'):
    training.fit(_nan_at_step_5, params, optax.sgd(1.0), key=jax.random.key(0), max_steps=12,
                 log_every=4)


def test_bad_step_counts_raise():
  with pytest.raises(ValueError, match='log_every'):
    training.fit(_quadratic, jnp.zeros(3), optax.sgd(0.1), key=jax.random.key(0), max_steps=10,
                 log_every=4)
  with pytest.raises(ValueError, match='ckpt_every'):
    training.fit(_quadratic, jnp.zeros(3), optax.sgd(0.1), key=jax.random.key(0), max_steps=8,
                 log_every=4, ckpt_every=6)


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path):
  """fit(max_steps=20, workdir) then fit(max_steps=40, same workdir) resumes at step 20 and ends
  with the params, Adam state and per-step losses of one unbroken 40-step run. Exact equality:
  the same jitted steps run on the same numbers (a tolerance would hide a lost key or optimizer
  state). A third call with the same max_steps resumes at 40 and runs nothing."""
  workdir = str(tmp_path / 'run')
  kw = dict(key=jax.random.key(3), log_every=5, ckpt_every=10)
  opt = optax.adam(0.05)
  p0 = jnp.zeros(3)
  _, h1 = training.fit(_noisy_quadratic, p0, opt, max_steps=20, workdir=workdir, **kw)
  assert h1.resumed_from == 0
  assert os.path.isdir(os.path.join(workdir, 'checkpoints'))
  resumed, h2 = training.fit(_noisy_quadratic, p0, opt, max_steps=40, workdir=workdir, **kw)
  unbroken, h3 = training.fit(_noisy_quadratic, p0, opt, max_steps=40, **kw)
  assert h2.resumed_from == 20
  np.testing.assert_array_equal(resumed, unbroken)
  np.testing.assert_array_equal(h2.loss, h3.loss)
  np.testing.assert_array_equal(h2.grad_norm, h3.grad_norm)
  np.testing.assert_array_equal(h2.trajectory, h3.trajectory)
  again, h4 = training.fit(_noisy_quadratic, p0, opt, max_steps=40, workdir=workdir, **kw)
  assert h4.resumed_from == 40 and h4.loss.shape == (40,)
  np.testing.assert_array_equal(again, unbroken)


def test_grad_tol_stops_early():
  """With grad_tol the loop stops at the first chunk end whose last gradient norm is <= tol:
  SGD(lr 0.1) shrinks |grad| = 2|p - t| by 0.8 per step from ~4.6, so |grad| <= 1e-3 after
  ~38 steps, i.e. at step 40 with log_every = 10; converged is True and min_steps is honoured."""
  params, hist = training.fit(_quadratic, jnp.zeros(3), optax.sgd(0.1), key=jax.random.key(0),
                              max_steps=1000, log_every=10, grad_tol=1e-3)
  assert hist.converged
  assert len(hist.loss) == 40
  assert hist.grad_norm[-1] <= 1e-3 < hist.grad_norm[-11]
  _, hist = training.fit(_quadratic, jnp.zeros(3), optax.sgd(0.1), key=jax.random.key(0),
                         max_steps=1000, log_every=10, grad_tol=1e-3, min_steps=100)
  assert hist.converged and len(hist.loss) == 100


def _regression_loss(mesh):
  """Least squares for a fixed w on fresh covariates (64 sequences a step), sharded over mesh."""
  from icl_jax import garg
  w = jnp.array([1.0, -2.0, 0.5, 3.0])

  def loss(params, key):
    s = garg.batch(key, 64, mesh=mesh, num_points=6, d=4, random_cov=True)
    return jnp.mean(jnp.square(s.x @ (params - w)))
  return loss


def test_data_parallel_fit_reproduces_one_device_loss_curve():
  """Adam on a batch sharded over 8 simulated CPU devices (conftest) against the same run on a
  one-device mesh: the gradient is an all-reduce of per-shard sums instead of one sum, so the
  curves agree to float32 summation order (rtol 1e-5 over 30 steps), and the state is
  replicated on every device. Fails if a shard's prompts differ (keys not by index), if a
  device's gradient is dropped or counted twice, or if the state is not replicated."""
  assert jax.device_count() == 8
  meshes = {n: jax.sharding.Mesh(np.asarray(jax.devices()[:n]), ('data',)) for n in (1, 8)}
  out = {}
  for n, mesh in meshes.items():
    out[n] = training.fit(_regression_loss(mesh), jnp.zeros(4), optax.adam(0.05),
                          key=jax.random.key(3), max_steps=30, log_every=10, mesh=mesh,
                          keep_trajectory=False)
  np.testing.assert_allclose(out[8][1].loss, out[1][1].loss, rtol=1e-5)
  np.testing.assert_allclose(out[8][0], out[1][0], rtol=1e-5, atol=1e-6)
  assert out[8][0].sharding.is_fully_replicated and len(out[8][0].sharding.device_set) == 8
  assert out[8][1].trajectory == ()
  assert out[8][1].loss[-1] < 0.5 * out[8][1].loss[0]   # it learned: Adam (0.05) moves toward w


# --- sample_fn / resample_every and per_model (the functional-GD suite's training recipe) -----

def _draw(key):
  """A 'minibatch': 4 noisy targets around TARGET (each batch visibly different)."""
  return TARGET[None, :] + jax.random.normal(key, (4, 3))


def _batch_loss(params, batch):
  return jnp.mean(jnp.sum(jnp.square(params[None, :] - batch), axis=1))


_ADAM = optax.adam(0.1)


@jax.jit
def _hand_step(params, state, batch):
  loss, g = jax.value_and_grad(_batch_loss)(params, batch)
  updates, state = _ADAM.update(g, state, params)
  return optax.apply_updates(params, updates), state, loss


def _hand_loop(key, steps, resample_every, p0):
  """The recipe written out: one batch per block of resample_every steps, drawn from
  fold_in(key, step // resample_every), and a plain optax Adam step per step (a Python loop
  of jitted steps, no scan)."""
  params, state = p0, _ADAM.init(p0)
  losses = []
  for step in range(steps):
    if step % resample_every == 0:
      batch = _draw(jax.random.fold_in(key, step // resample_every))
    params, state, loss = _hand_step(params, state, batch)
    losses.append(float(loss))
  return params, np.asarray(losses)


def test_fit_with_sample_fn_draws_one_batch_per_block():
  """fit(sample_fn=_draw, resample_every=3) over 12 steps (log_every 6) follows the hand-written
  loop: a batch from fold_in(key, step // 3) serves steps 3b..3b+2, Adam steps in between.
  rtol 1e-5: the same float32 arithmetic, fused differently (scan body vs eager jit). Fails if
  the batch is redrawn every step (then the loss within a block would not fall as it does on a
  fixed batch, and differ from the hand loop's from step 1 on), drawn from fold_in(key, step),
  or the block index is off by one."""
  key, p0 = jax.random.key(7), jnp.zeros(3)
  params, hist = training.fit(_batch_loss, p0, _ADAM, key=key, max_steps=12, log_every=6,
                              ckpt_every=6, sample_fn=_draw, resample_every=3)
  want_params, want_loss = _hand_loop(key, 12, 3, p0)
  np.testing.assert_allclose(hist.loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(params, want_params, rtol=1e-5, atol=1e-6)
  # The alternative schemes give other losses (so the comparison has teeth).
  every_step, _ = _hand_loop(key, 12, 1, p0)
  assert not np.allclose(every_step, want_params, rtol=1e-3)
  _, shifted_loss = _hand_loop(jax.random.fold_in(key, 1), 12, 3, p0)
  assert not np.allclose(shifted_loss, want_loss, rtol=1e-3)


def test_resume_with_sample_fn_matches_uninterrupted_run(tmp_path):
  """fit(sample_fn, resample_every=5) stopped at step 20 (checkpointed) and resumed to 40 ends
  with the params and losses of one unbroken 40-step run, exactly: the batch of a block depends
  only on fold_in(key, step // resample_every), which a resumed run recomputes from the saved
  step. Fails if a resumed run restarts the block count at 0 or keeps a batch in its state."""
  workdir = str(tmp_path / 'run')
  kw = dict(key=jax.random.key(4), log_every=10, ckpt_every=10, sample_fn=_draw,
            resample_every=5)
  opt, p0 = optax.adam(0.05), jnp.zeros(3)
  training.fit(_batch_loss, p0, opt, max_steps=20, workdir=workdir, **kw)
  resumed, h2 = training.fit(_batch_loss, p0, opt, max_steps=40, workdir=workdir, **kw)
  unbroken, h3 = training.fit(_batch_loss, p0, opt, max_steps=40, **kw)
  assert h2.resumed_from == 20
  np.testing.assert_array_equal(resumed, unbroken)
  np.testing.assert_array_equal(h2.loss, h3.loss)


def test_per_model_clip_adam_equals_separate_optimizers():
  """per_model(chain(clip_by_global_norm(1), adam)) on params stacked over 3 models (a dict of
  two leaves) equals running the chain on each model's slice alone, over 5 updates with
  gradients of very different norms (model 0 clipped, model 2 not); rtol 1e-6. The plain chain
  on the stacked tree differs (one global norm couples the models), so the test has teeth.
  Fails if per_model clips by the norm of the whole stack or shares Adam moments."""
  inner = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
  rng = np.random.default_rng(0)
  scales = np.array([10.0, 1.0, 0.01], np.float32)
  params = {'w': jnp.asarray(rng.standard_normal((3, 2, 2)), jnp.float32),
            'b': jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)}
  grads = [{'w': jnp.asarray(scales[:, None, None] * rng.standard_normal((3, 2, 2)), jnp.float32),
            'b': jnp.asarray(scales[:, None] * rng.standard_normal((3, 4)), jnp.float32)}
           for _ in range(5)]

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def run(opt, p, gs, with_params=True):
    state = opt.init(p)
    for g in gs:
      updates, state = opt.update(g, state, p) if with_params else opt.update(g, state)
      p = optax.apply_updates(p, updates)
    return p

  stacked = run(training.per_model(inner), params, grads)
  stacked_no_params = run(training.per_model(inner), params, grads, with_params=False)
  take = lambda tree, m: jax.tree.map(lambda a: a[m], tree)
  for m in range(3):
    alone = run(inner, take(params, m), [take(g, m) for g in grads])
    for name in ('w', 'b'):
      np.testing.assert_allclose(stacked[name][m], alone[name], rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(stacked_no_params[name][m], alone[name], rtol=1e-6, atol=1e-7)
  coupled = run(inner, params, grads)
  assert not np.allclose(coupled['w'][2], stacked['w'][2], rtol=1e-3)


def test_resample_every_must_divide_log_every():
  """log_every = 10 with resample_every = 3 (or 0) raises ValueError naming both before any
  work: a block of resample_every steps must not straddle a jitted chunk."""
  for bad in (3, 0):
    with pytest.raises(ValueError, match=f'log_every=10.*resample_every={bad}'):
      training.fit(_batch_loss, jnp.zeros(3), optax.sgd(0.1), key=jax.random.key(0),
                   max_steps=20, log_every=10, sample_fn=_draw, resample_every=bad)


def test_epoch_batch_visits_every_item_once_per_epoch_in_a_fresh_order():
  """Fails if an epoch repeats or misses an item, two epochs share an order, the batch depends
  on anything but (step, key), or a bad batch size is accepted."""
  data = {'x': jnp.arange(10) * 10, 'y': jnp.arange(10)}
  key = jax.random.key(3)
  batch = jax.jit(lambda s: training.epoch_batch(data, s, key, 3))
  epochs = [np.concatenate([np.asarray(batch(e * 3 + i)['y']) for i in range(3)])
            for e in range(2)]
  for seen in epochs:
    assert len(set(seen.tolist())) == 9            # 3 batches of 3, one item left out per epoch
  assert not np.array_equal(epochs[0], epochs[1])
  b = batch(4)
  np.testing.assert_array_equal(b['x'], 10 * b['y'])   # leaves stay aligned
  np.testing.assert_array_equal(b['y'], batch(4)['y'])
  with pytest.raises(ValueError, match='batch_size'):
    training.epoch_batch(data, 0, key, 11)
