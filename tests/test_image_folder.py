"""Your own images: --config.dataset.name=image_folder --config.dataset.path=DIR.

A folder of generated images (one sub-folder per class, or none) goes
through TFDS's ImageFolder, is centre-cropped and resized, trains a tiny
teacher and a round of distillation, and samples; each kind of bad folder
is one line before any work.
"""

import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from diffusion_distill import checkpoints, config_checks, input_pipeline
from diffusion_distill import layout, load_sampler, models, preflight, timing
from diffusion_distill import train
from diffusion_distill.stages import distill
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _framed(height, width, inside, outside=0, channels=3):
  """A height x width image whose central square is `inside`, the rest
  `outside`: centre-cropped, only `inside` is left."""
  shape = (height, width) + ((channels,) if channels > 1 else ())
  image = np.full(shape, outside, np.uint8)
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image[top:top + side, left:left + side] = inside
  return image


@pytest.fixture(scope='module')
def classes_dir(tmp_path_factory):
  """Two classes of RGB images of several sizes, none of them 8x8: class
  'a' (label 0) has a dark centre, 'b' (label 1) a bright one."""
  root = str(tmp_path_factory.mktemp('folder') / 'images')
  for i in range(6):
    _write(f'{root}/a/{i}.png', _framed(12 + 2 * i, 16, 40, outside=255))
    _write(f'{root}/b/{i}.jpg' if i % 2 else f'{root}/b/{i}.png',
           _framed(16, 10 + 2 * i, 220, outside=0))
  return root


def _config(path, **overrides):
  config = tiny.tiny_config(None, **{'dataset.name': 'image_folder',
                                     'dataset.path': path,
                                     'dataset.image_size': 8,
                                     'dataset.random_flip': False,
                                     **overrides})
  config.dataset.data_dir = None
  return config


def test_folder_is_read_cropped_resized_and_labelled(classes_dir):
  config = _config(classes_dir, **{'dataset.class_conditional': True})
  config_checks.check_config(config)
  folder = input_pipeline.resolve_image_folder(config)
  assert folder.classes == ('a', 'b') and folder.num_images == 12
  assert (config.dataset.channels, config.dataset.num_classes) == (3, 2)
  images = input_pipeline.load_all_images(config)
  assert images.shape == (12, 8, 8, 3) and images.dtype == np.uint8
  # Only each image's centre survives (JPEG may move a value by a little).
  centre = np.where(images.mean(axis=(1, 2, 3)) < 128, 40, 220)
  assert np.abs(images.astype(int) - centre[:, None, None, None]).max() <= 2
  assert sorted(centre) == [40] * 6 + [220] * 6
  batch = next(input_pipeline.create_train_iterator(config, batch_size=12))
  images, labels = batch['image'].reshape(12, 8, 8, 3), batch['label'].ravel()
  assert batch['image'].shape[0] == jax.local_device_count()
  dark = images.mean(axis=(1, 2, 3)) < 0
  np.testing.assert_array_equal(labels, np.where(dark, 0, 1))


def test_grayscale_folder_without_classes_is_unconditional(tmp_path):
  root = str(tmp_path / 'gray')
  for i in range(4):
    _write(f'{root}/{i}.png', _framed(9, 13, 100 + i, channels=1))
  config = _config(root)
  input_pipeline.resolve_image_folder(config)
  assert (config.dataset.channels, config.dataset.num_classes) == (1, 1)
  images = input_pipeline.load_all_images(config)
  assert images.shape == (4, 8, 8, 1)
  assert sorted(np.unique(images)) == [100, 101, 102, 103]
  assert models.create_model(config).out_ch == 1


@pytest.mark.slow
def test_a_tiny_run_trains_distills_and_samples(classes_dir, tmp_path):
  """preflight records what the folder gives; the teacher and a round of
  distillation train on it; a student samples 8x8 RGB images of a class
  from its checkpoint alone."""
  config = _config(classes_dir, **{'dataset.class_conditional': True,
                                   'stages': ('teacher', 'distill'),
                                   'distill.start_num_steps': 2})
  workdir = str(tmp_path / 'wd')
  train.train_and_evaluate(config, workdir, preflight.check(config, workdir))
  meta = checkpoints.Checkpointer(os.path.join(
      distill.student_dir(workdir, 1), 'checkpoints')).restore_meta()
  assert meta['dataset'] == {'name': 'image_folder', 'class_conditional': True,
                             'path': classes_dir, 'image_size': 8,
                             'channels': 3, 'num_classes': 2}
  sampler = load_sampler(workdir)
  assert sampler.num_steps == 1
  images = sampler.sample(jax.random.PRNGKey(0), 3, labels=np.array([0, 1, 1]))
  assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
  assert layout.saved_config(workdir)['dataset']['num_classes'] == 2
  stages = timing.read(layout.timing_path(workdir))['stages']
  assert list(stages) == ['teacher', 'distill to 1 steps', 'run']
  assert stages['run']['stages'] == ['teacher', 'distill']
  assert stages['run']['seconds'] >= (stages['teacher']['seconds'] +
                                      stages['distill to 1 steps']['seconds'])


def _bad_folders(root):
  """{name: (folder, overrides, words of the one error line)}."""
  rgb = _framed(10, 10, 50)
  _write(f'{root}/mixed_channels/a.png', rgb)
  _write(f'{root}/mixed_channels/b.png', _framed(10, 10, 50, channels=1))
  _write(f'{root}/rgba/a.png', np.zeros((10, 10, 4), np.uint8))
  _write(f'{root}/broken/a.png', rgb)
  with open(f'{root}/broken/b.png', 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n not an image')
  _write(f'{root}/layout/a.png', rgb)
  _write(f'{root}/layout/cls/b.png', rgb)
  os.makedirs(f'{root}/empty')
  _write(f'{root}/empty_class/cls/a.png', rgb)
  os.makedirs(f'{root}/empty_class/other')
  _write(f'{root}/flat/a.png', rgb)
  with open(f'{root}/text_only.txt', 'w') as f:
    f.write('x')
  return {
      'missing': (f'{root}/nope', {}, ['is not a folder']),
      'empty': (f'{root}/empty', {}, ['holds no .png or .jpg images']),
      'empty class': (f'{root}/empty_class', {},
                      ['class folder', 'other holds no .png']),
      'mixed channels': (f'{root}/mixed_channels', {},
                         ['b.png has 1 channel(s)', 'a.png has 3',
                          'all RGB or all grayscale']),
      'RGBA': (f'{root}/rgba', {}, ["a 'RGBA' image", 'convert it']),
      'unreadable': (f'{root}/broken', {},
                     ['b.png is not a readable image', 'repair or remove']),
      'images and folders': (f'{root}/layout', {},
                             ['holds both images', 'sub-folders']),
      'labels without classes': (f'{root}/flat',
                                 {'dataset.class_conditional': True},
                                 ['no class sub-folders',
                                  'class_conditional=False']),
      'channels contradicted': (f'{root}/flat', {'dataset.channels': 1},
                                ['dataset.channels=1 but the images',
                                 'give 3']),
  }


BAD = ('missing', 'empty', 'empty class', 'mixed channels', 'RGBA',
       'unreadable', 'images and folders', 'labels without classes',
       'channels contradicted')


@pytest.fixture(scope='module')
def bad_folders(tmp_path_factory):
  return _bad_folders(str(tmp_path_factory.mktemp('bad')))


@pytest.mark.parametrize('name', BAD)
def test_bad_folder_is_one_line_before_any_work(bad_folders, name, tmp_path):
  folder, overrides, words = bad_folders[name]
  config = _config(folder, **overrides)
  workdir = tmp_path / 'wd'
  with pytest.raises((input_pipeline.DataNotFoundError,
                      input_pipeline.BadImagesError)) as raised:
    preflight.check(config, str(workdir))
  message = str(raised.value)
  assert '\n' not in message
  for w in words:
    assert w in message, message
  assert not workdir.exists()


@pytest.mark.parametrize('overrides,words', [
    ({'dataset.image_size': 6, 'model.ch_mult': (1, 2, 2)},
     ['config.model.ch_mult=(1, 2, 2) is invalid', '3 levels halve 6x6']),
    ({'dataset.image_size': None}, ['config.dataset.image_size=None',
                                    '--config.dataset.image_size=64']),
    ({'dataset.path': None}, ['config.dataset.path=None',
                              '--config.dataset.path=DIR']),
    ({'dataset.name': 'cifar10'}, ['config.dataset.path=',
                                   "'cifar10' has its own: leave it unset"]),
])
def test_config_mistakes_of_a_folder_are_one_line(classes_dir, overrides,
                                                  words):
  config = _config(classes_dir, **overrides)
  with pytest.raises(config_checks.ConfigError) as raised:
    config_checks.check_config(config)
  for w in words:
    assert w in str(raised.value), str(raised.value)


@pytest.mark.slow
def test_main_says_what_is_wrong_with_the_folder(bad_folders, tmp_path):
  """Through main.py: one `error:` line, exit code 1, no workdir."""
  folder = bad_folders['mixed channels'][0]
  workdir = tmp_path / 'wd'
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=tests/tiny.py',
       f'--workdir={workdir}', '--config.dataset.name=image_folder',
       f'--config.dataset.path={folder}', '--config.dataset.image_size=8',
       '--allow_cpu'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert [l for l in lines if l.startswith('error:')] == lines[-1:]
  assert 'has 1 channel(s)' in lines[-1] and 'Traceback' not in result.stderr
  assert not workdir.exists()
