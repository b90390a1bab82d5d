"""Tests of the input pipeline: shapes, per-host splits, resume determinism,
flips, the offline digits builder and the missing-data error."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base
from diffusion_distill import config_checks
from diffusion_distill import dataset_info
from diffusion_distill import input_pipeline

NUM_DIGITS = 1797


@pytest.fixture(scope='session')
def digits_images(digits_dir):
  return input_pipeline.load_all_images(_config('digits', digits_dir))


def _config(name, data_dir=None, random_flip=True):
  config = base.get_config()
  config.dataset.name = name
  config.dataset.data_dir = data_dir
  config.dataset.random_flip = random_flip
  return config


def _to_uint8(images):
  """Undoes the [-1, 1] scaling exactly; [..., H, W, C] -> [N, H, W, C]."""
  images = np.round((images + 1.0) * 127.5).astype(np.uint8)
  return images.reshape((-1,) + images.shape[-3:])


def _indices(images, reference):
  """Index of every image in `reference` (digits images are all distinct)."""
  lookup = {image.tobytes(): i for i, image in enumerate(reference)}
  return [lookup[image.tobytes()] for image in images]


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def test_dataset_info():
  info = dataset_info.get('digits')
  assert (info.image_size, info.channels, info.num_classes) == (8, 1, 10)
  assert not info.allows_flip
  info = dataset_info.get('imagenet64')
  assert (info.image_size, info.num_classes, info.tfds_name) == (
      64, 1000, 'imagenet2012')
  assert set(dataset_info.DATASETS) == {
      'cifar10', 'imagenet64', 'lsun_church128', 'lsun_bedroom128', 'digits'}


def test_digits_builder(digits_dir, digits_images):
  builder = tfds.builder('digits', data_dir=digits_dir)
  assert builder.info.splits['train'].num_examples == NUM_DIGITS
  assert builder.info.features['label'].num_classes == 10
  assert str(builder.info.version) == '1.0.0'
  images = digits_images
  assert images.shape == (NUM_DIGITS, 8, 8, 1)
  assert images.dtype == np.uint8
  assert images.min() == 0 and images.max() == 255
  # sklearn's order and its 0..16 -> 0..255 rescaling.
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  expected = np.round(load_digits().images * 255 / 16).astype(np.uint8)
  np.testing.assert_array_equal(images[..., 0], expected)
  labels = [int(e['label']) for e in tfds.as_numpy(
      builder.as_dataset('train', shuffle_files=False))]
  assert sorted(set(labels)) == list(range(10))


def test_cifar10_batch_shapes_and_range():
  config = _config('cifar10')
  with tfds.testing.mock_data(num_examples=24):
    iterator = input_pipeline.create_train_iterator(
        config, batch_size=8, process_index=0, process_count=1,
        local_device_count=2)
    for batch in _take(iterator, 4):  # Crosses the first epoch boundary.
      assert batch['image'].shape == (2, 4, 32, 32, 3)
      assert batch['image'].dtype == np.float32
      assert batch['image'].min() >= -1.0 and batch['image'].max() <= 1.0
      assert batch['label'].shape == (2, 4)
      assert batch['label'].dtype == np.int32
      assert batch['label'].min() >= 0 and batch['label'].max() < 10


def test_each_process_reads_its_own_examples(digits_dir, digits_images):
  config = _config('digits', digits_dir)
  halves = [set(range(0, 899)), set(range(899, NUM_DIGITS))]
  for process_index, half in enumerate(halves):
    iterator = input_pipeline.create_train_iterator(
        config, batch_size=40, process_index=process_index, process_count=2,
        local_device_count=2)
    batches = _take(iterator, 45)
    assert batches[0]['image'].shape == (2, 10, 8, 8, 1)  # 40 / 2 hosts.
    images = np.concatenate([_to_uint8(b['image']) for b in batches])
    first_epoch = _indices(images[:len(half)], digits_images)
    # A permutation of this process's half, none of the other's.
    assert sorted(first_epoch) == sorted(half)


@pytest.mark.parametrize('start_step', [28, 56, 100])
def test_resume_yields_the_same_batches(digits_dir, start_step):
  # 64 per step over 1,797 images: steps 28 and 56 straddle epoch boundaries,
  # step 100 lies inside the fourth epoch.
  config = _config('digits', digits_dir)
  kwargs = dict(batch_size=64, process_index=0, process_count=1,
                local_device_count=2)
  from_start = _take(input_pipeline.create_train_iterator(config, **kwargs),
                     start_step + 3)
  resumed = _take(input_pipeline.create_train_iterator(
      config, start_step=start_step, **kwargs), 3)
  for expected, actual in zip(from_start[start_step:], resumed):
    np.testing.assert_array_equal(actual['image'], expected['image'])
    np.testing.assert_array_equal(actual['label'], expected['label'])


def test_epochs_are_reshuffled_and_seed_matters(digits_dir, digits_images):
  config = _config('digits', digits_dir)
  kwargs = dict(batch_size=NUM_DIGITS, process_index=0, process_count=1,
                local_device_count=1)
  epochs = [_indices(_to_uint8(b['image']), digits_images) for b in _take(
      input_pipeline.create_train_iterator(config, **kwargs), 2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_DIGITS))
  assert epochs[0] != epochs[1]
  other_seed = next(input_pipeline.create_train_iterator(
      config, seed=config.seed + 1, **kwargs))
  assert _indices(_to_uint8(other_seed['image']), digits_images) != epochs[0]


def test_digits_are_never_flipped(digits_dir, digits_images):
  config = _config('digits', digits_dir, random_flip=True)
  iterator = input_pipeline.create_train_iterator(
      config, batch_size=128, process_index=0, process_count=1,
      local_device_count=1)
  for batch in _take(iterator, 15):
    # Raises KeyError for any image that is not exactly a data set image.
    _indices(_to_uint8(batch['image']), digits_images)


def _count_flips(config, start_step=0):
  with tfds.testing.mock_data(num_examples=32):
    raw = np.stack([e['image'] for e in tfds.as_numpy(
        # The mocked as_dataset takes keyword arguments only.
        tfds.builder('cifar10').as_dataset(split='train',
                                           shuffle_files=False))])
    iterator = input_pipeline.create_train_iterator(
        config, batch_size=16, start_step=start_step, process_index=0,
        process_count=1, local_device_count=2)
    batches = _take(iterator, 6)
  images = np.concatenate([_to_uint8(b['image']) for b in batches])
  unflipped = {image.tobytes() for image in raw}
  flipped = {image[:, ::-1].tobytes() for image in raw}
  num_plain = sum(image.tobytes() in unflipped for image in images)
  num_flipped = sum(image.tobytes() in flipped for image in images)
  assert num_plain + num_flipped == len(images)  # Noise images: no overlap.
  return num_plain, num_flipped, batches


def test_cifar10_random_flips():
  num_plain, num_flipped, _ = _count_flips(_config('cifar10'))
  assert num_plain > 0 and num_flipped > 0
  num_plain, num_flipped, _ = _count_flips(
      _config('cifar10', random_flip=False))
  assert num_flipped == 0


def test_flips_are_deterministic_on_resume():
  config = _config('cifar10')
  *_, from_start = _count_flips(config)
  *_, resumed = _count_flips(config, start_step=3)
  for expected, actual in zip(from_start[3:], resumed):
    np.testing.assert_array_equal(actual['image'], expected['image'])


def test_batch_not_divisible_by_devices():
  with pytest.raises(ValueError, match=r'10.*2 \* 4 = 8'):
    input_pipeline.create_train_iterator(
        _config('cifar10'), batch_size=10, process_index=0, process_count=2,
        local_device_count=4)


def test_class_conditional_without_labels():
  config = _config('lsun_church128')
  config.dataset.class_conditional = True
  with pytest.raises(config_checks.ConfigError, match='class_conditional'):
    config_checks.check_config(config)


def test_missing_data(tmp_path):
  config = _config('cifar10', str(tmp_path))
  with pytest.raises(input_pipeline.DataNotFoundError,
                     match='cifar10.*TFDS_DATA_DIR'):
    input_pipeline.check_data_available(config)
  with pytest.raises(input_pipeline.DataNotFoundError):
    input_pipeline.create_train_iterator(
        config, batch_size=8, process_index=0, process_count=1,
        local_device_count=1)
