"""The consistency stage (stages/consistency.py): its phases, students,
target network, resuming, checks, and what a trained stage has learned."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distill import checkpoints, config_checks, inference, layout
from diffusion_distill import models, preflight, samplers
from diffusion_distill import schedules, timing
from diffusion_distill import teacher as teacher_lib
from diffusion_distill import stages
from diffusion_distill.stages import consistency
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The trained-stage test: its updates, and the share of the teacher's
# one-step error that the student may keep.
NUM_UPDATES = 200
GAIN = 0.25


def _config(digits_dir, teacher_path, **overrides):
  """TRACT-like phases 8 -> 2 -> 1 from a tiny v teacher file."""
  return tiny.tiny_config(digits_dir, **{
      'stages': ('consistency',), 'model.mean_type': 'v',
      'distill.teacher_checkpoint': teacher_path, **overrides})


@pytest.fixture(scope='module')
def teacher_file(digits_dir, tmp_path_factory):
  """A tiny v teacher in the paper's format that samples in 8 steps."""
  path = str(tmp_path_factory.mktemp('paper') / 'v_teacher')
  config = tiny.tiny_config(digits_dir, **{'model.mean_type': 'v'})
  return path, tiny.paper_teacher(config, path, num_sample_steps=8)


def _run(config, workdir, step_hook=None):
  teacher = teacher_lib.resolve(config, workdir,
                                consistency.teacher_need(config))
  return consistency.run(config, workdir, teacher, step_hook=step_hook)


@pytest.fixture(scope='module')
def straight_run(digits_dir, teacher_file, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('cd_straight'))
  config = _config(digits_dir, teacher_file[0])
  return workdir, _run(config, workdir)


def test_phase_plan_chains_the_grids(digits_dir):
  config = _config(digits_dir, None)
  config.consistency.phases = (16, 4, 1)
  config.consistency.teacher_num_steps = 64
  assert consistency.phase_plan(config) == [(16, 64, 4), (4, 16, 4),
                                            (1, 4, 4)]
  # A distilled teacher's own count is the first grid.
  assert consistency.phase_plan(config, 32)[0] == (16, 32, 4)


def test_phases_leave_students_that_sample_in_their_steps(straight_run,
                                                          teacher_file):
  workdir, final = straight_run
  for n in (2, 1):
    directory = consistency.student_dir(workdir, n)
    ckpt = checkpoints.Checkpointer(layout.checkpoint_dir(directory))
    assert ckpt.latest_step() == 4
    meta = ckpt.restore_meta()
    assert meta['num_sample_steps'] == n and meta['stage'] == 'consistency'
    assert meta['model']['mean_type'] == 'v'
    assert os.path.exists(layout.sample_grid_path(directory, 4))
  # Evaluation and sample.py find them through the layout.
  assert [n for n, _ in layout.finished_students(workdir)] == [2, 1]
  assert layout.started_stages(workdir, stages.REGISTRY) == {'consistency'}
  tiny.assert_final_student(workdir, final, teacher_file[1])


def test_phases_are_chained_and_share_one_step(digits_dir, teacher_file):
  """Phase 2's teacher and starting point are phase 1's student; T and N
  are arguments of one compiled step, not constants of two."""
  config = _config(digits_dir, teacher_file[0])
  teacher = teacher_lib.resolve(config, '/nonexistent',
                                consistency.teacher_need(config))
  phases = consistency.build(config, '/wd', teacher)
  assert phases.plan == [(2, 8, 4), (1, 2, 4)]
  a, b = object(), object()
  first, second = phases.stage(0, a, a), phases.stage(1, b, b)
  assert first.step is second.step
  assert first.step.target_decay == 0.5
  assert first.extra[0] is a and second.extra[0] is b
  assert second.init_params is b
  assert [tuple(map(int, s.extra[1:])) for s in (first, second)] == [
      (2, 8), (1, 2)]
  assert first.directory == os.path.join('/wd', 'consistency',
                                         'student_00002')


def test_the_checkpoint_holds_the_target_network(straight_run, digits_dir,
                                                 teacher_file):
  """The target network is saved with the student; at rate 0.5 it lags
  behind the student's parameters."""
  workdir, final = straight_run
  config = _config(digits_dir, teacher_file[0])
  phases = consistency.Phases(config, workdir, consistency.phase_plan(
      config, 8))
  template = phases.step.init_state(final, jax.random.PRNGKey(0))
  ckpt = checkpoints.Checkpointer(layout.checkpoint_dir(
      consistency.student_dir(workdir, 1)), read_only=True)
  state, _, step = ckpt.restore(template)
  assert step == 4
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(final)):
    np.testing.assert_array_equal(a, b)
  gaps = [float(np.max(np.abs(t - p))) for t, p in zip(
      jax.tree.leaves(state.target_params), jax.tree.leaves(state.params))]
  assert max(gaps) > 0


def test_a_trained_cd_student_jumps_where_the_teacher_ode_goes(
    digits_dir, tmp_path):
  """What CD learns, trained through its stage: from pure noise, the
  student's one DDIM step lands near where the teacher's N-step DDIM path
  ends, nearer than the teacher's own one step (where it started)."""
  path = str(tmp_path / 'teacher')
  teacher_config = tiny.tiny_config(digits_dir, **{'model.mean_type': 'v'})
  teacher_params = tiny.paper_teacher(teacher_config, path,
                                      num_sample_steps=None)
  config = _config(digits_dir, path, **{
      'consistency.phases': (1,), 'consistency.teacher_num_steps': 4,
      'consistency.num_steps': NUM_UPDATES, 'consistency.learning_rate': 1e-3,
      'consistency.target_decay': 0., 'consistency.batch_size': 16,
      'train.checkpoint_every_steps': NUM_UPDATES,
      'train.log_every_steps': NUM_UPDATES})
  student = _run(config, str(tmp_path / 'wd'))
  model_fn = inference.make_model_fn(models.create_model(config))
  logsnr_fn = schedules.get_logsnr_fn(config.schedule)
  z = jax.random.normal(jax.random.PRNGKey(1), (64, 8, 8, 1))

  def ddim(params, num_steps):
    x_hat_fn = samplers.model_x_hat_fn(model_fn, params, 'v', clip_x=False)
    return np.asarray(samplers.ddim_sample(x_hat_fn, z, num_steps, logsnr_fn))

  ode = ddim(teacher_params, 4)
  before = float(np.mean((ddim(teacher_params, 1) - ode) ** 2))
  after = float(np.mean((ddim(student, 1) - ode) ** 2))
  assert after < GAIN * before, (after, before)


@pytest.mark.slow
def test_killed_mid_phase_resumes_bitwise(digits_dir, teacher_file,
                                          straight_run, tmp_path):
  workdir = str(tmp_path / 'killed')
  config = _config(digits_dir, teacher_file[0])
  # Call 7: step 3 of the phase to 1 step (after its checkpoint at 2).
  with pytest.raises(tiny.Crash):
    _run(config, workdir, step_hook=tiny.crash_on_call(7))
  one = checkpoints.Checkpointer(layout.checkpoint_dir(
      consistency.student_dir(workdir, 1)))
  assert one.latest_step() == 2
  tiny.assert_trees_equal(_run(config, workdir), straight_run[1])
  stages = timing.read(layout.timing_path(workdir))['stages']
  assert [(stages[f'consistency to {n} steps']['from_step'],
           stages[f'consistency to {n} steps']['steps'])
          for n in (2, 1)] == [(0, 4), (2, 2)]


# (overrides, field the message names, the value as it shows it)
BAD = [
    ({'consistency.phases': (3,)}, 'config.consistency.phases', '(3,)'),
    ({'consistency.phases': (1, 2)}, 'config.consistency.phases', '(1, 2)'),
    ({'consistency.phases': (2, 2)}, 'config.consistency.phases', '(2, 2)'),
    ({'consistency.target_decay': 1.5}, 'config.consistency.target_decay',
     '1.5'),
    ({'consistency.target_decay': -0.1}, 'config.consistency.target_decay',
     '-0.1'),
    ({'model.mean_type': 'x'}, 'config.model.mean_type', "'x'"),
    ({'model.mean_type': 'eps'}, 'config.model.mean_type', "'eps'"),
    ({'stages': ('distill', 'consistency')}, 'config.stages', 'consistency'),
    ({'consistency.loss_weighting': 'bogus'},
     'config.consistency.loss_weighting', "'bogus'"),
    ({'consistency.num_steps': 0}, 'config.consistency.num_steps', '0'),
    ({'dataset.class_conditional': True, 'guidance.label_dropout': 0.1},
     'config.guidance.label_dropout', '0.1'),
]


@pytest.mark.parametrize('overrides,field,value', BAD,
                         ids=[f'{f}={v}' for _, f, v in BAD])
def test_bad_consistency_config_is_one_line(digits_dir, overrides, field,
                                            value):
  config = _config(digits_dir, '/teacher', **overrides)
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.check_config(config)
  message = str(e.value)
  assert '\n' not in message and f'{field}=' in message, message
  assert value in message, message


def test_a_batch_the_devices_do_not_divide_is_one_line(digits_dir):
  config = _config(digits_dir, '/teacher', **{'consistency.batch_size': 6})
  config_checks.check_config(config)
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.check_batch_divides(config, 4)
  assert str(e.value).startswith('config.consistency.batch_size=6 is invalid')
  assert '\n' not in str(e.value)


def test_the_valid_config_passes(digits_dir):
  """So that each failure above is its override's."""
  config_checks.check_config(_config(digits_dir, '/teacher'))


def test_a_teacher_grid_the_phases_do_not_divide_is_one_line(digits_dir,
                                                            teacher_file):
  """The teacher file samples in 8 steps: phases of 3 cannot divide it."""
  config = _config(digits_dir, teacher_file[0], **{
      'consistency.phases': (3,), 'consistency.teacher_num_steps': 9})
  config_checks.check_config(config)  # 3 divides the configured 9.
  with pytest.raises(config_checks.ConfigError, match=r'samples in 8 steps'):
    preflight.check_sources(config, '/nonexistent')


def test_main_refuses_a_bad_phase_before_writing(digits_dir, tmp_path):
  workdir = tmp_path / 'wd'
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/digits_consistency.py',
       f'--config.dataset.data_dir={digits_dir}',
       '--config.consistency.phases=(3,)', f'--workdir={workdir}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'config.consistency.phases=(3,)' in lines[0]
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


def test_the_plan_counts_the_phases(digits_dir, teacher_file):
  """--check's plan lists the phases and their cost, and the evaluation
  counts their students' steps."""
  config = _config(digits_dir, teacher_file[0],
                   stages=('consistency', 'eval'))
  plan = preflight.check(config, '/nonexistent', target=False)
  # Without the target machine's checks the teacher is not resolved: the
  # first grid is consistency.teacher_num_steps (8 in the tiny config).
  assert plan.phases == {'consistency': [(2, 8, 4), (1, 2, 4)]}
  text = preflight.describe(config, '/nonexistent', plan)
  assert 'consistency: 8 steps at batch 8' in text
  assert 'phase 2: 1 sampling steps on a 2-step teacher grid' in text
  # The evaluation line: the teacher's sweep and the students' 2 + 1 steps,
  # each with both student samplers.
  e = config.eval
  evals = len(e.teacher_samplers) * sum(e.sample_steps) + 2 * (2 + 1)
  assert f'{evals} network evaluations per sample' in text
