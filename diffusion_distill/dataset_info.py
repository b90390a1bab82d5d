"""Facts about each data set that the model, the sampler and the checks need.

Pure data, no TensorFlow: a trained model can be built and sampled from
without the input pipeline installed. The input pipeline reads the same
records to find and preprocess the images.
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the pipeline need to know about one data set.

  Attributes:
    image_size: height = width of the images the model sees.
    channels: image channels.
    num_classes: number of labels (1 for data sets without labels).
    tfds_name: TFDS name (with config) the images are read from.
    allows_flip: whether a left-right mirror image is still a valid example.
    resize: None when TFDS images already are image_size squares; otherwise
      the tf.image.resize method applied to their central square crop.
    build_hint: how to prepare the TFDS data set, for DataNotFoundError.
    local_build: built on the spot from files bundled with installed
      packages, with no download.
  """
  image_size: int
  channels: int
  num_classes: int
  tfds_name: str
  allows_flip: bool
  resize: Optional[str] = None
  build_hint: str = ''
  local_build: bool = False

  @property
  def image_shape(self):
    return (self.image_size, self.image_size, self.channels)


DATASETS = {
    'cifar10': DatasetInfo(
        image_size=32, channels=3, num_classes=10, tfds_name='cifar10',
        allows_flip=True,
        build_hint='on a machine with internet run '
                   '`tfds build cifar10 --data_dir=DIR`'),
    # The paper's ImageNet 64x64 (class-conditional) is built from full-size
    # ImageNet by area-resizing central square crops.
    'imagenet64': DatasetInfo(
        image_size=64, channels=3, num_classes=1000, tfds_name='imagenet2012',
        allows_flip=True, resize='area',
        build_hint='put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
                   'in DIR/downloads/manual and run '
                   '`tfds build imagenet2012 --data_dir=DIR`'),
    'lsun_church128': DatasetInfo(
        image_size=128, channels=3, num_classes=1,
        tfds_name='lsun/church_outdoor', allows_flip=True, resize='bilinear',
        build_hint='on a machine with internet run '
                   '`tfds build lsun/church_outdoor --data_dir=DIR`'),
    'lsun_bedroom128': DatasetInfo(
        image_size=128, channels=3, num_classes=1, tfds_name='lsun/bedroom',
        allows_flip=True, resize='bilinear',
        build_hint='on a machine with internet run '
                   '`tfds build lsun/bedroom --data_dir=DIR`'),
    # A mirrored 3 is not a 3: never flip digits.
    'digits': DatasetInfo(
        image_size=8, channels=1, num_classes=10, tfds_name='digits',
        allows_flip=False, local_build=True),
}


# A folder of the user's own images (input_pipeline reads it with TFDS's
# ImageFolder): its size comes from config.dataset.image_size, its channels
# and classes from the images, which preflight records in the config.
IMAGE_FOLDER = 'image_folder'
NAMES = tuple(DATASETS) + (IMAGE_FOLDER,)
# The fields of config.dataset that describe an image folder, and only one.
FOLDER_FIELDS = ('path', 'image_size', 'channels', 'num_classes')


def get(name: str) -> DatasetInfo:
  """The DatasetInfo of a named TFDS data set (config checks name the
  choices); of(config) also knows image folders."""
  return DATASETS[name]


def of(config) -> DatasetInfo:
  """The DatasetInfo of `config.dataset`: a named data set's, or that of
  the image folder it describes (channels 3 and one class until preflight
  has read the folder's)."""
  d = config.dataset
  if d.name != IMAGE_FOLDER:
    return get(d.name)
  return DatasetInfo(
      image_size=d.image_size, channels=d.get('channels') or 3,
      num_classes=d.get('num_classes') or 1, tfds_name=IMAGE_FOLDER,
      allows_flip=True, resize='bilinear')


def has_null_class(config) -> bool:
  """Whether the model learns a null class (label dropout, for guidance).

  `config` holds the dataset section and, for guided runs, the guidance
  one (checkpoints written before guidance existed have none).
  """
  guidance = config.get('guidance') or {}
  return bool(config.dataset.class_conditional) and (
      guidance.get('label_dropout', 0.) > 0)


# Why a guided checkpoint written before label dropout reached the teacher's
# loss cannot be guided: its null class kept its random initial embedding.
UNTRAINED_NULL_CLASS = (
    'it comes from a guided teacher trained before guidance.label_dropout '
    "reached the teacher's loss, so the null class never learned the "
    'unconditional prediction and guided samples would be wrong: retrain the '
    "teacher in a new --workdir, then its 'guide' and 'distill' stages; "
    'unguided use (no guidance, w = 0) still works')


def null_class_untrained(config) -> bool:
  """Whether `config`, a checkpoint's (layout.config_from_meta), has a null
  class that its teacher never trained: see UNTRAINED_NULL_CLASS."""
  guidance = config.get('guidance') or {}
  return has_null_class(config) and guidance.get('null_class_trained') is False


def num_model_classes(config) -> int:
  """Label values the model embeds: 1 (none) unless class-conditional; the
  data set's classes, plus the null class (the last) with label dropout."""
  if not config.dataset.class_conditional:
    return 1
  return of(config).num_classes + int(has_null_class(config))


def null_label(config):
  """The label that stands for "no class", or None without label dropout."""
  if not has_null_class(config):
    return None
  return of(config).num_classes
