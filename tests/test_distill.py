"""Progressive distillation: the target, the round plan, the driver, resuming,
and loading a checkpoint in the paper's released format."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distill import checkpoints, config_checks, diffusion
from diffusion_distill import layout, losses, machine, models
from diffusion_distill import schedules, timing, train
from diffusion_distill import teacher as teacher_lib
from diffusion_distill.stages import distill
from diffusion_distill.stages import evaluate
from tests import gaussian, tiny


def _logsnr_fn(t):
  return schedules.cosine_logsnr(t, -20., 20.)


@pytest.mark.parametrize('num_student_steps', [1, 2, 4, 64])
def test_student_step_lands_on_teacher_two_steps(num_student_steps):
  """With the exact Gaussian denoiser as teacher, one DDIM step with the
  target x lands where two teacher DDIM steps land, on random grid points."""
  dim, batch = 3, 64
  mean, cov = gaussian.make_gaussian(dim)
  teacher = gaussian.exact_x_hat_fn(mean, cov)
  n = num_student_steps
  k1, k2 = jax.random.split(jax.random.PRNGKey(n))
  i = jax.random.randint(k1, (batch,), 1, n + 1)
  t = i / n
  lt, lmid, ls = _logsnr_fn(t), _logsnr_fn(t - 0.5 / n), _logsnr_fn(t - 1. / n)
  z_t = jax.random.normal(k2, (batch, dim)) * 1.5
  x_tilde = losses.two_step_target(teacher, z_t, lt, lmid, ls, i == 1)
  z_mid = diffusion.ddim_step(z_t, teacher(z_t, lt), lt, lmid)
  z_s = diffusion.ddim_step(z_mid, teacher(z_mid, lmid), lmid, ls)
  student = diffusion.ddim_step(z_t, x_tilde, lt, ls)
  last = np.asarray(i == 1)
  np.testing.assert_allclose(student[~last], z_s[~last], atol=2e-4)
  # On the last interval the target is the teacher's second x_hat.
  np.testing.assert_allclose(x_tilde[last], teacher(z_mid, lmid)[last],
                             atol=1e-6)
  if n > 1:
    # The target is not simply the teacher's one-step x_hat.
    assert float(jnp.max(jnp.abs(x_tilde - teacher(z_t, lt)))) > 1e-3


def test_distill_loss_is_zero_when_the_student_matches_the_target():
  """A student that outputs the two-step target has zero loss; the teacher
  itself (one step) does not, and gradients never reach the teacher."""
  mean, cov = gaussian.make_gaussian(4)
  exact = gaussian.exact_x_hat_fn(mean, cov)
  x = jax.random.multivariate_normal(jax.random.PRNGKey(0), mean, cov, (32,))
  n = 4
  kwargs = dict(mean_type='x', weighting='snr_trunc', logsnr_fn=_logsnr_fn,
                num_student_steps=n)

  def teacher_fn(params, z, logsnr, y, train, rng):
    del y, train, rng
    return exact(z, logsnr) * params['scale']

  def oracle_fn(params, z, logsnr, y, train, rng):
    if params is None or 'scale' in params:
      return teacher_fn({'scale': 1.}, z, logsnr, y, train, rng)
    t = schedules.cosine_t_from_logsnr(logsnr)
    return losses.two_step_target(
        lambda zz, ll: exact(zz, ll), z, logsnr, _logsnr_fn(t - 0.5 / n),
        _logsnr_fn(t - 1. / n), jnp.isclose(t, 1. / n, atol=1e-4))

  rng = jax.random.PRNGKey(1)
  loss, _ = losses.distill_loss({'oracle': 0.}, {'scale': 1.}, {'image': x},
                                rng, model_fn=oracle_fn, **kwargs)
  assert float(loss) < 1e-5
  loss_teacher, _ = losses.distill_loss(
      {'scale': 1.}, {'scale': 1.}, {'image': x}, rng, model_fn=teacher_fn,
      **kwargs)
  assert float(loss_teacher) > 1e-3
  grad_teacher = jax.grad(lambda tp: losses.distill_loss(
      {'scale': 1.}, tp, {'image': x}, rng, model_fn=teacher_fn,
      **kwargs)[0])({'scale': 1.})
  assert float(grad_teacher['scale']) == 0.


def test_eps_is_refused_for_distillation(digits_dir):
  config = tiny.tiny_config(digits_dir, **{'model.mean_type': 'eps'})
  config_checks.check_config(config)  # A teacher may predict eps.
  config.stages = ('distill',)
  with pytest.raises(config_checks.ConfigError, match='model.mean_type'):
    config_checks.check_config(config)


def test_round_plan():
  assert distill.round_plan(8, 1, 4, 2) == [(4, 4), (2, 8), (1, 8)]
  assert distill.round_plan(16, 1, 4, 2, long_rounds_max_steps=4) == [
      (8, 4), (4, 8), (2, 8), (1, 8)]
  assert distill.round_plan(8192, 1, 50_000, 2)[0] == (4096, 50_000)
  assert len(distill.round_plan(8192, 1, 50_000, 2)) == 13
  assert distill.round_plan(4, 4, 10) == []


@pytest.fixture(scope='module')
def teacher_file(digits_dir, tmp_path_factory):
  """An untrained but non-trivial tiny teacher in the paper's format."""
  path = str(tmp_path_factory.mktemp('paper') / 'cifar_original')
  return path, tiny.paper_teacher(tiny.tiny_config(digits_dir), path)


def _distill_config(digits_dir, teacher_path):
  config = tiny.tiny_config(digits_dir)
  config.stages = ('distill',)
  config.distill.teacher_checkpoint = teacher_path
  config.distill.start_num_steps = 8
  return config


@pytest.fixture(scope='module')
def straight_run(digits_dir, teacher_file, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('straight'))
  config = _distill_config(digits_dir, teacher_file[0])
  final = distill.distill(config, workdir)
  return workdir, final


def test_paper_checkpoint_loads(digits_dir, teacher_file):
  path, params = teacher_file
  config = _distill_config(digits_dir, path)
  teacher = teacher_lib.resolve(config, '/nonexistent',
                                distill.teacher_need(config))
  loaded = teacher_lib.load(teacher)
  assert teacher.num_sample_steps == 8 and teacher.checkpoint_dir is None
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_a_released_checkpoint_samples_as_the_readme_says(digits_dir,
                                                          teacher_file):
  """README, "Checkpoints released with the paper": a paper file sampled
  in its own number of steps from Python, with its ema_params."""
  config = _distill_config(digits_dir, teacher_file[0])
  found = teacher_lib.resolve(config, None, distill.teacher_need(config))
  sampler = layout.make_sampler(config, models.create_model(config),
                                teacher_lib.load(found),
                                num_steps=found.num_sample_steps)
  assert sampler.num_steps == 8
  for a, b in zip(jax.tree.leaves(sampler.params),
                  jax.tree.leaves(teacher_file[1])):
    np.testing.assert_array_equal(a, b)
  images = sampler.sample(jax.random.PRNGKey(0), 3)
  assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8


def test_other_architecture_is_named(digits_dir, teacher_file):
  config = _distill_config(digits_dir, teacher_file[0])
  config.model.emb_ch = 64
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'dense0/bias has shape \(32,\) but config.model gives \(64,\)'):
    teacher_lib.resolve(config, '/nonexistent',
                                distill.teacher_need(config))


def test_run_from_8_to_1_leaves_students(straight_run, teacher_file):
  workdir, final = straight_run
  for n in (4, 2, 1):
    d = os.path.join(distill.student_dir(workdir, n), 'checkpoints')
    ckpt = checkpoints.Checkpointer(d)
    assert ckpt.latest_step() == 4
    meta = ckpt.restore_meta()
    assert meta['num_sample_steps'] == n and meta['stage'] == 'distill'
    assert os.path.exists(os.path.join(distill.student_dir(workdir, n),
                                       'samples', 'step_00000004.png'))
  sampler = tiny.assert_final_student(workdir, final, teacher_file[1])
  images = sampler.sample(jax.random.PRNGKey(0), 5)
  assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8


@pytest.mark.slow
def test_killed_mid_round_resumes_bitwise(digits_dir, teacher_file,
                                          straight_run, tmp_path):
  workdir = str(tmp_path / 'killed')
  config = _distill_config(digits_dir, teacher_file[0])
  # Call 7: step 3 of the round to 2 steps (after its checkpoint at 2).
  with pytest.raises(tiny.Crash):
    distill.distill(config, workdir, step_hook=tiny.crash_on_call(7))
  two = checkpoints.Checkpointer(
      os.path.join(distill.student_dir(workdir, 2), 'checkpoints'))
  assert two.latest_step() == 2
  assert not os.path.exists(distill.student_dir(workdir, 1))
  tiny.assert_trees_equal(distill.distill(config, workdir), straight_run[1])
  # timing.json: the session that finished a round records it.
  stages = timing.read(layout.timing_path(workdir))['stages']
  assert [(stages[f'distill to {n} steps']['from_step'],
           stages[f'distill to {n} steps']['steps']) for n in (4, 2, 1)] == [
               (0, 4), (2, 2), (0, 4)]


def test_evaluation_stage_table_and_plot(digits_dir, teacher_file,
                                         straight_run):
  """The eval stage over the 8 -> 1 run: teacher sweep + every student."""
  import json  # pylint: disable=g-import-not-at-top
  workdir, _ = straight_run
  config = _distill_config(digits_dir, teacher_file[0])
  config.eval.num_samples = 12
  config.eval.batch_size = 8
  config.eval.sample_steps = (1, 2)
  rows = evaluate.evaluate(config, workdir)
  keys = {(r['model'], r['sampler'], r['num_steps']) for r in rows}
  assert keys == {('teacher', m, n) for m in ('ddim', 'ancestral')
                  for n in (1, 2)} | {('student', m, n)
                                      for m in ('ddim', 'stochastic')
                                      for n in (4, 2, 1)}
  assert all(r['num_samples'] == 12 and r['fd_digits'] > 0 for r in rows)
  by_key = {(r['model'], r['sampler'], r['num_steps']): r for r in rows}
  # One stochastic step is one DDIM step (both return x_hat of z_1).
  assert by_key[('student', 'stochastic', 1)]['fd_digits'] == pytest.approx(
      by_key[('student', 'ddim', 1)]['fd_digits'])
  eval_dir = os.path.join(workdir, 'eval')
  with open(os.path.join(eval_dir, 'results.csv')) as f:
    header = f.readline().strip().split(',')
    assert len(f.readlines()) == len(rows)
  assert header[:4] == ['model', 'sampler', 'num_steps', 'seed']
  with open(os.path.join(eval_dir, 'quality_vs_steps.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # A re-run keeps finished rows instead of recomputing them.
  with open(os.path.join(eval_dir, 'results.json')) as f:
    saved = json.load(f)
  assert evaluate.evaluate(config, workdir) == saved


def test_each_stage_records_its_cost_and_the_machine(straight_run):
  """WORKDIR/timing.json after the rounds and the evaluation of the 8 -> 1
  run, and the run's last log lines that point at its outputs."""
  workdir, _ = straight_run
  recorded = timing.read(layout.timing_path(workdir))
  m = recorded['machine']
  assert m['cpu_cores'] >= 1 and m['device_count'] == jax.device_count()
  assert m['device_kind'] == jax.devices()[0].device_kind
  assert m['jax'] == jax.__version__ and m['jaxlib'] and m['cpu']
  assert m['commit'] == machine.commit()
  stages = recorded['stages']
  assert set(stages) == {'distill to 4 steps', 'distill to 2 steps',
                         'distill to 1 steps', 'eval'}
  for n in (4, 2, 1):
    e = stages[f'distill to {n} steps']
    assert e['steps'] == 4 and e['from_step'] == 0
    assert 0 < e['first_step_seconds'] <= e['seconds']
    assert e['steps_per_second'] == pytest.approx(4 / e['seconds'], rel=0.05)
    assert e['peak_host_memory_mib'] > 50
  # The evaluation test measured 10 rows of 12 samples; its rerun none.
  assert stages['eval']['rows'] == 10 and stages['eval']['samples'] == 120
  lines = train.outputs_summary(workdir)
  eval_dir = evaluate.directory(workdir)
  assert f'results: {eval_dir}/results.csv' in lines
  assert f'plot: {eval_dir}/quality_vs_steps.png' in lines
  grid = layout.sample_grid_path(distill.student_dir(workdir, 1), 4)
  assert f'last sample grid: {grid}' in lines
  assert [l.split(':')[1] for l in lines if l.startswith('time: ')] == [
      ' distill to 4 steps', ' distill to 2 steps', ' distill to 1 steps',
      ' eval']


def test_rounds_of_one_length_share_one_compiled_step(digits_dir):
  """num_student_steps is an argument of the step, not baked into it: the
  rounds of one length get the same pmapped function (so one compile)."""
  config = _distill_config(digits_dir, None)
  params = {'w': np.zeros(2, np.float32)}
  rounds = distill.Rounds(config, '/unused', [(4, 10), (2, 10), (1, 20)])
  stages = [rounds.stage(i, params) for i in range(3)]
  assert stages[1].step is stages[0].step
  assert stages[2].step is not stages[0].step  # its lr decays over 20
  assert [int(s.extra[1]) for s in stages] == [4, 2, 1]
  assert [s.progress.done_before for s in stages] == [0, 10, 20]
  assert {s.progress.total for s in stages} == {40}
