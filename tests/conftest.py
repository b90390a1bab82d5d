"""Shared test set-up: 4 simulated CPU devices and a digits data set built once."""

import os

# Must happen before JAX is imported anywhere: the trainer pmaps over all
# local devices, and the tests check that 4 devices give the 1-device result.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import base  # pylint: disable=g-import-not-at-top,wrong-import-position
from diffusion_distill import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A TFDS data_dir with digits built once, away from ~/tensorflow_datasets."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  config = base.get_config()
  config.dataset.name = 'digits'
  config.dataset.data_dir = data_dir
  input_pipeline.load_all_images(config)  # Builds it (offline).
  return data_dir
