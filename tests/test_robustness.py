"""What goes wrong in practice: bad configs and workdirs, corrupt checkpoints,
NaN updates and NaN in the data. Each must stop with one clear line, or
recover, without touching the user's files."""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from diffusion_distill import checkpoints, config_checks, input_pipeline
from diffusion_distill import layout, preflight, train, trainer
from diffusion_distill.stages import distill
from diffusion_distill.stages import teacher as teacher_stage
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, **overrides):
  """The tiny config without sample grids (their compile is not tested here).

  Keys are 'section.field' or a top-level field such as 'stages'.
  """
  return tiny.tiny_config(data_dir, **{'train.sample_every_steps': 0,
                                       **overrides})


# (overrides, field the message must name, bad value as the message shows it)
BAD_CONFIGS = [
    ({'dataset.name': 'mnist'}, 'config.dataset.name', "'mnist'"),
    ({'model.mean_type': 'bogus'}, 'config.model.mean_type', "'bogus'"),
    ({'model.loss_weighting': 'bogus'}, 'config.model.loss_weighting',
     "'bogus'"),
    ({'stages': ('teacher', 'eval'),
      'eval.teacher_samplers': ('ddim', 'bogus')},
     'config.eval.teacher_samplers', "'bogus'"),
    ({'stages': ('distill',), 'distill.start_num_steps': 12},
     'config.distill.start_num_steps', '12'),
    ({'train.batch_size': 6}, 'config.train.batch_size', '6'),
    ({'stages': ('distill',), 'distill.batch_size': 10},
     'config.distill.batch_size', '10'),
    ({'train.learning_rate': 0.}, 'config.train.learning_rate', '0.0'),
    ({'stages': ('distill',), 'distill.learning_rate': -1e-4},
     'config.distill.learning_rate', '-0.0001'),
    ({'train.num_steps': 0}, 'config.train.num_steps', '0'),
    ({'stages': ('teacher', 'distill'), 'model.mean_type': 'eps'},
     'config.model.mean_type', "'eps'"),
    ({'stages': ('teacher', 'distil')}, 'config.stages', "'distil'"),
    ({'stages': ('distill', 'eval'), 'eval.student_samplers': ('bogus',)},
     'config.eval.student_samplers', "'bogus'"),
    ({'dataset.name': 'lsun_church128', 'dataset.class_conditional': True},
     'config.dataset.class_conditional', 'True'),
    ({'model.dtype': 'float16'}, 'config.model.dtype', "'float16'"),
    ({'schedule.name': 'linear'}, 'config.schedule.name', "'linear'"),
    ({'stages': ('distill',), 'distill.start_num_steps': 1,
      'distill.end_num_steps': 8}, 'config.distill.start_num_steps', '1'),
    ({'stages': ('distill',), 'distill.steps_per_round': 0},
     'config.distill.steps_per_round', '0'),
    ({'train.warmup_steps': -1}, 'config.train.warmup_steps', '-1'),
    ({'train.decay_steps': -5}, 'config.train.decay_steps', '-5'),
    ({'train.warmup_steps': 100, 'train.decay_steps': 100},
     'config.train.decay_steps', '100'),
    ({'train.num_steps': 300, 'train.decay_steps': 200},
     'config.train.decay_steps', '200'),
    ({'stages': ('teacher', 'eval'), 'eval.batch_size': 6},
     'config.eval.batch_size', '6'),
    ({'stages': ('teacher', 'eval'), 'eval.sample_steps': (4, 0)},
     'config.eval.sample_steps', '0'),
    # Every other field of configs/base.py.
    ({'seed': -1}, 'config.seed', '-1'),
    ({'dataset.shuffle_buffer': 0}, 'config.dataset.shuffle_buffer', '0'),
    ({'dataset.prefetch': 0}, 'config.dataset.prefetch', '0'),
    ({'dataset.random_flip': True}, 'config.dataset.random_flip', 'True'),
    ({'dataset.data_dir': ''}, 'config.dataset.data_dir', "''"),
    ({'model.ch': 48}, 'config.model.ch', '48'),
    ({'model.ch': 3}, 'config.model.ch', '3'),
    ({'model.emb_ch': 0}, 'config.model.emb_ch', '0'),
    ({'model.ch_mult': ()}, 'config.model.ch_mult', '()'),
    ({'model.ch_mult': (1, 1, 1, 1, 1)}, 'config.model.ch_mult',
     '(1, 1, 1, 1, 1)'),
    ({'model.num_res_blocks': 0}, 'config.model.num_res_blocks', '0'),
    ({'model.attn_resolutions': (3,)}, 'config.model.attn_resolutions',
     '(3,)'),
    ({'model.num_heads': 3}, 'config.model.num_heads', '3'),
    ({'model.head_dim': 5}, 'config.model.head_dim', '5'),
    ({'model.dropout': 1.}, 'config.model.dropout', '1.0'),
    ({'schedule.logsnr_min': 20.}, 'config.schedule.logsnr_min', '20.0'),
    ({'schedule.logsnr_max': float('inf')}, 'config.schedule.logsnr_max',
     'inf'),
    ({'train.weight_decay': -1e-3}, 'config.train.weight_decay', '-0.001'),
    ({'train.ema_decay': 1.}, 'config.train.ema_decay', '1.0'),
    ({'train.grad_clip': -1.}, 'config.train.grad_clip', '-1.0'),
    ({'train.max_nonfinite_in_a_row': -1},
     'config.train.max_nonfinite_in_a_row', '-1'),
    ({'train.log_every_steps': 0}, 'config.train.log_every_steps', '0'),
    ({'train.checkpoint_every_steps': 0},
     'config.train.checkpoint_every_steps', '0'),
    ({'train.sample_every_steps': -2}, 'config.train.sample_every_steps',
     '-2'),
    ({'train.num_grid_samples': 0}, 'config.train.num_grid_samples', '0'),
    ({'train.grid_sample_steps': 0}, 'config.train.grid_sample_steps', '0'),
    ({'train.steps_per_dispatch': 0}, 'config.train.steps_per_dispatch',
     '0'),
    ({'train.steps_per_dispatch': 4}, 'config.train.num_steps', '6'),
    ({'distill.end_num_steps': 0}, 'config.distill.end_num_steps', '0'),
    ({'distill.last_rounds_multiplier': 0},
     'config.distill.last_rounds_multiplier', '0'),
    ({'distill.long_rounds_max_steps': 0},
     'config.distill.long_rounds_max_steps', '0'),
    ({'distill.grad_clip': -1.}, 'config.distill.grad_clip', '-1.0'),
    ({'distill.teacher_checkpoint': ''}, 'config.distill.teacher_checkpoint',
     "''"),
    ({'eval.num_samples': 1}, 'config.eval.num_samples', '1'),
    ({'eval.num_reference': 1}, 'config.eval.num_reference', '1'),
    ({'eval.ancestral_noise_interp': 1.5},
     'config.eval.ancestral_noise_interp', '1.5'),
    ({'eval.num_seeds': 0}, 'config.eval.num_seeds', '0'),
    ({'eval.sample_steps': ()}, 'config.eval.sample_steps', '()'),
    ({'eval.teacher_samplers': ()}, 'config.eval.teacher_samplers', '()'),
    ({'stages': ()}, 'config.stages', '()'),
    ({'stages': ('eval', 'teacher')}, 'config.stages', "('eval', 'teacher')"),
    ({'stages': ('teacher', 'teacher')}, 'config.stages',
     "('teacher', 'teacher')"),
]


@pytest.mark.parametrize('overrides,field,value', BAD_CONFIGS,
                         ids=[f for _, f, _ in BAD_CONFIGS])
def test_bad_config_is_one_line_naming_field_and_value(overrides, field,
                                                        value):
  config = _config(None, **overrides)
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.check_config(config)
    config_checks.check_batch_divides(config, 4, 4)  # tests/conftest.py
  message = str(e.value)
  assert '\n' not in message, message
  assert f'{field}=' in message and value in message, message


def test_tiny_config_is_valid():
  """So that every failure above is due to its override alone."""
  config = _config(None, stages=('teacher', 'distill', 'eval'))
  config_checks.check_config(config)
  config_checks.check_batch_divides(config, 4, 4)


@pytest.mark.slow
def test_main_with_bad_config_exits_2_with_one_line(tmp_path):
  workdir = tmp_path / 'wd'
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=tests/tiny.py',
       '--config.model.mean_type=bogus', f'--workdir={workdir}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('error: config.model.mean_type=')
  assert 'bogus' in lines[-1]
  assert [l for l in lines if l.startswith('error:')] == lines[-1:]
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize('args,says', [
    (('--device_count=0', '--check_local'), '--device_count=0 is invalid'),
    (('--device_count=4',), '--device_count is for --check_local'),
    (('--local_device_count=4', '--check_local'),
     '--local_device_count needs --device_count'),
    (('--device_count=3', '--check_local'),
     'config.train.batch_size=8 is invalid: must divide over the 3 devices'),
])
def test_main_device_count_mistakes_are_one_line(tmp_path, args, says):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=tests/tiny.py',
       f'--workdir={tmp_path / "wd"}', *args],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert [l for l in lines if l.startswith('error:')] == lines[-1:]
  assert lines[-1].startswith(f'error: {says}'), lines[-1]
  assert not (tmp_path / 'wd').exists()


def _main(tmp_path, *args, check='', timeout=300):
  """main.py on the tiny config with `args`; (result, workdir)."""
  workdir = tmp_path / 'wd'
  flags = [f'--{check}'] if check else []
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=tests/tiny.py',
       f'--workdir={workdir}', *flags, *args],
      cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
  return result, workdir


def _one_error_line(result, code=2):
  """The one `error:` line, last, with `code` and no traceback."""
  assert result.returncode == code, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert [l for l in lines if l.startswith('error:')] == lines[-1:], (
      result.stderr[-3000:])
  assert 'Traceback' not in result.stderr
  return lines[-1]


@pytest.mark.slow
@pytest.mark.parametrize('args,words', [
    (['--config=configs/nope.py'],
     ['--config=configs/nope.py cannot be read', 'No such file']),
    (['--config.train.batchsize=3'],
     ['--config.train.batchsize is not a config field',
      'did you mean config.train.batch_size?']),
    (['--config.trian.batch_size=3'],
     ['--config.trian.batch_size is not a config field',
      'did you mean config.train?']),
    (['--config.train.batch_size=abc'],
     ['--config.train.batch_size=abc is invalid: give an integer']),
    (['--config.schedule.logsnr_min=30'],
     ['config.schedule.logsnr_min=30.0 is invalid',
      'below schedule.logsnr_max=20.0']),
    (['--config.model.ch=48'],
     ["GroupNorm's 32 groups cannot divide", 'width 48',
      'the nearest ch that work are 32 and 64']),
], ids=['missing_file', 'unknown_field', 'unknown_section', 'wrong_type',
        'schedule_range', 'group_norm'])
def test_config_mistakes_on_the_command_line(tmp_path, args, words):
  """One line, exit 2, nothing written (flags after --config replace it)."""
  result, workdir = _main(tmp_path, *args)
  last = _one_error_line(result)
  for word in words:
    assert word in last, last
  assert not workdir.exists()


@pytest.mark.slow
def test_misspelt_field_in_a_config_file_names_the_closest(tmp_path):
  config_file = tmp_path / 'typo.py'
  config_file.write_text(
      'from tests import tiny\n'
      'def get_config():\n'
      '  config = tiny.get_config()\n'
      '  config.train.lerning_rate = 1e-3\n'
      '  return config\n')
  result, workdir = _main(tmp_path, f'--config={config_file}')
  last = _one_error_line(result)
  assert ('config.train.lerning_rate is not a config field: did you mean '
          'config.train.learning_rate?') in last, last
  assert not workdir.exists()


@pytest.mark.slow
def test_paper_config_on_a_cpu_only_jax_stops_first(tmp_path):
  """Before any other check (here: a data set that is not there)."""
  workdir = tmp_path / 'wd'
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cifar10_teacher.py',
       f'--workdir={workdir}', f'--config.dataset.data_dir={tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  last = _one_error_line(result)
  assert "config.dataset.name='cifar10' would train on the CPU" in last
  assert 'pip install -c constraints.txt -e ".[tpu]"' in last
  assert 'pip install -c constraints.txt -e ".[cuda12]"' in last
  assert '--allow_cpu' in last
  assert ('JAX backend cpu, device kind cpu, 4 local and 4 global devices, '
          'process 0 of 1') in result.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_check_prints_the_plan_and_writes_nothing(tmp_path):
  result, workdir = _main(
      tmp_path, "--config.stages=('teacher','distill','eval')",
      f'--config.dataset.data_dir={tmp_path / "tfds"}', check='check')
  assert result.returncode == 0, result.stderr[-3000:]
  plan = result.stdout
  assert 'stages teacher, distill, eval' in plan
  assert 'teacher: 6 steps at batch 8 (2 per device)' in plan
  for line in ('round 1: 8 -> 4 sampling steps, 4 updates',
               'round 2: 4 -> 2 sampling steps, 4 updates',
               'round 3: 2 -> 1 sampling steps, 4 updates'):
    assert line in plan
  assert 'distill: 12 steps at batch 8 (2 per device)' in plan
  flops = [float(w) for l in plan.splitlines() if 'FLOP per step' in l
           for w in l.split('; ')[1].split()[:1]]
  assert len(flops) == 2 and all(f > 1e6 for f in flops), plan
  assert '4 devices' in plan and 'check passed' in plan
  assert not workdir.exists() and not (tmp_path / 'tfds').exists()
  # The launchers' variant: no devices, data or checkpoints, and still the
  # config's mistakes.
  result, _ = _main(tmp_path, check='check_local')
  assert result.returncode == 0 and 'devices not checked here' in result.stdout
  result, _ = _main(tmp_path, '--config.distill.end_num_steps=3',
                    "--config.stages=('distill',)", check='check_local')
  assert 'config.distill.start_num_steps=8 is invalid' in _one_error_line(
      result)
  # A teacher that is not there is found by --check, not by --check_local.
  result, _ = _main(tmp_path, "--config.stages=('distill',)", check='check')
  assert 'no teacher checkpoint in --workdir=' in _one_error_line(result)
  result, _ = _main(tmp_path, "--config.stages=('distill',)",
                    check='check_local')
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_resume_with_a_changed_model_is_refused_before_writing(
    finished_teacher, tmp_path):
  """config.json holds the last run's config; a field that changes what the
  started stages trained may not change, others are logged."""
  config, finished, _ = finished_teacher
  workdir = _copy(finished, tmp_path)
  layout.write_config(workdir, config)
  with open(layout.config_path(workdir)) as f:
    saved = f.read()
  changed = _config(config.dataset.data_dir, **{
      'model.ch': 64, 'seed': 3, 'train.num_steps': 8,
      'distill.learning_rate': 1e-3})
  with pytest.raises(config_checks.ConfigError) as e:
    preflight.check(changed, workdir)
  message = _one_line(e, f'--workdir={workdir} holds a run that trained with',
                      'config.model.ch (32 -> 64)', 'config.seed (0 -> 3)',
                      'use a new --workdir, or set them back',
                      '--config.model.ch=32 --config.seed=0')
  # The distillation settings were not used yet; the steps may change.
  assert 'distill' not in message and 'num_steps' not in message
  with open(layout.config_path(workdir)) as f:
    assert f.read() == saved
  with _Infos() as infos:
    preflight.check(_config(config.dataset.data_dir, **{
        'train.num_steps': 8, 'distill.learning_rate': 1e-3}), workdir)
  assert any('config.train.num_steps changed' in l and '6 -> 8' in l
             for l in infos.lines), infos.lines


def test_a_workdir_from_before_decay_steps_resumes_only_without_decay(
    digits_dir):
  """A config.json written before train.decay_steps existed trained with a
  constant learning rate: asking for a decay once the teacher has started
  is refused, keeping it is not a change."""
  config = _config(digits_dir)
  saved = json.loads(config.to_json_best_effort())
  del saved['train']['decay_steps']
  assert config_checks.resume_changes(saved, config, 'wd', {'teacher'}) == []
  decayed = _config(digits_dir, **{'train.decay_steps': 10})
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.resume_changes(saved, decayed, 'wd', {'teacher'})
  _one_line(e, 'config.train.decay_steps (0 -> 10)',
            '--config.train.decay_steps=0')
  # Before the teacher has a checkpoint it may still change.
  assert config_checks.resume_changes(saved, decayed, 'wd', set()) == [
      ('train.decay_steps', 0, 10)]


def test_a_workdir_from_before_the_stage1_and_rounds_fields_resumes(
    digits_dir):
  """A config.json written before guidance.learning_rate_schedule,
  ema_decay, w_warmup_steps and distill.loss_weighting existed trained with
  their defaults: those resume, others are refused once the stage started."""
  config = _config(digits_dir)
  saved = json.loads(config.to_json_best_effort())
  for section, field in (('guidance', 'learning_rate_schedule'),
                         ('guidance', 'ema_decay'),
                         ('guidance', 'w_warmup_steps'),
                         ('distill', 'loss_weighting')):
    del saved[section][field]
  started = {'teacher', 'guide', 'distill'}
  assert config_checks.resume_changes(saved, config, 'wd', started) == []
  for field, value in (('guidance.learning_rate_schedule', 'constant'),
                       ('guidance.ema_decay', 0.5),
                       ('guidance.w_warmup_steps', 10),
                       ('distill.loss_weighting', 'snr')):
    changed = _config(digits_dir, **{field: value})
    with pytest.raises(config_checks.ConfigError) as e:
      config_checks.resume_changes(saved, changed, 'wd', started)
    assert f'config.{field} (' in str(e.value) and '\n' not in str(e.value)


def test_workdir_under_a_file_is_a_config_error(digits_dir, tmp_path):
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('not a directory')
  workdir = str(a_file / 'wd')
  with pytest.raises(config_checks.ConfigError) as e:
    preflight.check_workdir(workdir)
  message = str(e.value)
  assert '\n' not in message and f'--workdir={workdir}' in message, message
  assert str(a_file) in message
  # train_and_evaluate checks it before writing anything.
  with pytest.raises(config_checks.ConfigError, match='--workdir='):
    train.train_and_evaluate(_config(digits_dir), workdir)
  assert a_file.read_text() == 'not a directory'
  # A new directory under a writable one is fine, and is not created yet.
  preflight.check_workdir(str(tmp_path / 'new' / 'wd'))
  assert sorted(os.listdir(tmp_path)) == ['notes.txt']


def test_workdir_not_writable_is_a_config_error(tmp_path, monkeypatch):
  """As root, chmod cannot make a directory unwritable: fail the probe."""

  def refuse(*args, **kwargs):
    del args, kwargs
    raise PermissionError(13, 'Permission denied')

  monkeypatch.setattr(checkpoints.tempfile, "TemporaryFile", refuse)
  workdir = str(tmp_path / 'wd')
  with pytest.raises(config_checks.ConfigError) as e:
    preflight.check_workdir(workdir)
  message = str(e.value)
  assert '\n' not in message and f'--workdir={workdir}' in message, message
  assert 'not writable (Permission denied)' in message
  assert 'choose another --workdir' in message


def _one_line(error, *parts):
  message = str(error.value)
  assert '\n' not in message, message
  for part in parts:
    assert part in message, message
  return message


def _teacher_config(path, **overrides):
  return _config(None, **{'stages': ('distill',),
                          'distill.teacher_checkpoint': path, **overrides})


def _write_paper_file(path, config, num_sample_steps=None):
  """Zero parameters of `config`'s U-Net in the paper's msgpack layout."""
  import flax.serialization  # pylint: disable=g-import-not-at-top
  from diffusion_distill import models  # pylint: disable=g-import-not-at-top
  shapes = models.abstract_params(models.create_model(config), config)
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  state = {'step': np.int64(1), 'ema_params': params}
  if num_sample_steps is not None:
    state['num_sample_steps'] = np.int64(num_sample_steps)
  data = flax.serialization.msgpack_serialize(state)
  with open(path, 'wb') as f:
    f.write(data)
  return data


@pytest.mark.parametrize('kind', ['missing', 'empty_dir', 'other_dir',
                                  'garbage', 'truncated', 'empty_file'])
def test_unusable_teacher_checkpoint_is_one_line(kind, tmp_path):
  path = str(tmp_path / 'teacher')
  fix = 'give the workdir of a trained teacher'
  if kind == 'missing':
    expect = 'does not exist'
  elif kind in ('empty_dir', 'other_dir'):
    os.mkdir(path)
    if kind == 'other_dir':
      (tmp_path / 'teacher' / 'notes.txt').write_text('no checkpoint')
    expect = 'holds no checkpoint'
  else:
    if kind == 'garbage':
      data = bytes(range(256)) * 4
    else:
      data = _write_paper_file(path, _config(None))
      data = data[:len(data) // 2] if kind == 'truncated' else b''
    with open(path, 'wb') as f:
      f.write(data)
    expect = 'cannot be read'
  with pytest.raises(checkpoints.CheckpointError) as e:
    preflight.check_sources(_teacher_config(path), str(tmp_path / 'wd'))
  _one_line(e, f'config.distill.teacher_checkpoint={path!r}', expect, fix)
  assert not os.path.exists(tmp_path / 'wd')


def test_no_teacher_in_the_workdir_is_one_line(tmp_path):
  workdir = str(tmp_path / 'wd')
  with pytest.raises(checkpoints.CheckpointError) as e:
    preflight.check_sources(_teacher_config(None), workdir)
  _one_line(e, f'no teacher checkpoint in --workdir={workdir}',
            "add 'teacher' to config.stages",
            '--config.distill.teacher_checkpoint=PATH')


@pytest.mark.parametrize('teacher_conditional', [True, False])
def test_teacher_file_of_another_class_count_is_named(teacher_conditional,
                                                      tmp_path):
  path = str(tmp_path / 'teacher.msgpack')
  _write_paper_file(path, _config(None, **{
      'dataset.class_conditional': teacher_conditional}))
  config = _teacher_config(
      path, **{'dataset.class_conditional': not teacher_conditional})
  with pytest.raises(checkpoints.CheckpointError) as e:
    preflight.check_sources(config, str(tmp_path / 'wd'))
  if teacher_conditional:
    _one_line(e, 'is class-conditional with 10 classes',
              'class_emb/kernel (10, 32)', 'gives 1 class:',
              'set --config.dataset.class_conditional=True')
  else:
    _one_line(e, 'is unconditional', 'gives 10 classes',
              'set --config.dataset.class_conditional=False')


def test_teacher_steps_must_halve_down_to_end_num_steps(tmp_path):
  """A distilled teacher file sets where the rounds start, not the config."""
  path = str(tmp_path / 'teacher_8_steps')
  _write_paper_file(path, _config(None), num_sample_steps=8)
  config = _teacher_config(path, **{'distill.start_num_steps': 12,
                                    'distill.end_num_steps': 3})
  config_checks.check_config(config)
  with pytest.raises(config_checks.ConfigError) as e:
    preflight.check_sources(config, str(tmp_path / 'wd'))
  _one_line(e, 'config.distill.end_num_steps=3', 'samples in 8 steps')


@pytest.mark.parametrize('override,parts', [
    ({'dataset.class_conditional': True},
     ('dataset.class_conditional=False but config.dataset.'
      'class_conditional=True', '--config.dataset.class_conditional=False')),
    ({'model.mean_type': 'v'},
     ("predicts model.mean_type='x' but config.model.mean_type='v'",
      '--config.model.mean_type=x')),
    ({'model.ch': 16},
     ('parameter conv_in/bias has shape (32,) but config.model gives (16,)',
      'the teacher has model.ch=32',
      'set --config.model.ch=32')),
], ids=['class_conditional', 'mean_type', 'ch'])
def test_teacher_of_ours_trained_otherwise_is_named(finished_teacher,
                                                    tmp_path, override,
                                                    parts):
  _, teacher_workdir, _ = finished_teacher
  config = _teacher_config(teacher_workdir, **override)
  with pytest.raises(checkpoints.CheckpointError) as e:
    preflight.check_sources(config, str(tmp_path / 'wd'))
  _one_line(e, f'config.distill.teacher_checkpoint={teacher_workdir!r}',
            *parts)


def test_teacher_stage_with_a_teacher_elsewhere_is_refused(finished_teacher,
                                                           tmp_path):
  _, teacher_workdir, _ = finished_teacher
  config = _teacher_config(teacher_workdir, stages=('teacher', 'distill'))
  with pytest.raises(config_checks.ConfigError) as e:
    preflight.check(config, str(tmp_path / 'wd'))
  _one_line(e, 'config.distill.teacher_checkpoint=', 'would be ignored')
  # Its own workdir's teacher is what the stage trains: fine.
  config_checks.check_teacher_choice(config, teacher_workdir)


def _fake_checkpoint(ckpt_dir, num_sample_steps, stage):
  """A checkpoint with a meta of ours and a dummy state: enough to select."""
  ckpt = checkpoints.Checkpointer(ckpt_dir)
  ckpt.save(1, {'x': np.zeros(1, np.float32)}, layout.model_meta(
      _config(None), stage=stage, num_sample_steps=num_sample_steps,
      stage_num_steps=1))
  ckpt.close()


@pytest.fixture(scope='module')
def fake_distilled(tmp_path_factory):
  """A workdir with a teacher and students for 4 and 2 steps (metadata)."""
  workdir = str(tmp_path_factory.mktemp('fake'))
  _fake_checkpoint(_ckpt_dir(workdir), None, 'teacher')
  for n in (4, 2):
    _fake_checkpoint(os.path.join(distill.student_dir(workdir, n),
                                  'checkpoints'), n, 'distill')
  return workdir


def test_sample_steps_pick_the_student_or_the_teacher(fake_distilled,
                                                      tmp_path):
  """sample.py --num_steps: a student only ever at its own step count."""
  workdir = fake_distilled
  student = lambda n: os.path.join(distill.student_dir(workdir, n),
                                    'checkpoints')
  assert layout.select_model_dir(workdir) == (student(2), None)
  assert layout.select_model_dir(workdir, 4) == (student(4), None)
  chosen, note = layout.select_model_dir(workdir, 3)
  assert chosen == _ckpt_dir(workdir)
  assert 'for 3 steps' in note and 'students: 4, 2' in note
  # Without a teacher, only the students' own counts are meaningful.
  no_teacher = _copy(workdir, tmp_path)
  shutil.rmtree(os.path.join(no_teacher, 'teacher'))
  with pytest.raises(layout.StepCountError) as e:
    layout.select_model_dir(no_teacher, 3)
  _one_line(e, '--num_steps=3', 'distilled for 4, 2 sampling steps')
  # A student's own directory given as the workdir.
  with pytest.raises(layout.StepCountError) as e:
    layout.select_model_dir(distill.student_dir(workdir, 4), 2)
  _one_line(e, '--num_steps=2', 'distilled for 4 sampling steps')


def test_evaluation_needs_models_of_its_data_set(fake_distilled, tmp_path):
  empty = str(tmp_path / 'empty')
  with pytest.raises(checkpoints.CheckpointError) as e:
    preflight.check_sources(_config(None, stages=('eval',)), empty)
  _one_line(e, 'nothing to evaluate', f'--workdir={empty}')
  # The workdir's teacher and students are of another data set.
  config = _config(None, stages=('eval',),
                   **{'dataset.name': 'cifar10'})
  with pytest.raises(checkpoints.CheckpointError) as e:
    preflight.check_sources(config, fake_distilled)
  _one_line(e, "dataset.name='digits' but config.dataset.name='cifar10'",
            '--config.dataset.name=digits')
  # A student as the "teacher" would be swept over other step counts.
  config = _config(None, stages=('eval',), **{
      'distill.teacher_checkpoint': distill.student_dir(fake_distilled, 4),
      'eval.sample_steps': (1, 4, 16)})
  with pytest.raises(config_checks.ConfigError) as e:
    preflight.check_sources(config, str(tmp_path / 'wd'))
  _one_line(e, 'config.eval.sample_steps=(1, 4, 16)',
            'distilled for 4 sampling steps', '--config.eval.sample_steps')
  config.eval.sample_steps = (4,)
  preflight.check_sources(config, str(tmp_path / 'wd'))


def test_no_pickle_in_any_load_path():
  """Checkpoints load through Orbax (JSON + tensorstore) and Flax msgpack,
  arrays through np.load with allow_pickle=False: nothing unpickles."""
  import re  # pylint: disable=g-import-not-at-top
  sources = [os.path.join(REPO, f) for f in ('main.py', 'sample.py')]
  for top in ('diffusion_distill', 'scripts', 'benchmarks'):
    for d, _, files in os.walk(os.path.join(REPO, top)):
      sources += [os.path.join(d, f) for f in files if f.endswith('.py')]
  loads = 0
  for path in sources:
    with open(path) as f:
      text = f.read()
    assert not re.search(r'^\s*(import|from) (cloud)?pickle', text, re.M), path
    assert 'allow_pickle=True' not in text and 'pickle.load' not in text, path
    for call in re.findall(r'np\.load\(([^)]*)\)', text):
      assert 'allow_pickle=False' in call, (path, call)
      loads += 1
  assert loads >= 3


def test_nan_in_the_images_is_a_clear_error(digits_dir, monkeypatch):
  """Only a float source can hold NaN: stand one in for the digits files."""
  images = np.zeros((16, 8, 8, 1), np.float32)
  images[5, 3, 3, 0] = np.nan

  def read_split(builder, info, split):
    del builder, info, split
    return tf.data.Dataset.from_tensor_slices(
        {'image': images, 'label': np.zeros(16, np.int32)})

  monkeypatch.setattr(input_pipeline, '_read_split', read_split)
  config = _config(digits_dir)
  batches = input_pipeline.create_train_iterator(config, batch_size=16)
  with pytest.raises(input_pipeline.NonFiniteDataError) as e:
    next(batches)
  assert isinstance(e.value, ValueError)
  message = str(e.value)
  assert "'digits'" in message and 'step 1' in message and '\n' not in message
  with pytest.raises(input_pipeline.NonFiniteDataError, match="'digits'"):
    input_pipeline.load_all_images(config)


@pytest.fixture(scope='module')
def finished_teacher(digits_dir, tmp_path_factory):
  """A tiny teacher run to its end: 6 steps, checkpoints 4 and 6 kept."""
  config = _config(digits_dir)
  workdir = str(tmp_path_factory.mktemp('finished'))
  final = trainer.run_stage(teacher_stage.teacher_stage(config, workdir))
  ckpt = checkpoints.Checkpointer(_ckpt_dir(workdir), read_only=True)
  assert ckpt.all_steps() == [4, 6]
  return config, workdir, final


def _ckpt_dir(workdir):
  return os.path.join(workdir, 'teacher', 'checkpoints')


def _copy(workdir, tmp_path):
  copy = str(tmp_path / 'wd')
  shutil.copytree(workdir, copy)
  return copy


def _garble(step_dir):
  """Zeroes the first half of every file of the state and cuts the rest.

  Every file, not one: which data file holds which array (e.g. ema_params,
  the only part load_model reads) varies from run to run.
  """
  files = [os.path.join(d, f) for d, _, fs in os.walk(
      os.path.join(step_dir, 'state')) for f in fs]
  for path in files:
    size = os.path.getsize(path)
    with open(path, 'wb') as f:
      f.write(b'\0' * (size // 2))
  return os.path.relpath(max(files, key=os.path.getsize), step_dir)


def _listing(directory):
  """{relative path: sha1} of every file under `directory`."""
  out = {}
  for d, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(d, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = hashlib.sha1(
            f.read()).hexdigest()
  return out


class _Warnings(logging.Handler):
  """Collects the warnings logged (through absl or Python) while attached."""
  level = logging.WARNING

  def __init__(self):
    super().__init__(self.level)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())

  def __enter__(self):
    logging.getLogger().addHandler(self)
    return self

  def __exit__(self, *exc):
    logging.getLogger().removeHandler(self)


class _Infos(_Warnings):
  """Collects the project's INFO lines and above while attached."""
  level = logging.INFO

  def __enter__(self):
    self.previous = logging.getLogger('diffusion_distill').level
    logging.getLogger('diffusion_distill').setLevel(logging.INFO)
    return super().__enter__()

  def __exit__(self, *exc):
    logging.getLogger('diffusion_distill').setLevel(self.previous)
    super().__exit__(*exc)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_and_continues(
    finished_teacher, tmp_path):
  config, finished, _ = finished_teacher
  workdir = _copy(finished, tmp_path)
  ckpt_dir = _ckpt_dir(workdir)
  garbled = _garble(os.path.join(ckpt_dir, '6'))
  corrupt_files = _listing(os.path.join(ckpt_dir, '6'))

  # Read-only loading (load_sampler, evaluation) skips it and moves nothing.
  with _Warnings() as w:
    _, _, params, _ = layout.load_model(ckpt_dir)
  assert any('step 6' in l and 'restored step 4' in l for l in w.lines), w.lines
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))
  assert os.path.isdir(os.path.join(ckpt_dir, '6'))
  assert not os.path.exists(os.path.join(ckpt_dir, '6.corrupt'))

  with _Warnings() as w:
    final = trainer.run_stage(teacher_stage.teacher_stage(
        _config(config.dataset.data_dir, **{'train.num_steps': 8}), workdir))
  warned = [l for l in w.lines if 'step 6' in l and 'restored step 4' in l]
  assert len(warned) == 1 and '\n' not in warned[0], w.lines
  assert ckpt_dir in warned[0] and '6.corrupt' in warned[0]
  assert int(final.step) == 8
  ckpt = checkpoints.Checkpointer(ckpt_dir, read_only=True)
  assert ckpt.all_steps() == [6, 8]
  assert ckpt.restore_meta()['stage_num_steps'] == 8
  # The unusable checkpoint is kept aside as it was, under a name Orbax skips.
  assert _listing(os.path.join(ckpt_dir, '6.corrupt')) == corrupt_files
  assert garbled in corrupt_files


def test_all_checkpoints_corrupt_is_one_line_and_touches_nothing(
    finished_teacher, tmp_path):
  config, finished, _ = finished_teacher
  workdir = _copy(finished, tmp_path)
  ckpt_dir = _ckpt_dir(workdir)
  for step in ('4', '6'):
    _garble(os.path.join(ckpt_dir, step))
  before = _listing(ckpt_dir)
  with pytest.raises(checkpoints.CheckpointError) as e:
    trainer.run_stage(teacher_stage.teacher_stage(config, workdir))
  message = str(e.value)
  assert '\n' not in message, message
  assert ckpt_dir in message and 'nothing was overwritten' in message
  assert 'step 6' in message and 'step 4' in message
  assert _listing(ckpt_dir) == before
  with pytest.raises(checkpoints.CheckpointError, match='no usable checkpoint'):
    layout.load_model(ckpt_dir)


@pytest.mark.slow
def test_nan_updates_stop_with_last_checkpoint_intact(finished_teacher,
                                                      tmp_path):
  config, finished, final = finished_teacher
  workdir = _copy(finished, tmp_path)
  stage = teacher_stage.teacher_stage(
      _config(config.dataset.data_dir, **{'train.num_steps': 10,
                                          'train.max_nonfinite_in_a_row': 2}),
      workdir)
  make_iterator = stage.make_iterator

  def poisoned(start):
    """The real batches, with NaN images from step 7 on."""
    for step, batch in enumerate(make_iterator(start), start + 1):
      if step >= 7:
        batch = dict(batch, image=np.full_like(batch['image'], np.nan))
      yield batch

  stage.make_iterator = poisoned
  with pytest.raises(trainer.NonFiniteError) as e:
    trainer.run_stage(stage)  # Logs (and checks) every 2 steps: stops at 8.
  ckpt_dir = _ckpt_dir(workdir)
  assert ckpt_dir in str(e.value) and 'step 8' in str(e.value)
  ckpt = checkpoints.Checkpointer(ckpt_dir, read_only=True)
  assert ckpt.all_steps() == [4, 6]
  params, meta = ckpt.restore_params(final.params, 'params')
  assert meta['stage_num_steps'] == 6
  for got, want in zip(jax.tree.leaves(params),
                       jax.tree.leaves(final.params)):
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize('args,words', [
    (['--multihost'], '--multihost cannot tell which processes to join '
     '(coordinator_address should be defined)'),
    (['--coordinator_address=127.0.0.1:1234'],
     'cannot tell which processes to join (Number of processes must be '
     'defined)'),
    (['--num_processes=2', '--process_id=2'],
     '--process_id=2 is invalid: must be in 0..1 for --num_processes=2'),
    (['--num_processes=0'], '--num_processes=0 is invalid'),
    (['--coordinator_address=127.0.0.1:99999', '--num_processes=2',
      '--process_id=1'], '--coordinator_address=127.0.0.1:99999 is invalid'),
])
def test_main_multihost_mistakes_exit_2_with_one_line(tmp_path, args, words):
  """Outside a TPU VM or SLURM job, --multihost needs the explicit flags."""
  workdir = tmp_path / 'wd'
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=tests/tiny.py',
       f'--workdir={workdir}'] + args,
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('error: ') and words in lines[-1], lines[-1]
  assert [l for l in lines if l.startswith('error:')] == lines[-1:]
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_unreachable_coordinator_is_one_line_exit_1(tmp_path):
  """A coordinator that does not answer: JAX gives up after its timeout
  (minutes), which a stand-in for jax.distributed.initialize replaces."""
  script = (
      'import sys, main\n'
      'main.FLAGS(sys.argv)\n'
      'def initialize(**kwargs):\n'
      '  assert kwargs == {"coordinator_address": "10.9.9.9:8476", '
      '"num_processes": 2, "process_id": 1}, kwargs\n'
      '  raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out\\n'
      'more detail")\n'
      'main._join_processes(initialize)\n')
  result = subprocess.run(
      [sys.executable, '-c', script, '--config=tests/tiny.py',
       f'--workdir={tmp_path / "wd"}', '--coordinator_address=10.9.9.9:8476',
       '--num_processes=2', '--process_id=1'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      'error: cannot join the other processes through 10.9.9.9:8476: '
      'RuntimeError: DEADLINE_EXCEEDED: Barrier timed out; check that '
      'process 0 runs and that its address and port are reachable from '
      'this host'], result.stderr


REFUSALS = {
    'a bad value': ['--config.model.mean_type=bogus'],
    'a changed frozen field': ['--config.model.ch=64'],
    'steps per dispatch that do not divide the checkpoint': [
        '--config.train.num_steps=8', '--config.train.steps_per_dispatch=4',
        '--config.train.log_every_steps=4',
        '--config.train.checkpoint_every_steps=4'],
    'a data directory that is a file': ['--config.dataset.data_dir={file}'],
    'a missing teacher': ["--config.stages=('distill',)",
                          '--config.distill.teacher_checkpoint=/no/teacher'],
    'a teacher that does not fit': ["--config.stages=('distill',)",
                                    '--config.dataset.class_conditional=True'],
    'a device count without --check_local': ['--device_count=4'],
}


@pytest.mark.slow
def test_refused_runs_leave_the_workdir_byte_for_byte(digits_dir, tmp_path):
  """Every way main.py refuses to resume leaves config.json and every
  checkpoint file as they were."""
  workdir = tmp_path / 'wd'
  base_args = ['--config=tests/tiny.py', f'--config.dataset.data_dir='
               f'{digits_dir}', '--config.train.sample_every_steps=0',
               f'--workdir={workdir}']
  first = subprocess.run([sys.executable, 'main.py', *base_args], cwd=REPO,
                         capture_output=True, text=True, timeout=600,
                         check=False)
  assert first.returncode == 0, first.stderr[-3000:]
  before = _listing(workdir)
  assert 'config.json' in before
  a_file = str(workdir / 'config.json')
  for what, extra in REFUSALS.items():
    extra = [a.format(file=a_file) for a in extra]
    # Later overrides win: the data directory case replaces the good one.
    result = subprocess.run([sys.executable, 'main.py', *base_args, *extra],
                            cwd=REPO, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode in (1, 2), (what, result.stderr[-3000:])
    lines = [l for l in result.stderr.splitlines() if l.startswith('error:')]
    assert len(lines) == 1 and 'Traceback' not in result.stderr, (
        what, result.stderr[-3000:])
    assert _listing(workdir) == before, what
