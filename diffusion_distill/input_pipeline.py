"""TFDS -> tf.data -> per-host, per-device NumPy batches.

The order of training examples is a pure function of (seed, process, step):
each epoch is shuffled with a seed derived from (seed, epoch) and flips are
drawn statelessly from (seed, position of the example in the stream). A run
resumed at step k therefore sees exactly the batches a run from step 0 sees at
step k, whatever tf.data's threading does.
"""

import dataclasses
import os
import tempfile
from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from diffusion_distill import checkpoints
from diffusion_distill import dataset_info
# Registers the offline `digits` builder with TFDS.
from diffusion_distill.datasets import digits as _digits  # pylint: disable=unused-import

# Above this many bytes of decoded images per host, re-decode every epoch
# instead of caching in RAM (ImageNet/LSUN would not fit on most hosts).
_MAX_CACHE_BYTES = 4 << 30


class DataNotFoundError(Exception):
  """The TFDS data set a config asks for is not prepared on disk."""


class NonFiniteDataError(ValueError):
  """The images of a data set hold NaN or Inf values."""


class BadImagesError(ValueError):
  """A folder of images that cannot be trained on (one line: which image,
  what is wrong, the fix)."""


_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')  # What TFDS's ImageFolder reads.
# PIL's image modes whose TensorFlow decoding has that many channels.
_MODE_CHANNELS = {'L': 1, 'RGB': 3}


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """What a folder of images holds: its class names (sorted; () for a
  folder of images alone), its number of images and their channels."""
  path: str
  classes: tuple
  num_images: int
  channels: int


def _images_in(directory):
  return sorted(f for f in os.listdir(directory)
                if f.lower().endswith(_IMAGE_SUFFIXES))


def _channels(path, shown):
  """The channels of the image file `path` (named `shown`), read by PIL."""
  try:
    with Image.open(path) as image:
      mode = image.mode
      image.verify()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadImagesError(
        f'{shown} is not a readable image ({e}): repair or remove it') from e
  if mode not in _MODE_CHANNELS:
    raise BadImagesError(
        f'{shown} is a {mode!r} image; the folder\'s images must be '
        'grayscale (L) or RGB: convert it (e.g. PIL\'s '
        "Image.convert('RGB')) or remove it")
  return _MODE_CHANNELS[mode]


def read_image_folder(path) -> ImageFolder:
  """Looks at every image of `path` (a header each, no decoding); raises
  DataNotFoundError for a missing or empty folder and BadImagesError for an
  unreadable image, images of different channels, or a mixed layout."""
  if not os.path.isdir(path):
    raise DataNotFoundError(
        f'config.dataset.path={path!r} is not a folder: give a folder of '
        '.png/.jpg images (one sub-folder per class, or the images alone)')
  entries = sorted(os.listdir(path))
  classes = tuple(e for e in entries if os.path.isdir(os.path.join(path, e)))
  loose = _images_in(path)
  if classes and loose:
    raise BadImagesError(
        f'{path} holds both images ({loose[0]}, ...) and sub-folders '
        f'({classes[0]}, ...): put every image in the sub-folder of its '
        'class, or leave no sub-folders (unconditional)')
  files = ([os.path.join(c, f) for c in classes
            for f in _images_in(os.path.join(path, c))] if classes else loose)
  if not files:
    raise DataNotFoundError(
        f'{path} holds no .png or .jpg images'
        + (f' in its sub-folders ({", ".join(classes)})' if classes else '')
        + ': add some, or point --config.dataset.path at the folder that '
        'holds them')
  empty = [c for c in classes if not _images_in(os.path.join(path, c))]
  if empty:
    raise BadImagesError(
        f'class folder {os.path.join(path, empty[0])} holds no .png or .jpg '
        'images: add some or remove the folder')
  first, seen = None, None
  for f in files:
    channels = _channels(os.path.join(path, f), os.path.join(path, f))
    if seen is None:
      first, seen = f, channels
    elif channels != seen:
      raise BadImagesError(
          f'{os.path.join(path, f)} has {channels} channel(s) but '
          f'{os.path.join(path, first)} has {seen}: convert the images to '
          'one kind, all RGB or all grayscale')
  return ImageFolder(path=path, classes=classes, num_images=len(files),
                     channels=seen)


def resolve_image_folder(config) -> Optional[ImageFolder]:
  """For dataset.name='image_folder': reads the folder and records its
  channels and number of classes in `config.dataset` (a value already set
  must agree), so that config.json and every checkpoint build the model
  without the folder. Raises one-line errors; None for named data sets."""
  d = config.dataset
  if d.name != dataset_info.IMAGE_FOLDER:
    return None
  folder = read_image_folder(d.path)
  if d.class_conditional and not folder.classes:
    raise BadImagesError(
        f'{d.path} has no class sub-folders, so its images have no labels: '
        'set --config.dataset.class_conditional=False, or put each class\'s '
        'images in a sub-folder of its own')
  found = {'channels': folder.channels,
           'num_classes': max(len(folder.classes), 1)}
  for field, value in found.items():
    if d[field] is not None and d[field] != value:
      raise BadImagesError(
          f'config.dataset.{field}={d[field]} but the images of {d.path} give '
          f'{value}: leave it unset, or change the images')
    d[field] = value
  return folder


def _missing_data_error(info: dataset_info.DatasetInfo,
                        builder: tfds.core.DatasetBuilder) -> DataNotFoundError:
  return DataNotFoundError(
      f'TFDS data set {info.tfds_name!r} (version {builder.version}) is not '
      f'prepared in {builder.data_dir}: {info.build_hint}, then pass '
      '--config.dataset.data_dir=DIR or set TFDS_DATA_DIR=DIR.')


# One staging directory per image folder and process, kept until it exits.
_STAGED = {}


def _folder_builder(path, channels) -> tfds.core.DatasetBuilder:
  """TFDS's ImageFolder over `path`. It reads ROOT/SPLIT/CLASS/IMAGE, so a
  temporary ROOT/train holds a link to each class folder of `path` (one to
  `path` itself for a folder of images alone)."""
  path = os.path.abspath(path)
  if path not in _STAGED:
    staging = tempfile.TemporaryDirectory(prefix='image_folder_')
    split = os.path.join(staging.name, 'train')
    os.mkdir(split)
    folder = read_image_folder(path)
    for name in folder.classes or ('images',):
      os.symlink(os.path.join(path, name) if folder.classes else path,
                 os.path.join(split, name))
    _STAGED[path] = staging
  return tfds.ImageFolder(_STAGED[path].name, shape=(None, None, channels))


def _builder(config: ml_collections.ConfigDict,
             info: dataset_info.DatasetInfo) -> tfds.core.DatasetBuilder:
  if config.dataset.name == dataset_info.IMAGE_FOLDER:
    return _folder_builder(config.dataset.path, info.channels)
  # data_dir=None lets TFDS pick its default, which honours TFDS_DATA_DIR.
  builder = tfds.builder(info.tfds_name, data_dir=config.dataset.data_dir)
  if info.local_build:
    # Needs no network; a no-op when the data set is already there.
    builder.download_and_prepare()
  return builder


def check_data_available(config: ml_collections.ConfigDict) -> None:
  """Raises DataNotFoundError unless the configured data set can be read.

  Cheap (it looks at the data directory only) and writes nothing, so drivers
  call it before creating a workdir or compiling anything. Local builds
  (digits) need no download: they are built on first use, so their
  directory must be one that can be written. An image folder is read and
  checked by resolve_image_folder, which preflight runs first.
  """
  if config.dataset.name == dataset_info.IMAGE_FOLDER:
    return
  info = dataset_info.of(config)
  builder = tfds.builder(info.tfds_name, data_dir=config.dataset.data_dir)
  if builder.is_prepared():
    return
  if not info.local_build:
    raise _missing_data_error(info, builder)
  reason = checkpoints.unwritable(builder.data_dir)
  if reason:
    raise DataNotFoundError(
        f'{info.tfds_name!r} is built on first use in {builder.data_dir}, '
        f'which cannot be written: {reason}; pass '
        '--config.dataset.data_dir=DIR with a writable DIR (or set '
        'TFDS_DATA_DIR=DIR)')


def _to_square(image: tf.Tensor, info: dataset_info.DatasetInfo) -> tf.Tensor:
  """Central square crop of a decoded image, resized to image_size, uint8."""
  if info.resize is None:
    return image
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.minimum(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image = image[top:top + side, left:left + side]
  size = (info.image_size, info.image_size)
  # Antialiasing matters when shrinking LSUN's ~256px images by 2x and more;
  # 'area' averages by construction.
  image = tf.image.resize(image, size, method=info.resize, antialias=True)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return tf.ensure_shape(image, size + (info.channels,))


def _deterministic_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _read_split(builder: tfds.core.DatasetBuilder, info: dataset_info.DatasetInfo,
                split) -> tf.data.Dataset:
  """Examples of `split` in file order: {'image': uint8, 'label': int32}."""
  read_config = tfds.ReadConfig(
      options=_deterministic_options(),
      # Caching is decided below, after preprocessing shrinks the images.
      try_autocache=False)
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=read_config)
  except AssertionError as e:  # How TFDS reports an unprepared data set.
    if not builder.is_prepared():
      raise _missing_data_error(info, builder) from e
    raise
  has_labels = 'label' in builder.info.features

  def preprocess(example):
    label = (tf.cast(example['label'], tf.int32) if has_labels
             else tf.zeros((), tf.int32))
    return {'image': _to_square(example['image'], info), 'label': label}

  return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)


def _check_finite(images: np.ndarray, name: str, where: str):
  if not np.isfinite(images).all():
    raise NonFiniteDataError(
        f'data set {name!r} has NaN or Inf pixel values in {where}: repair '
        'or rebuild it (training on them would only skip updates)')


def _derive_seed(*path: int) -> int:
  """A well-mixed 31-bit seed from a tuple of ints (stable across runs)."""
  return int(np.random.SeedSequence(path).generate_state(1)[0] >> 1)


def create_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    start_step: int = 0,
    seed: Optional[int] = None,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
    local_device_count: Optional[int] = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches for this process, starting at `start_step`.

  Args:
    config: the experiment config (uses `seed` and `dataset.*`).
    batch_size: the GLOBAL batch size, summed over all processes and devices.
    start_step: number of batches already consumed (e.g. when resuming).
    seed: data seed; defaults to `config.seed`.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of processes; defaults to `jax.process_count()`.
    local_device_count: devices of this process; defaults to
      `jax.local_device_count()`.

  Returns:
    An iterator of {'image': float32 [local_device_count, per_device_batch,
    H, W, C] in [-1, 1], 'label': int32 [local_device_count,
    per_device_batch]}.
  """
  info = dataset_info.of(config)
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if local_device_count is None:
    local_device_count = jax.local_device_count()
  _check_batch(batch_size, process_count, local_device_count, start_step)
  host_batch = batch_size // process_count
  seed = config.seed if seed is None else seed
  examples, num_examples = _process_examples(config, info, process_index,
                                             process_count)
  ds = _stream(examples, num_examples, config, info, seed, process_index,
               start_step * host_batch)
  ds = _device_batches(ds, info, host_batch, local_device_count)
  ds = ds.prefetch(config.dataset.prefetch)
  ds = ds.with_options(_deterministic_options())
  batches = tfds.as_numpy(ds)
  # Integer images (all of our TFDS data sets) cannot hold NaN or Inf; only
  # a float source (e.g. a custom builder) is checked, on the host batch.
  if not examples.element_spec['image'].dtype.is_floating:
    return iter(batches)
  return _finite_batches(batches, config.dataset.name, start_step)


@dataclasses.dataclass(frozen=True)
class StageData:
  """A stage's data: called with a start step, its iterator of batches
  (create_train_iterator with this config, global batch size and seed)."""
  config: ml_collections.ConfigDict
  batch_size: int
  seed: int

  def __call__(self, start_step):
    return create_train_iterator(self.config, batch_size=self.batch_size,
                                 start_step=start_step, seed=self.seed)


def iterator_factory(config, batch_size, seed) -> StageData:
  """start_step -> create_train_iterator(config, ...): a stage's data."""
  return StageData(config, batch_size, seed)


def _check_batch(batch_size, process_count, local_device_count, start_step):
  num_shards = process_count * local_device_count
  if batch_size <= 0 or batch_size % num_shards:
    raise ValueError(
        f'Batch size {batch_size} must be a positive multiple of '
        f'process_count * local_device_count = {process_count} * '
        f'{local_device_count} = {num_shards}; set the batch size to a '
        f'multiple of {num_shards}.')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')


def _process_examples(config, info, process_index, process_count):
  """(examples of this process's split, cached if small; their number)."""
  builder = _builder(config, info)
  if isinstance(builder, tfds.ImageFolder):  # It reads whole splits only.
    split = 'train'
    examples = _read_split(builder, info, split).shard(process_count,
                                                       process_index)
  else:
    split = tfds.split_for_jax_process(
        'train', process_index=process_index, process_count=process_count)
    examples = _read_split(builder, info, split)
  num_examples = int(examples.cardinality())
  if num_examples < 0:  # Unknown to tf.data; TFDS metadata knows.
    num_examples = builder.info.splits[split].num_examples
  if num_examples == 0:
    raise ValueError(
        f'Process {process_index} of {process_count} got no examples of '
        f'{info.tfds_name!r}; use fewer processes.')
  image_bytes = info.image_size**2 * info.channels
  if num_examples * image_bytes <= _MAX_CACHE_BYTES:
    examples = examples.cache()
  return examples, num_examples


def _stream(examples, num_examples, config, info, seed, process_index,
            first_example):
  """The endless, reshuffled-per-epoch stream from example `first_example`."""
  shuffle_key = _derive_seed(seed, process_index, 0)
  flip_key = _derive_seed(seed, process_index, 1)
  shuffle_buffer = max(1, min(config.dataset.shuffle_buffer, num_examples))

  def epoch(index):
    epoch_seed = tf.random.stateless_uniform(
        (), seed=tf.stack([tf.constant(shuffle_key, tf.int64), index]),
        minval=0, maxval=tf.int64.max, dtype=tf.int64)
    return examples.shuffle(shuffle_buffer, seed=epoch_seed,
                            reshuffle_each_iteration=False)

  # Batches run across epoch boundaries, so step k holds examples
  # [k * host_batch, (k + 1) * host_batch) of the endless stream. Resuming
  # starts at the right epoch but must still read up to one epoch to skip to
  # the right position inside it.
  first_epoch, skip = divmod(first_example, num_examples)
  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
  ds = ds.flat_map(epoch).skip(skip).enumerate(start=first_example)
  random_flip = config.dataset.random_flip and info.allows_flip

  def place(position, example):
    image = example['image']
    if random_flip:
      u = tf.random.stateless_uniform(
          (), seed=tf.stack([tf.constant(flip_key, tf.int64), position]))
      image = tf.cond(u < 0.5, lambda: tf.reverse(image, axis=[1]),
                      lambda: image)
    return {'image': image, 'label': example['label']}

  return ds.map(place, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _device_batches(ds, info, host_batch, local_device_count):
  """Host batches in [-1, 1], reshaped to [devices, per-device batch, ...]."""
  ds = ds.batch(host_batch, drop_remainder=True)
  per_device_batch = host_batch // local_device_count
  image_shape = (local_device_count, per_device_batch) + info.image_shape

  def to_model_input(batch):
    image = tf.cast(batch['image'], tf.float32) / 127.5 - 1.0
    return {'image': tf.reshape(image, image_shape),
            'label': tf.reshape(batch['label'], image_shape[:2])}

  return ds.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)


def _finite_batches(batches, name, start_step):
  for step, batch in enumerate(batches, start_step + 1):
    _check_finite(batch['image'], name, f'the batch of training step {step}')
    yield batch


def load_all_images(config: ml_collections.ConfigDict,
                    split: str = 'train') -> np.ndarray:
  """Whole split as uint8 [N, H, W, C], in file order, preprocessed, unflipped.

  Holds everything in memory: meant for small data sets (digits) in
  evaluation.
  """
  info = dataset_info.of(config)
  builder = _builder(config, info)
  ds = _read_split(builder, info, split).batch(4096)
  batches = [batch['image'] for batch in tfds.as_numpy(ds)]
  for i, images in enumerate(batches):
    if np.issubdtype(images.dtype, np.floating):
      _check_finite(images, config.dataset.name,
                    f'examples {i * 4096}-{i * 4096 + len(images) - 1} of '
                    f'split {split!r}')
  if not batches:
    return np.zeros((0, info.image_size, info.image_size, info.channels),
                    np.uint8)
  return np.concatenate(batches)
