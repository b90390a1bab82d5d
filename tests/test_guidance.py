"""Guided distillation: classifier-free guidance, stage 1 (a student that
takes w), stage 2 (its progressive distillation), sampling and the pipeline.

The math is checked against class-conditional Gaussian data, whose
conditional and unconditional denoisers are exact (tests/gaussian.py).
"""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_distill import checkpoints, config_checks, diffusion, inference
from diffusion_distill import layout
from diffusion_distill.stages import distill
from diffusion_distill.stages import evaluate
from diffusion_distill.stages import guide as guide_stage
from diffusion_distill import losses, models, preflight, samplers, schedules
from diffusion_distill import teacher as teacher_lib
from diffusion_distill.train_state import TrainState
from tests import gaussian, tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, 'tests', 'fault_runner.py')


def _logsnr_fn(t):
  return schedules.cosine_logsnr(t, -20., 20.)


@pytest.fixture(scope='module')
def data():
  """Class-conditional Gaussians (3 classes, 3 dims), noised at random t."""
  means, covs, priors = gaussian.make_class_gaussians()
  exact = gaussian.exact_class_x_hat_fn(means, covs, priors)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  batch = 64
  labels = jax.random.randint(k1, (batch,), 0, 3)
  logsnr = _logsnr_fn(jax.random.uniform(k2, (batch,)))
  z = jax.random.normal(k3, (batch, 3)) * 1.5
  return means, covs, priors, exact, labels, logsnr, z


def _closed_form(means, covs, priors, z, logsnr, labels, w):
  """(1 + w) E[x | z, c] - w E[x | z], in NumPy float64, one example at a time."""
  out = []
  for zz, ll, c, ww in zip(*map(np.asarray, (z, logsnr, labels, w))):
    alpha2 = 1. / (1. + np.exp(-ll))
    alpha, sigma2 = np.sqrt(alpha2), 1. / (1. + np.exp(ll))
    cond, weights = [], []
    for k in range(len(means)):
      m, cov = np.asarray(means[k], np.float64), np.asarray(covs[k], np.float64)
      marginal = alpha2 * cov + sigma2 * np.eye(len(m))
      resid = zz - alpha * m
      cond.append(m + alpha * cov @ np.linalg.solve(marginal, resid))
      weights.append(np.log(priors[k]) - 0.5 * (
          resid @ np.linalg.solve(marginal, resid) +
          np.linalg.slogdet(marginal)[1]))
    weights = np.exp(np.array(weights) - max(weights))
    uncond = (weights / weights.sum()) @ np.array(cond)
    out.append((1 + ww) * cond[c] - ww * uncond)
  return np.array(out)


def test_stage1_target_is_the_guided_prediction_in_closed_form(data):
  means, covs, priors, exact, labels, logsnr, z = data
  w = jnp.linspace(0., 4., labels.shape[0])
  target = losses.guided_target(exact, z, logsnr, labels,
                                jnp.full_like(labels, 3), w)
  np.testing.assert_allclose(
      target, _closed_form(means, covs, priors, z, logsnr, labels, w),
      rtol=1e-4, atol=1e-4)
  # w = 0 is the conditional prediction, exactly.
  zero = losses.guided_target(exact, z, logsnr, labels,
                              jnp.full_like(labels, 3), 0.)
  np.testing.assert_array_equal(zero, exact(z, logsnr, labels))
  # Guidance moves the prediction away from the unconditional one.
  uncond = exact(z, logsnr, jnp.full_like(labels, 3))
  gap = lambda x: float(jnp.mean(jnp.abs(x[-8:] - uncond[-8:])))
  assert gap(target) > gap(zero) > 0


def _x_param_model_fn(denoiser):
  """A `model_fn` of mean_type 'x' whose output is `denoiser(z, logsnr, y)`."""
  return lambda params, z, logsnr, y, train, rng: denoiser(z, logsnr, y)


def test_stage1_loss_is_zero_for_the_guided_teacher_and_not_otherwise(data):
  means, covs, priors, exact, labels, _, _ = data
  x = jax.random.multivariate_normal(jax.random.PRNGKey(5), means[labels],
                                     covs[labels])
  null = 3

  def oracle(z, logsnr, y):
    y, w = y
    return diffusion.guided_x_hat(exact(z, logsnr, y),
                                  exact(z, logsnr, jnp.full_like(y, null)), w)

  kwargs = dict(teacher_model_fn=lambda p, z, l, y, t, r: p['scale'] * exact(
      z, l, y), mean_type='x', weighting='snr_trunc', logsnr_fn=_logsnr_fn,
                w_range=(0., 4.), null_label=null)
  batch = {'image': x, 'label': labels}
  rng = jax.random.PRNGKey(1)
  loss, _ = losses.guidance_loss(
      {}, {'scale': 1.}, batch, rng,
      model_fn=_x_param_model_fn(oracle), **kwargs)
  assert float(loss) < 1e-8
  # The conditional teacher alone (w ignored) is not the target.
  unguided = _x_param_model_fn(lambda z, l, y: exact(z, l, y[0]))
  loss, _ = losses.guidance_loss({}, {'scale': 1.}, batch, rng,
                                 model_fn=unguided, **kwargs)
  assert float(loss) > 1e-3
  grad = jax.grad(lambda tp: losses.guidance_loss(
      {}, tp, batch, rng, model_fn=unguided, **kwargs)[0])({'scale': 1.})
  assert float(grad['scale']) == 0.


def test_stage2_at_one_w_is_algorithm_2(data):
  """With w fixed, the guided rounds' loss is Algorithm 2's for the model
  that takes that w: same target, same loss, same gradients."""
  means, covs, _, exact, labels, _, _ = data
  x = jax.random.multivariate_normal(jax.random.PRNGKey(6), means[labels],
                                     covs[labels])
  w0 = 1.5

  def w_model_fn(params, z, logsnr, y, train, rng):
    y, w = y
    assert w.shape == labels.shape
    return params['scale'] * exact(z, logsnr, y) + 0.1 * w[:, None]

  def fixed_w_model_fn(params, z, logsnr, y, train, rng):
    return w_model_fn(params, z, logsnr, (y, jnp.full(y.shape, w0)), train,
                      rng)

  common = dict(mean_type='x', weighting='snr_trunc', logsnr_fn=_logsnr_fn,
                num_student_steps=4)
  batch = {'image': x, 'label': labels}
  rng = jax.random.PRNGKey(2)
  rng_rest, _ = jax.random.split(rng)  # The guided loss splits off its w.
  guided = jax.value_and_grad(lambda p: losses.distill_loss(
      p, {'scale': 1.}, batch, rng, model_fn=w_model_fn, w_range=(w0, w0),
      **common)[0])({'scale': 0.9})
  plain = jax.value_and_grad(lambda p: losses.distill_loss(
      p, {'scale': 1.}, batch, rng_rest, model_fn=fixed_w_model_fn,
      **common)[0])({'scale': 0.9})
  np.testing.assert_allclose(guided[0], plain[0], rtol=1e-6)
  np.testing.assert_allclose(guided[1]['scale'], plain[1]['scale'],
                             rtol=1e-5)
  assert float(guided[0]) > 0


def test_label_dropout_rate_holds():
  labels = jnp.arange(200_000) % 10
  dropped = losses.drop_labels(jax.random.PRNGKey(3), labels, 0.1, 10)
  share = float(jnp.mean(dropped == 10))
  # Binomial: 4 standard deviations of the share at n = 200,000.
  assert abs(share - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 200_000)
  kept = dropped != 10
  np.testing.assert_array_equal(dropped[kept], labels[kept])
  # The teacher's loss gives its model the dropped labels, and only when
  # asked to (no extra random draw otherwise, so unguided runs are as
  # before).
  seen = []

  def spy(params, z, logsnr, y, train, rng):
    seen.append(y)
    return jnp.zeros_like(z)

  batch = {'image': jnp.zeros((4000, 2)), 'label': jnp.zeros(4000, jnp.int32)}
  kwargs = dict(model_fn=spy, mean_type='x', weighting='snr',
                logsnr_fn=_logsnr_fn)
  losses.teacher_loss({}, batch, jax.random.PRNGKey(4), **kwargs)
  losses.teacher_loss({}, batch, jax.random.PRNGKey(4), label_dropout=0.25,
                      null_label=10, **kwargs)
  assert int(jnp.sum(seen[0] == 10)) == 0
  assert 800 < int(jnp.sum(seen[1] == 10)) < 1200


@pytest.fixture(scope='module')
def guided_models(digits_dir):
  """A tiny class-conditional teacher with a null class, and a w-student."""
  config = tiny.tiny_config(digits_dir, **{
      'dataset.class_conditional': True, 'guidance.label_dropout': 0.1})
  rs = np.random.default_rng(0)
  jitter = lambda p: jax.tree.map(
      lambda a: (a + 0.05 * rs.standard_normal(a.shape)).astype(a.dtype), p)
  teacher_model = models.create_model(config)
  teacher = layout.make_sampler(config, teacher_model, jitter(
      models.init_params(teacher_model, config, jax.random.PRNGKey(0))))
  student_config = models.student_config(config, takes_guidance=True)
  student_model = models.create_model(student_config)
  student = layout.make_sampler(student_config, student_model, jitter(
      models.init_params(student_model, student_config,
                         jax.random.PRNGKey(1))), num_steps=2)
  return config, teacher, student


def test_guidance_zero_samples_as_the_unguided_sampler(guided_models):
  config, teacher, student = guided_models
  assert teacher.null_label == 10 and teacher.num_classes == 10
  assert student.guidance_range == (0., 4.)
  rng = jax.random.PRNGKey(7)
  for sampler, steps in ((teacher, 3), (student, 2)):
    plain = sampler.sample(rng, 6, num_steps=steps)
    np.testing.assert_array_equal(
        sampler.sample(rng, 6, num_steps=steps, guidance=0.), plain)
    assert not np.array_equal(
        sampler.sample(rng, 6, num_steps=steps, guidance=2.), plain)
  # The teacher's guided step is (1 + w) x_hat_c - w x_hat_null, clipped.
  params = teacher.params
  z = jax.random.normal(rng, (4, 8, 8, 1))
  logsnr = jnp.full((4,), 1.)
  labels = jnp.arange(4)
  fn = lambda y: samplers.model_x_hat_fn(
      teacher_fn, params, 'x', y, clip_x=False)(z, logsnr)
  teacher_fn = lambda p, zz, ll, y, t, r: teacher.model.apply(
      {'params': p}, zz, ll, y, train=False)
  want = jnp.clip(3. * fn(labels) - 2. * fn(jnp.full_like(labels, 10)), -1, 1)
  got = samplers.guided_x_hat_fn(teacher_fn, params, 'x', labels,
                                 jnp.full_like(labels, 10), 2.)(z, logsnr)
  np.testing.assert_allclose(got, want, atol=1e-6)
  del config


def test_guidance_mistakes_are_one_line(guided_models, digits_dir):
  config, teacher, student = guided_models
  rng = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r'guidance=5.0 is outside \[0.0, 4.0\]'):
    student.sample(rng, 2, guidance=5.)
  plain_config = tiny.tiny_config(digits_dir)
  plain_model = models.create_model(plain_config)
  plain = layout.make_sampler(plain_config, plain_model, teacher.params)
  with pytest.raises(ValueError, match='unconditional'):
    plain.sample(rng, 2, guidance=1.)
  # Config checks, before any work.
  for overrides, words in (
      ({'guidance.label_dropout': 0.1}, 'needs a class-conditional model'),
      ({'eval.guidance': (0., 1.)}, 'model trained with label dropout'),
      ({'dataset.class_conditional': True, 'guidance.label_dropout': 0.1,
        'eval.guidance': (0., 6.)}, 'use w in that range'),
      ({'stages': ('teacher', 'guide')}, "stage 'guide' distills")):
    bad = tiny.tiny_config(digits_dir, **overrides)
    with pytest.raises(config_checks.ConfigError, match=words) as e:
      config_checks.check_config(bad)
    assert '\n' not in str(e.value)
  del config


def test_teacher_without_label_dropout_cannot_be_guided(digits_dir, tmp_path):
  plain = tiny.tiny_config(digits_dir, **{'dataset.class_conditional': True})
  workdir = str(tmp_path / 'wd')
  ckpt = checkpoints.Checkpointer(
      layout.checkpoint_dir(layout.teacher_dir(workdir)))
  model = models.create_model(plain)
  params = models.init_params(model, plain, jax.random.PRNGKey(0))
  ckpt.save(2, TrainState.create(params, optax.sgd(1.),
                                 jax.random.PRNGKey(0)),
            layout.model_meta(plain, stage='teacher', num_sample_steps=None,
                              stage_num_steps=2))
  ckpt.close()
  guided = tiny.tiny_config(digits_dir, **{
      'dataset.class_conditional': True, 'guidance.label_dropout': 0.1})
  guided.stages = ('guide',)
  with pytest.raises(checkpoints.CheckpointError) as e:
    teacher_lib.resolve(guided, workdir,
                        guide_stage.teacher_need(guided))
  message = str(e.value)
  assert '\n' not in message
  assert 'was trained without label dropout' in message
  assert '--config.guidance.label_dropout' in message


def _save_model(config, directory, stage, before_the_fix=False):
  """A checkpoint of `stage`; `before_the_fix`: its meta as written before
  the teacher's loss received the label dropout (no null_class_trained)."""
  ckpt = checkpoints.Checkpointer(layout.checkpoint_dir(directory))
  model = models.create_model(config)
  params = models.init_params(model, config, jax.random.PRNGKey(0))
  meta = layout.model_meta(config, stage=stage, num_sample_steps=None,
                           stage_num_steps=2)
  if before_the_fix:
    del meta['guidance']['null_class_trained']
  ckpt.save(2, TrainState.create(params, optax.sgd(1.),
                                 jax.random.PRNGKey(0)), meta)
  ckpt.close()


def _one_line_about_the_null_class(error):
  message = str(error.value)
  assert '\n' not in message
  assert 'null class never learned the unconditional prediction' in message
  assert 'retrain the teacher' in message


@pytest.mark.slow
def test_teacher_from_before_the_fix_is_not_guided(digits_dir, tmp_path):
  """A guided teacher whose checkpoint predates label dropout in its loss:
  no guide stage, no resumed teacher, no guided evaluation or sampling;
  unguided evaluation and sampling work."""
  config = tiny.tiny_config(digits_dir, **{
      'dataset.class_conditional': True, 'guidance.label_dropout': 0.1})
  workdir = str(tmp_path / 'old')
  _save_model(config, layout.teacher_dir(workdir), 'teacher',
              before_the_fix=True)
  for stages in (('guide',), ('teacher', 'guide', 'distill', 'eval')):
    config.stages = stages
    with pytest.raises(checkpoints.CheckpointError) as e:
      preflight.check(config, workdir)
    _one_line_about_the_null_class(e)
  config.stages = ('eval',)
  config.eval.guidance = (0.0, 1.0)
  with pytest.raises(checkpoints.CheckpointError) as e:
    preflight.check(config, workdir)
  _one_line_about_the_null_class(e)
  config.eval.guidance = (0.0,)
  assert preflight.check(config, workdir).teachers['eval'] is not None

  sampler = layout.load_sampler(workdir)
  rng = jax.random.PRNGKey(0)
  with pytest.raises(ValueError) as e:
    sampler.sample(rng, 2, num_steps=2, guidance=1.)
  _one_line_about_the_null_class(e)
  assert sampler.sample(rng, 2, num_steps=2).shape == (2, 8, 8, 1)
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, 'sample.py', f'--workdir={workdir}', '--num_samples=2',
       '--num_steps=2', '--guidance=1', f'--output_dir={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: --guidance=1.0:') and 'retrain the teacher' in last
  assert 'Traceback' not in result.stderr and not out.exists()


def test_guided_student_from_before_the_fix_is_not_distilled(digits_dir,
                                                             tmp_path):
  config = tiny.tiny_config(digits_dir, **{
      'dataset.class_conditional': True, 'guidance.label_dropout': 0.1})
  workdir = str(tmp_path / 'old')
  _save_model(models.student_config(config, takes_guidance=True),
              guide_stage.directory(workdir), 'guide', before_the_fix=True)
  config.stages = ('distill',)
  with pytest.raises(checkpoints.CheckpointError) as e:
    teacher_lib.resolve(config, workdir, distill.teacher_need(config))
  _one_line_about_the_null_class(e)
  # Its w = 0, the teacher's conditional prediction, is still usable.
  student = layout.make_sampler(*layout.load_model(
      layout.checkpoint_dir(guide_stage.directory(workdir)))[:3], num_steps=2)
  assert student.sample(jax.random.PRNGKey(0), 2).shape == (2, 8, 8, 1)
  with pytest.raises(ValueError) as e:
    student.sample(jax.random.PRNGKey(0), 2, guidance=0.5)
  _one_line_about_the_null_class(e)


@pytest.mark.slow
def test_guided_rounds_distill_this_runs_guide_stage(digits_dir, tmp_path):
  """With a teacher named by distill.teacher_checkpoint and stages
  ('guide', 'distill'), stage 1 starts from that teacher and the rounds
  from the 'guide' stage in --workdir, not from the named teacher."""
  config = tiny.tiny_config(digits_dir, **{
      'dataset.class_conditional': True, 'guidance.label_dropout': 0.1})
  teacher_workdir, workdir = str(tmp_path / 'teacher'), str(tmp_path / 'wd')
  _save_model(config, layout.teacher_dir(teacher_workdir), 'teacher')
  config.stages = ('guide', 'distill')
  config.distill.teacher_checkpoint = teacher_workdir
  guide_teacher = teacher_lib.resolve(config, workdir,
                                      guide_stage.teacher_need(config))
  assert guide_teacher.checkpoint_dir.startswith(teacher_workdir)
  assert not guide_teacher.takes_guidance
  assert not teacher_lib.exists(config, workdir,
                                distill.teacher_need(config))
  with pytest.raises(checkpoints.CheckpointError,
                     match=f'no guided student .* in --workdir={workdir}'):
    teacher_lib.resolve(config, workdir, distill.teacher_need(config))
  _save_model(models.student_config(config, takes_guidance=True),
              guide_stage.directory(workdir), 'guide')
  rounds_teacher = teacher_lib.resolve(config, workdir, distill.teacher_need(config))
  assert rounds_teacher.checkpoint_dir.startswith(workdir)
  assert rounds_teacher.takes_guidance


# The pipeline: teacher -> guide -> two rounds (4 -> 2 -> 1 steps), each
# stage killed once and resumed; then its evaluation over w.
PIPELINE = ['--config=tests/tiny.py', "--config.stages=('teacher','guide','distill')",
            '--config.dataset.class_conditional=True',
            '--config.guidance.label_dropout=0.25',
            '--config.guidance.num_steps=4', '--config.guidance.batch_size=8',
            '--config.train.sample_every_steps=0',
            '--config.distill.start_num_steps=4']
STAGE_DIRS = (os.path.join('teacher', 'checkpoints'),
              os.path.join('guide', 'checkpoints'),
              os.path.join('distill', 'student_00002', 'checkpoints'),
              os.path.join('distill', 'student_00001', 'checkpoints'))


def _run(workdir, data_dir, cache, fault='', extra=()):
  env = dict(os.environ, DD_FAULT=fault, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return subprocess.run(
      [sys.executable, RUNNER, *PIPELINE, *extra,
       f'--config.dataset.data_dir={data_dir}', f'--workdir={workdir}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
      check=False)


def _final_states(workdir):
  """{stage dir: (step, the leaves of its last params and EMA params)}."""
  out = {}
  for rel in STAGE_DIRS:
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, rel),
                                    read_only=True)
    config = layout.config_from_meta(ckpt.restore_meta())
    template = models.abstract_params(models.create_model(config), config)
    leaves = []
    for which in ('params', 'ema_params'):
      params, _ = ckpt.restore_params(template, which)
      leaves += jax.tree.leaves(params)
    out[rel] = (ckpt.latest_step(), leaves)
    ckpt.close()
  return out


@pytest.mark.slow
def test_guided_pipeline_resumes_bitwise_in_each_stage(digits_dir, tmp_path):
  cache = str(tmp_path / 'jax_cache')
  reference = str(tmp_path / 'reference')
  result = _run(reference, digits_dir, cache)
  assert result.returncode == 0, result.stderr[-3000:]
  want = _final_states(reference)
  assert [step for step, _ in want.values()] == [6, 4, 4, 4]

  workdir = str(tmp_path / 'killed')
  for fault, where in (('step:teacher:3', 'after step 3 of teacher'),
                       ('step:guide:3', 'after step 3 of guide'),
                       ('step:distill to 1 steps:3',
                        'after step 3 of distill to 1 steps')):
    result = _run(workdir, digits_dir, cache, fault)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert f'fault_runner: SIGKILL {where}' in result.stderr
  result = _run(workdir, digits_dir, cache)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'distill to 1 steps: resuming from step 2' in result.stderr
  got = _final_states(workdir)
  for rel, (step, leaves) in want.items():
    assert got[rel][0] == step, rel
    for a, b in zip(got[rel][1], leaves):
      np.testing.assert_array_equal(a, b, err_msg=rel)

  # Evaluation over w: every model at w = 0 and 2, with the label accuracy.
  result = _run(reference, digits_dir, cache, extra=(
      "--config.stages=('eval',)", '--config.eval.guidance=(0.0,2.0)',
      '--config.eval.num_samples=16', '--config.eval.batch_size=8',
      '--config.eval.sample_steps=(2,)', "--config.eval.teacher_samplers=('ddim',)",
      "--config.eval.student_samplers=('ddim',)"))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(reference, 'eval', 'results.json')) as f:
    rows = json.load(f)
  assert sorted((r['model'], r['num_steps'], r['guidance']) for r in rows) == [
      ('student', 1, 0.), ('student', 1, 2.), ('student', 2, 0.),
      ('student', 2, 2.), ('teacher', 2, 0.), ('teacher', 2, 2.)]
  assert all(0. <= r['label_accuracy'] <= 1. for r in rows)
  assert os.path.exists(os.path.join(reference, 'eval',
                                     'guidance_tradeoff.png'))
  # sample.py with a w the students did not learn: one line, exit 2.
  result = subprocess.run(
      [sys.executable, 'sample.py', f'--workdir={reference}',
       '--num_samples=2', '--guidance=9', f'--output_dir={tmp_path / "out"}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('error: --guidance=9.0: guidance=9.0 is outside')
  assert 'Traceback' not in result.stderr
  # One label for all images, at a w they learned.
  out = tmp_path / 'threes'
  result = subprocess.run(
      [sys.executable, 'sample.py', f'--workdir={reference}',
       '--num_samples=3', '--guidance=2', '--labels=3', f'--output_dir={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(out)) == ['000000.png', '000001.png', '000002.png',
                                     'grid.png']


@pytest.mark.slow
def test_w_warmup_scales_the_w_embedding_over_stage_1(guided_models, data):
  """guidance.w_warmup_steps: the student's w-embedding is scaled by
  min(step / W, 1) in stage 1's loss; a scale of 0 makes the net ignore w,
  1 is the net as sampled."""
  means, covs, _, exact, labels, _, _ = data
  x = jax.random.multivariate_normal(jax.random.PRNGKey(8), means[labels],
                                     covs[labels])
  seen = []

  def spy(params, z, logsnr, y, train, rng):
    seen.append(y[2:])
    return exact(z, logsnr, y[0])

  kwargs = dict(model_fn=spy, teacher_model_fn=lambda p, z, l, y, t, r: exact(
      z, l, y), mean_type='x', weighting='snr_trunc', logsnr_fn=_logsnr_fn,
                w_range=(0., 4.), null_label=3)
  batch = {'image': x, 'label': labels}
  for step in (0, 25, 100, 400):
    losses.guidance_loss({}, {}, batch, jax.random.PRNGKey(1),
                         w_warmup_steps=100, step=jnp.int32(step), **kwargs)
  losses.guidance_loss({}, {}, batch, jax.random.PRNGKey(1), **kwargs)
  assert [float(s[0]) for s in seen[:4]] == [0., 0.25, 1., 1.]
  assert seen[4] == ()  # No warm-up: the net as it samples.

  config, _, student = guided_models
  fn = inference.make_model_fn(student.model)
  z = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 1))
  logsnr, y = jnp.zeros((3,)), jnp.arange(3)
  at = lambda w, *scale: fn(student.params, z, logsnr,
                            (y, jnp.full((3,), w), *scale), False, None)
  np.testing.assert_array_equal(at(0., 0.), at(3., 0.))
  np.testing.assert_array_equal(at(3., 1.), at(3.))
  assert not np.allclose(at(3., 0.5), at(3.))
  del config


def test_stage1_schedules_are_the_checked_choices():
  assert tuple(guide_stage.SCHEDULES) == config_checks._CHOICES[  # pylint: disable=protected-access
      'guidance.learning_rate_schedule']
  g = tiny.tiny_config(None).guidance
  g.num_steps, g.learning_rate = 10, 1e-3
  linear, constant = (guide_stage.SCHEDULES[k](g) for k in ('linear',
                                                           'constant'))
  np.testing.assert_allclose([linear(s) for s in (0, 5, 10)],
                             [1e-3, 5e-4, 0.], rtol=1e-6)
  np.testing.assert_allclose([constant(s) for s in (0, 5, 10)], [1e-3] * 3,
                             rtol=1e-6)


def test_unguided_run_of_a_guided_teacher_says_what_to_run(digits_dir,
                                                           tmp_path):
  guided = tiny.tiny_config(digits_dir, **{
      'dataset.class_conditional': True, 'guidance.label_dropout': 0.1})
  workdir = str(tmp_path / 'wd')
  _save_model(guided, layout.teacher_dir(workdir), 'teacher')
  plain = tiny.tiny_config(digits_dir, **{'dataset.class_conditional': True})
  for stage in (distill, evaluate):
    with pytest.raises(checkpoints.CheckpointError) as e:
      teacher_lib.resolve(plain, workdir, stage.teacher_need(plain))
    message = str(e.value)
    assert '\n' not in message and 'is a guided model' in message, message
    assert '--config.guidance.label_dropout=0.1' in message
    assert ("put 'guide' before 'distill'" in message) == (stage is distill)
