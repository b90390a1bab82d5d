"""The pmapped step and the stage loop: device-count invariance, skipping of
non-finite updates, bitwise resume, and main.py end to end."""

import functools
import os
import subprocess
import sys

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
import pytest

from diffusion_distill import diffusion, inference, layout, load_sampler
from diffusion_distill import checkpoints, models, trainer
from diffusion_distill.stages import teacher as teacher_stage
from diffusion_distill.train_state import TrainState
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _noise_from_batch_loss(params, batch, rng, *, model_fn):
  """The teacher loss with t and eps taken from the batch, not the rng, so
  that 1 and 4 devices see the same noise for the same example."""
  del rng
  x, logsnr = batch['image'], batch['logsnr']
  z = diffusion.diffuse(x, batch['noise'], logsnr)
  out = model_fn(params, z, logsnr, batch['label'], False, None)
  x_hat = diffusion.predict(out, z, logsnr, 'x').x_hat
  per_example = diffusion.loss_weight(logsnr, 'snr_trunc') * (
      diffusion.mean_flat((x - x_hat)**2))
  return per_example.mean(), per_example


@pytest.fixture(scope='module')
def tiny_model(digits_dir):
  config = tiny.tiny_config(digits_dir)
  model = models.create_model(config)
  params = models.init_params(model, config, jax.random.PRNGKey(0))
  return config, model, params


def _global_batch(n=8, seed=0):
  rs = np.random.RandomState(seed)
  return {'image': rs.uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32),
          'noise': rs.normal(size=(n, 8, 8, 1)).astype(np.float32),
          'logsnr': rs.uniform(-10, 10, (n,)).astype(np.float32),
          'label': rs.randint(0, 10, (n,)).astype(np.int32)}


def _run_steps(model, params, num_devices, batches, skip_nonfinite=True):
  optimizer = trainer.make_optimizer(
      trainer.teacher_schedule(1e-3, 1), weight_decay=1e-3,
      grad_clip=1.)
  loss_fn = functools.partial(_noise_from_batch_loss,
                              model_fn=inference.make_model_fn(model))
  step = jax.pmap(
      functools.partial(trainer.train_step, loss_fn=loss_fn,
                        optimizer=optimizer, ema_decay=0.9,
                        skip_nonfinite=skip_nonfinite),
      axis_name=trainer.AXIS, devices=jax.local_devices()[:num_devices])
  state = TrainState.create(params, optimizer, jax.random.PRNGKey(1))
  state = flax.jax_utils.replicate(state, jax.local_devices()[:num_devices])
  metrics = []
  for batch in batches:
    shard = jax.tree.map(
        lambda a: a.reshape((num_devices, -1) + a.shape[1:]), batch)
    state, m = step(state, shard)
    metrics.append(jax.device_get(jax.tree.map(lambda a: a[0], m)))
  return jax.device_get(jax.tree.map(lambda a: a[0], state)), metrics


def test_teacher_learning_rate_warms_up_then_stays_or_decays_to_zero(
    tiny_model):
  config, model, _ = tiny_model
  config = config.copy_and_resolve_references()
  config.train.learning_rate, config.train.warmup_steps = 1e-3, 10
  lr = lambda c, s: float(teacher_stage.make_teacher_step(
      c, model).learning_rate_fn(s))
  config.train.decay_steps = 0
  assert [lr(config, s) for s in (0, 5, 10, 110, 10**6)] == pytest.approx(
      [0., 5e-4, 1e-3, 1e-3, 1e-3])
  # Cosine from the end of the warm-up (10) to 0 at step 110.
  config.train.decay_steps = 110
  assert [lr(config, s) for s in (5, 10, 60, 110, 500)] == pytest.approx(
      [5e-4, 1e-3, 5e-4, 0., 0.], abs=1e-9)


@pytest.mark.slow
def test_four_devices_equal_one_device(tiny_model):
  assert jax.local_device_count() == 4
  _, model, params = tiny_model
  batches = [_global_batch(8, seed) for seed in range(2)]
  one, m1 = _run_steps(model, params, 1, batches)
  four, m4 = _run_steps(model, params, 4, batches)
  np.testing.assert_allclose(m1[-1]['loss'], m4[-1]['loss'], rtol=1e-5)
  assert int(four.step) == 2
  changed = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                         four.params, params)
  assert max(jax.tree.leaves(changed)) > 1e-4  # the steps did something
  for name, a, b in (('params', one.params, four.params),
                     ('ema_params', one.ema_params, four.ema_params),
                     ('opt_state', one.opt_state, four.opt_state)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=name)


def test_nonfinite_update_is_skipped_and_counted(tiny_model):
  _, model, params = tiny_model
  bad = _global_batch(8)
  bad['image'][3, 2, 2, 0] = np.nan
  state, metrics = _run_steps(model, params, 4, [bad])
  assert metrics[0]['nonfinite_updates'] == 1.
  assert int(state.nonfinite_in_a_row) == 1
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  state, _ = _run_steps(model, params, 4, [bad], skip_nonfinite=False)
  assert not np.all(np.isfinite(state.params['conv_out']['kernel']))


# k steps per call against single steps: the same state to float rounding.
# A parameter whose true gradient is 0 (a bias before a GroupNorm) gets
# rounding noise g of about 1e-10 as its gradient, which Adam turns into
# steps of about learning_rate * |g| / eps = 1e-5 (eps = 1e-8): such
# parameters follow the noise, hence the absolute tolerance of a few steps.
_ROUNDING = dict(rtol=1e-4, atol=5e-5)


class _Crash(Exception):
  pass


def _crash_at(step_to_crash):
  def hook(step):
    if step == step_to_crash:
      raise _Crash()
  return hook


def _target_run(target_decay, num_steps=3, lr=0.1):
  """SGD on sum((w - 1)^2 + w * target): the update shows which target
  network the loss saw. Returns [(params, target)] after each step."""
  def loss_fn(params, batch, rng, *, target_params):
    del batch, rng
    per = jnp.square(params['w'] - 1.) + params['w'] * target_params['w']
    return per.sum(), per

  step = trainer.make_step(loss_fn, optax.sgd(lr), lambda s: lr,
                           ema_decay=0., target_decay=target_decay,
                           devices=jax.local_devices()[:1])
  state = step.init_state({'w': jnp.asarray([0., 0.5, 2.])},
                          jax.random.PRNGKey(0))
  state = trainer.replicate(state, jax.local_devices()[:1])
  out = []
  for _ in range(num_steps):
    state, _ = step(state, jnp.zeros((1, 1)), ())
    host = jax.device_get(jax.tree.map(lambda a: a[0], state))
    out.append((host.params['w'], host.target_params['w']))
  return out


@pytest.mark.parametrize('rate', [0., 1., 0.3])
def test_target_network_moves_at_its_rate(rate):
  """Rate 0: a copy of the parameters; 1: frozen at the start; between:
  the moving average. The loss sees the target as it was before the update,
  and its gradient does not flow into the target."""
  init = np.asarray([0., 0.5, 2.], np.float32)
  params, target = init, init
  for new_params, new_target in _target_run(rate):
    # d/dw of the loss with the target held fixed.
    expected = params - 0.1 * (2. * (params - 1.) + target)
    np.testing.assert_allclose(new_params, expected, rtol=1e-6)
    np.testing.assert_allclose(
        new_target, rate * target + (1. - rate) * new_params, rtol=1e-6)
    params, target = new_params, new_target
  if rate == 0.:
    np.testing.assert_array_equal(target, params)
  if rate == 1.:
    np.testing.assert_array_equal(target, init)


def test_a_state_without_target_restores_from_a_checkpoint_saved_before(
    tmp_path):
  """A stage without a target network saves exactly the fields it saved
  before the state could carry one: a checkpoint of those fields alone (as
  older code wrote them) restores, and a state with a target round-trips."""
  optimizer = trainer.make_optimizer(lambda s: 1e-3, grad_clip=1.)
  params = {'w': np.arange(4, dtype=np.float32)}
  state = TrainState.create(params, optimizer, jax.random.PRNGKey(0))
  older = {name: getattr(state, name) for name in (
      'step', 'params', 'ema_params', 'opt_state', 'rng',
      'nonfinite_in_a_row')}
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'c'))
  ckpt.save(1, older, {'stage': 'teacher'})
  restored, _, _ = ckpt.restore(state)
  assert restored.target_params is None
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  np.testing.assert_array_equal(restored.params['w'], params['w'])
  with_target = TrainState.create(params, optimizer, jax.random.PRNGKey(0),
                                  with_target=True).replace(
                                      target_params={'w': -params['w']})
  ckpt.save(2, with_target, {'stage': 'consistency'})
  restored, _, _ = ckpt.restore(with_target)
  np.testing.assert_array_equal(restored.target_params['w'], -params['w'])


@pytest.mark.slow
def test_teacher_resume_is_bitwise_identical(digits_dir, tmp_path):
  config = tiny.tiny_config(digits_dir)
  straight = trainer.run_stage(teacher_stage.teacher_stage(config, str(tmp_path / 'a')))
  stage = teacher_stage.teacher_stage(config, str(tmp_path / 'b'))
  stage.step_hook = _crash_at(5)  # after the checkpoint at step 4
  with pytest.raises(_Crash):
    trainer.run_stage(stage)
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'b' / 'teacher' / 'checkpoints'))
  assert ckpt.latest_step() == 4
  resumed = trainer.run_stage(teacher_stage.teacher_stage(config, str(tmp_path / 'b')))
  assert int(resumed.step) == int(straight.step) == 6
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert os.path.exists(tmp_path / 'b' / 'teacher' / 'samples' /
                        'step_00000006.png')

  # Two steps per dispatch: checkpoints and hooks on multiples of 2, and the
  # state of six single steps to float rounding (see
  # test_steps_per_dispatch_gives_the_state_of_single_steps).
  config.train.steps_per_dispatch = 2
  stage = teacher_stage.teacher_stage(config, str(tmp_path / 'c'))
  hooked = []
  stage.step_hook = hooked.append
  scanned = trainer.run_stage(stage)
  assert hooked == [2, 4, 6]
  assert int(scanned.step) == 6
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(scanned)):
    np.testing.assert_allclose(a, b, **_ROUNDING)
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'c' / 'teacher' / 'checkpoints'))
  assert ckpt.all_steps() == [4, 6]


@pytest.mark.slow
def test_a_stage_traces_and_compiles_its_step_once(tiny_model, tmp_path):
  """Step 2 is fed step 1's output state: the same shardings as the state
  replicated for step 1, so no second trace or compile (trainer.replicate)."""
  config, model, _ = tiny_model
  stage = teacher_stage.teacher_stage(config, str(tmp_path))
  loss_fn, traces = teacher_stage.teacher_loss_fn(config, model), []

  def counted(*args, **kwargs):
    traces.append(1)
    return loss_fn(*args, **kwargs)

  stage.step = trainer.make_step(counted, stage.step.optimizer,
                                 stage.step.learning_rate_fn, ema_decay=0.9)
  state = trainer.run_stage(stage)
  assert int(state.step) == stage.num_steps > 2
  assert len(traces) == 1


@pytest.mark.slow
def test_steps_per_dispatch_gives_the_state_of_single_steps(tiny_model):
  """Four single-step calls, two calls of two steps, one call of four: the
  same state to float rounding (_ROUNDING). Not bit for bit: in the k-step
  program XLA fuses consecutive steps' element-wise updates of a leaf into
  one kernel (in the compiled HLO of this tiny model: conv_out's Adam second
  moment, steps 1 and 2 in one fusion), whose arithmetic rounds differently
  from the two separate kernels of single steps; after 2 steps the kernel
  differs by about 1e-10. An optimization barrier between the steps does not
  stop that fusion on XLA:CPU. On CPU the k steps are straight-line code,
  without a loop (trainer.scan_unroll)."""
  config, model, params = tiny_model
  stage = teacher_stage.teacher_stage(config, '/unused')
  batches = [jax.tree.map(lambda a: a.reshape((4, -1) + a.shape[1:]),
                          dict(image=b['image'], label=b['label']))
             for b in (_global_batch(8, seed) for seed in range(4))]
  stack = lambda bs: jax.tree.map(lambda *b: np.stack(b, axis=1), *bs)
  loss_fn = teacher_stage.teacher_loss_fn(config, model)
  results, steps = [], {}
  for k in (1, 2, 4):
    step = steps[k] = trainer.make_step(loss_fn, stage.step.optimizer,
                             stage.step.learning_rate_fn, ema_decay=0.9,
                             steps_per_dispatch=k)
    state = flax.jax_utils.replicate(
        TrainState.create(params, step.optimizer, jax.random.PRNGKey(1)))
    losses = []
    for i in range(0, 4, k):
      state, metrics = step(state, batches[i] if k == 1 else
                            stack(batches[i:i + k]), ())
      losses += list(np.asarray(metrics['loss']).reshape(-1)[:k])
    state_r = state
    results.append((jax.device_get(jax.tree.map(lambda a: a[0], state)),
                    losses))
  (one, losses_1) = results[0]
  assert int(one.step) == 4 and len(losses_1) == 4
  for k, (state, losses) in zip((2, 4), results[1:]):
    assert int(state.step) == 4, k
    np.testing.assert_allclose(losses, losses_1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(state)):
      np.testing.assert_allclose(a, b, **_ROUNDING, err_msg=f'k={k}')
  # Unrolled: no loop around the steps (the step itself has loops, inside
  # random number generation).
  loops = lambda lowered: lowered.as_text().count('stablehlo.while')
  assert loops(steps[4].fn.lower(state_r, stack(batches), ())) == loops(
      steps[1].fn.lower(state_r, batches[0]))
  moved = [float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(one.params), jax.tree.leaves(params))]
  assert max(moved) > 1e-4


def _main(workdir, data_dir, *flags):
  cmd = [sys.executable, 'main.py', '--config=tests/tiny.py',
         f'--workdir={workdir}', f'--config.dataset.data_dir={data_dir}',
         *flags]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=600, check=False)


@pytest.mark.slow
def test_main_trains_checkpoints_and_resumes(digits_dir, tmp_path):
  workdir = str(tmp_path / 'wd')
  first = _main(workdir, digits_dir, '--config.train.num_steps=4')
  assert first.returncode == 0, first.stderr[-3000:]
  ckpt_dir = os.path.join(workdir, 'teacher', 'checkpoints')
  assert checkpoints.Checkpointer(ckpt_dir).latest_step() == 4
  second = _main(workdir, digits_dir, '--config.train.num_steps=6')
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'resuming from step 4' in second.stderr
  assert checkpoints.Checkpointer(ckpt_dir).latest_step() == 6
  sampler = load_sampler(workdir)
  assert sampler.num_steps is None  # a continuous-time teacher
  images = sampler.sample(jax.random.PRNGKey(0), 3, num_steps=4)
  assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 1)
  out = tmp_path / 'generated'
  result = subprocess.run(
      [sys.executable, 'sample.py', f'--workdir={workdir}', '--num_samples=3',
       '--num_steps=2', '--method=ancestral', f'--output_dir={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(out)) == ['000000.png', '000001.png', '000002.png',
                                     'grid.png']
  assert 'Traceback' not in result.stderr and 'orbax' not in result.stderr
  # The grid of 8x8 images is enlarged for viewing.
  with Image.open(out / 'grid.png') as grid:
    assert min(grid.size) >= 256


# Importing TensorFlow or TFDS fails in the child: sampling must not need them.
_WITHOUT_TENSORFLOW = """
import importlib.abc, importlib.machinery, runpy, sys
class Refuse(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
      return importlib.machinery.ModuleSpec(name, self)
  def create_module(self, spec):
    raise ImportError('importing ' + spec.name + ' fails here')
sys.meta_path.insert(0, Refuse())
import jax
from diffusion_distill import load_sampler
images = load_sampler(sys.argv[1]).sample(jax.random.PRNGKey(0), 2, num_steps=2)
assert images.shape == (2, 8, 8, 1), images.shape
sys.argv = ['sample.py', '--workdir=' + sys.argv[1], '--num_samples=2',
            '--output_dir=' + sys.argv[2]]
runpy.run_path('sample.py', run_name='__main__')
"""


@pytest.mark.slow
def test_sampling_needs_neither_tensorflow_nor_tfds(digits_dir, tmp_path):
  workdir = str(tmp_path / 'wd')
  assert _main(workdir, digits_dir, '--config.train.num_steps=2',
               '--config.train.checkpoint_every_steps=2').returncode == 0
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-c', _WITHOUT_TENSORFLOW, workdir, str(out)],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(out)) == ['000000.png', '000001.png', 'grid.png']


@pytest.mark.slow
def test_missing_cifar10_stops_before_training(tmp_path):
  empty = tmp_path / 'tfds'
  empty.mkdir()
  workdir = tmp_path / 'wd'
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cifar10_teacher.py',
       f'--workdir={workdir}', f'--config.dataset.data_dir={empty}',
       '--allow_cpu'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'TFDS_DATA_DIR' in last, last
  assert 'Traceback' not in result.stderr
  assert not (workdir / 'teacher').exists()


@pytest.mark.slow
def test_missing_inception_weights_stop_before_any_work(tmp_path):
  workdir = tmp_path / 'wd'
  env = dict(os.environ,
             DIFFUSION_DISTILL_INCEPTION_WEIGHTS=str(tmp_path / 'none.npz'))
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cifar10_distill.py',
       f'--workdir={workdir}', "--config.stages=('distill', 'eval')",
       '--allow_cpu'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
      env=env)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'convert_inception_weights.py' in last
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


def test_sampler_copies_parameters_to_the_device_once(tiny_model):
  config, model, params = tiny_model
  sampler = layout.make_sampler(config, model, params)
  rng = jax.random.PRNGKey(0)
  first = sampler.sample(rng, 2, num_steps=2)
  on_device = sampler._params_on_device()  # pylint: disable=protected-access
  np.testing.assert_array_equal(sampler.sample(rng, 2, num_steps=2), first)
  assert sampler._params_on_device() is on_device  # pylint: disable=protected-access
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(on_device))
  other = sampler.with_params(jax.tree.map(lambda x: x + 0.05, params))
  assert other._params_on_device() is not on_device  # pylint: disable=protected-access
  assert not np.array_equal(other.sample(rng, 2, num_steps=2), first)


def test_sampler_draws_its_noise_and_labels_as_documented(digits_dir):
  """sample() draws z and labels inside its one compiled call, from `rng`.

  Its images equal those of the step-by-step recipe (split the key, draw
  z ~ N(0, I) and uniform labels, run the compiled DDIM sampler), and
  labels given by the caller replace the drawn ones.
  """
  config = tiny.tiny_config(digits_dir)
  config.dataset.class_conditional = True
  model = models.create_model(config)
  params = models.init_params(model, config, jax.random.PRNGKey(0))
  # Off the zero-initialized output layer, so that the images depend on z
  # and the labels.
  params = jax.tree.map(
      lambda x: x + 0.05 * np.random.default_rng(x.size).standard_normal(
          x.shape).astype(x.dtype), params)
  sampler = layout.make_sampler(config, model, params)
  assert sampler.num_classes == 10
  rng = jax.random.PRNGKey(5)
  images = sampler.sample(rng, 4, num_steps=2)

  rng_noise, rng_sampler = jax.random.split(rng)
  rng_z, rng_y = jax.random.split(rng_noise)
  z = jax.random.normal(rng_z, (4, 8, 8, 1))
  labels = jax.random.randint(rng_y, (4,), 0, 10)
  run = jax.jit(sampler._program().run_fn('ddim'))  # pylint: disable=protected-access
  expected = np.asarray(run(params, z, labels, 2, rng_sampler, 0.))
  np.testing.assert_array_equal(images, expected)

  np.testing.assert_array_equal(
      sampler.sample(rng, 4, num_steps=2, labels=np.asarray(labels)), images)
  other = (np.asarray(labels) + 1) % 10
  assert not np.array_equal(
      sampler.sample(rng, 4, num_steps=2, labels=other), images)
  with pytest.raises(ValueError, match=r'labels must have shape \(4,\)'):
    sampler.sample(rng, 4, num_steps=2, labels=[1, 2])


@pytest.mark.slow
def test_bfloat16_teacher_trains_like_float32(digits_dir):
  """model.dtype='bfloat16' computes activations in bf16; parameters,
  optimizer state, EMA and the loss stay float32. After 80 steps on digits
  the mean loss of the last 20 is within 10% of float32's (the two runs
  see the same batches and noise)."""
  losses, states = {}, {}
  for dtype in ('float32', 'bfloat16'):
    config = tiny.tiny_config(digits_dir, **{'model.dtype': dtype})
    stage = teacher_stage.teacher_stage(config, '/unused')
    state = flax.jax_utils.replicate(TrainState.create(
        stage.init_params, stage.step.optimizer, stage.rng))
    batches = stage.make_iterator(0)
    history = []
    for _ in range(80):
      state, metrics = stage.step(state, next(batches), ())
      history.append(metrics['loss'])
    losses[dtype] = float(np.mean(jax.device_get(history)[-20:]))
    states[dtype] = jax.device_get(jax.tree.map(lambda a: a[0], state))
  print(f'mean loss of steps 61-80: {losses}')
  assert {x.dtype for x in jax.tree.leaves(states['bfloat16'])
          if np.issubdtype(x.dtype, np.floating)} == {np.dtype('float32')}
  assert losses['bfloat16'] == pytest.approx(losses['float32'], rel=0.1)
  # Not the same computation: bf16 activations round differently.
  assert losses['bfloat16'] != losses['float32']
