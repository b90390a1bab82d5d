"""What goes wrong in practice: bad configs and workdirs, corrupt checkpoints,
NaN updates and NaN in the data. Each must stop with one clear line, or
recover, without touching the user's files."""

import hashlib
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from diffusion_distill import checkpoints, inference, input_pipeline
from diffusion_distill import train, trainer, validation
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, **overrides):
  """The tiny config without sample grids (their compile is not tested here).

  Keys are 'section.field' or a top-level field such as 'stages'.
  """
  config = tiny.tiny_config(data_dir, **{'train.sample_every_steps': 0})
  for key, value in overrides.items():
    if '.' in key:
      section, field = key.split('.')
      config[section][field] = value
    else:
      config[key] = value
  return config


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
]


@pytest.mark.parametrize('overrides,field,value', BAD_CONFIGS,
                         ids=[f for _, f, _ in BAD_CONFIGS])
def test_bad_config_is_one_line_naming_field_and_value(overrides, field,
                                                        value):
  config = _config(None, **overrides)
  with pytest.raises(validation.ConfigError) as e:
    validation.validate_config(config)  # 4 devices (tests/conftest.py)
  message = str(e.value)
  assert '\n' not in message, message
  assert f'{field}=' in message and value in message, message


def test_tiny_config_is_valid():
  """So that every failure above is due to its override alone."""
  validation.validate_config(_config(None, stages=('teacher', 'distill')))


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


def test_workdir_under_a_file_is_a_config_error(digits_dir, tmp_path):
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('not a directory')
  workdir = str(a_file / 'wd')
  with pytest.raises(validation.ConfigError) as e:
    validation.validate_workdir(workdir)
  message = str(e.value)
  assert '\n' not in message and f'--workdir={workdir}' in message, message
  assert str(a_file) in message
  # train_and_evaluate checks it before writing anything.
  with pytest.raises(validation.ConfigError, match='--workdir='):
    train.train_and_evaluate(_config(digits_dir), workdir)
  assert a_file.read_text() == 'not a directory'
  # A new directory under a writable one is fine, and is not created yet.
  validation.validate_workdir(str(tmp_path / 'new' / 'wd'))
  assert sorted(os.listdir(tmp_path)) == ['notes.txt']


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
  final = trainer.run_stage(train.teacher_stage(config, workdir))
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
  """Collects the warnings absl logs while it is attached."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())

  def __enter__(self):
    logging.getLogger('absl').addHandler(self)
    return self

  def __exit__(self, *exc):
    logging.getLogger('absl').removeHandler(self)


def test_corrupt_latest_checkpoint_falls_back_and_continues(
    finished_teacher, tmp_path):
  config, finished, _ = finished_teacher
  workdir = _copy(finished, tmp_path)
  ckpt_dir = _ckpt_dir(workdir)
  garbled = _garble(os.path.join(ckpt_dir, '6'))
  corrupt_files = _listing(os.path.join(ckpt_dir, '6'))

  # Read-only loading (load_sampler, evaluation) skips it and moves nothing.
  with _Warnings() as w:
    _, _, params, _ = inference.load_model(ckpt_dir)
  assert any('step 6' in l and 'restored step 4' in l for l in w.lines), w.lines
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))
  assert os.path.isdir(os.path.join(ckpt_dir, '6'))
  assert not os.path.exists(os.path.join(ckpt_dir, '6.corrupt'))

  with _Warnings() as w:
    final = trainer.run_stage(train.teacher_stage(
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
    trainer.run_stage(train.teacher_stage(config, workdir))
  message = str(e.value)
  assert '\n' not in message, message
  assert ckpt_dir in message and 'nothing was overwritten' in message
  assert 'step 6' in message and 'step 4' in message
  assert _listing(ckpt_dir) == before
  with pytest.raises(checkpoints.CheckpointError, match='no usable checkpoint'):
    inference.load_model(ckpt_dir)


def test_nan_updates_stop_with_last_checkpoint_intact(finished_teacher,
                                                      tmp_path):
  config, finished, final = finished_teacher
  workdir = _copy(finished, tmp_path)
  stage = train.teacher_stage(
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
