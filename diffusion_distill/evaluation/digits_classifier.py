"""A small fixed classifier of the 8x8 digits: the feature net of FD-digits.

Inception features mean nothing on 8x8 grayscale digits, so the offline
quickstart measures its samples with this network instead: a tiny CNN trained
once (scripts/train_digits_classifier.py) on a fixed split of
scikit-learn's 1,797 digits and shipped as `digits_classifier.npz`.

Images are processed exactly as the `digits` TFDS builder stores them
(uint8 = round(v * 255 / 16)) and as the model sees them (x / 127.5 - 1).

Parameters (npz keys, '/'-joined Flax paths):
  conv1/kernel [3, 3, 1, 16], conv1/bias [16]       8x8 -> 8x8
  conv2/kernel [3, 3, 16, 32], conv2/bias [32]      stride 2 -> 4x4
  features/kernel [512, 64], features/bias [64]     the 64-d feature layer
  logits/kernel [64, 10], logits/bias [10]
"""

import os
from typing import Any, Dict, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Params = Dict[str, Any]

NUM_DIGITS = 1797
NUM_TRAIN = 1500
NUM_CLASSES = 10
FEATURE_DIM = 64
SPLIT_SEED = 0
# sklearn stores 4-bit intensities 0..16; the TFDS builder rescales them.
_SKLEARN_MAX_VALUE = 16

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            'digits_classifier.npz')


class DigitsClassifier(nn.Module):
  """[B, 8, 8, 1] in [-1, 1] -> (features [B, 64], logits [B, 10])."""

  @nn.compact
  def __call__(self, x):
    # swish rather than ReLU: no dead units, so the feature covariance of
    # FD-digits has no all-zero directions.
    x = nn.swish(nn.Conv(16, (3, 3), name='conv1')(x))
    x = nn.swish(nn.Conv(32, (3, 3), strides=2, name='conv2')(x))
    x = x.reshape((x.shape[0], -1))
    features = nn.swish(nn.Dense(FEATURE_DIM, name='features')(x))
    logits = nn.Dense(NUM_CLASSES, name='logits')(features)
    return features, logits


def load_digits() -> Tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as the TFDS builder stores them: uint8 [N, 8, 8, 1], labels."""
  from sklearn.datasets import load_digits as sklearn_digits  # pylint: disable=g-import-not-at-top
  digits = sklearn_digits()
  images = np.round(digits.images * (255.0 / _SKLEARN_MAX_VALUE))
  return images.astype(np.uint8)[..., None], digits.target.astype(np.int32)


def digits_split() -> Tuple[np.ndarray, np.ndarray]:
  """Indices (train [1500], held out [297]) of the classifier's fixed split."""
  permutation = np.random.default_rng(SPLIT_SEED).permutation(NUM_DIGITS)
  return np.sort(permutation[:NUM_TRAIN]), np.sort(permutation[NUM_TRAIN:])


def to_model_input(images_uint8) -> jnp.ndarray:
  """uint8 [B, 8, 8, 1] -> float32 in [-1, 1], as the diffusion model sees it."""
  return jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0


def init_params(rng) -> Params:
  dummy = jnp.zeros((1, 8, 8, 1), jnp.float32)
  return flax.core.unfreeze(DigitsClassifier().init(rng, dummy)['params'])


def save_params(path, params: Params) -> None:
  flat = {'/'.join(key): np.asarray(value, np.float32) for key, value in
          flax.traverse_util.flatten_dict(params).items()}
  np.savez(path, **flat)


def load_digits_classifier(path: Optional[str] = None) -> Params:
  """The shipped classifier's parameters (or those in `path`)."""
  path = path or WEIGHTS_PATH
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'Digits classifier weights not found at {path}: run '
        f'`python scripts/train_digits_classifier.py --output={path}`.')
  with np.load(path, allow_pickle=False) as data:
    flat = {tuple(key.split('/')): np.asarray(data[key]) for key in data.files}
  return flax.traverse_util.unflatten_dict(flat)


@jax.jit
def _apply(params, images_uint8):
  return DigitsClassifier().apply({'params': params},
                                  to_model_input(images_uint8))


def digits_features_and_logits(
    params: Params, images_uint8, batch_size: int = 2048
) -> Tuple[np.ndarray, np.ndarray]:
  """uint8 [N, 8, 8, 1] -> features [N, 64], logits [N, 10] (NumPy float32).

  Works in fixed-size, padded batches so any N compiles at most once.
  """
  images = np.asarray(images_uint8)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (
      8, 8, 1):
    raise ValueError(f'The digits classifier needs uint8 images [N, 8, 8, 1]; '
                     f'got {images.dtype} {images.shape}.')
  num = images.shape[0]
  size = min(batch_size, _round_up(max(num, 1), 256))
  features, logits = [], []
  for start in range(0, num, size):
    batch = images[start:start + size]
    pad = size - batch.shape[0]
    batch = np.concatenate([batch, np.zeros((pad, 8, 8, 1), np.uint8)])
    f, l = jax.device_get(_apply(params, batch))
    features.append(f[:size - pad])
    logits.append(l[:size - pad])
  if not features:
    return (np.zeros((0, FEATURE_DIM), np.float32),
            np.zeros((0, NUM_CLASSES), np.float32))
  return np.concatenate(features), np.concatenate(logits)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
