"""TFDS builder for scikit-learn's bundled 8x8 handwritten digits.

The quickstart has to run offline on a laptop; scikit-learn ships these 1,797
images inside its wheel, so the builder needs no download at all and
`download_and_prepare()` only writes TFRecords from the bundled array.
"""

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

# sklearn stores intensities as 0..16 (4-bit); everything else in the project
# works on uint8 images.
_SKLEARN_MAX_VALUE = 16


class Digits(tfds.core.GeneratorBasedBuilder):
  """UCI/scikit-learn optical-recognition digits, 8x8 grayscale, 10 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: sklearn.datasets.load_digits, rescaled '
               '0..16 -> 0..255, one train split in sklearn order.',
  }

  # TFDS 4.9.x derives `code_path` through `importlib_resources`, which it
  # only declares as a dependency for Python < 3.9, so `download_and_prepare`
  # fails with ModuleNotFoundError on a plain install. Nothing here needs the
  # zipapp support that lookup exists for.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            '1,797 8x8 grayscale handwritten digits bundled with '
            'scikit-learn (sklearn.datasets.load_digits); intensities '
            'rescaled from 0..16 to 0..255.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
        # Keep sklearn's order so example i here is sample i there.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from the sklearn wheel.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    # Imported lazily: only building needs scikit-learn, reading does not.
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    images = np.round(digits.images * (255.0 / _SKLEARN_MAX_VALUE))
    images = images.astype(np.uint8)[..., None]
    for index, (image, label) in enumerate(zip(images, digits.target)):
      yield index, {'image': image, 'label': int(label)}
