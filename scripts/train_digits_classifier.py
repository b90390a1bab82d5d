"""Trains the fixed digits classifier behind FD-digits and writes its .npz.

  python scripts/train_digits_classifier.py      # about a minute on a laptop CPU

Deterministic: a fixed seed, the fixed 1,500 / 297 split of
`digits_classifier.digits_split()`, full float32 on CPU. It prints the
held-out accuracy and writes diffusion_distill/evaluation/digits_classifier.npz,
which ships with the package; re-running it changes FD-digits values, so
numbers are only comparable between runs that used the same file.

Training adds random shifts by up to one pixel (the digits are not perfectly
centred, and samples of a diffusion model need not be either) and an
"outlier exposure" term: on images of uniform noise the classifier is pushed
towards the uniform prediction. Without it a CNN classifies noise with high
confidence, which would make the confidence metric blind to samples of a
model that has not learned anything yet.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_distill.evaluation import digits_classifier as dc  # pylint: disable=g-import-not-at-top,wrong-import-position

_SEED = 0
_BATCH_SIZE = 128
_MAX_SHIFT = 1


def _random_shift(rng, images):
  """Shifts each image by up to _MAX_SHIFT pixels, filling with background."""
  padded = jnp.pad(images, ((0, 0), (_MAX_SHIFT, _MAX_SHIFT),
                            (_MAX_SHIFT, _MAX_SHIFT), (0, 0)),
                   constant_values=-1.0)  # -1 is the digits' black background
  offsets = jax.random.randint(rng, (images.shape[0], 2), 0, 2 * _MAX_SHIFT + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (8, 8, 1))

  return jax.vmap(crop)(padded, offsets)


def _loss(params, images, labels, noise, outlier_weight):
  model = dc.DigitsClassifier()
  _, logits = model.apply({'params': params}, images)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  _, noise_logits = model.apply({'params': params}, noise)
  # Cross-entropy to the uniform distribution over the 10 classes.
  uniform_ce = -jax.nn.log_softmax(noise_logits).mean()
  return ce + outlier_weight * uniform_ce, ce


def train(num_steps: int, learning_rate: float, weight_decay: float,
          outlier_weight: float, log_every: int = 500):
  images, labels = dc.load_digits()
  train_idx, heldout_idx = dc.digits_split()
  x_train = np.asarray(dc.to_model_input(images[train_idx]))
  y_train = labels[train_idx]

  rng = jax.random.PRNGKey(_SEED)
  rng, init_rng = jax.random.split(rng)
  params = dc.init_params(init_rng)
  schedule = optax.cosine_decay_schedule(learning_rate, num_steps)
  optimizer = optax.adamw(schedule, weight_decay=weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    rng_batch, rng_shift, rng_noise = jax.random.split(rng, 3)
    index = jax.random.randint(rng_batch, (_BATCH_SIZE,), 0, x_train.shape[0])
    batch = _random_shift(rng_shift, jnp.asarray(x_train)[index])
    noise = dc.to_model_input(jax.random.randint(
        rng_noise, (_BATCH_SIZE, 8, 8, 1), 0, 256).astype(jnp.uint8))
    (_, ce), grads = jax.value_and_grad(_loss, has_aux=True)(
        params, batch, jnp.asarray(y_train)[index], noise, outlier_weight)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, ce

  for i in range(num_steps):
    params, opt_state, ce = step(params, opt_state, jax.random.fold_in(rng, i))
    if (i + 1) % log_every == 0:
      print(f'step {i + 1}/{num_steps}  train cross-entropy {float(ce):.4f}')

  params = jax.device_get(params)
  _, logits = dc.digits_features_and_logits(params, images[heldout_idx])
  accuracy = float(np.mean(np.argmax(logits, -1) == labels[heldout_idx]))
  return params, accuracy, len(heldout_idx)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--output', default=dc.WEIGHTS_PATH)
  parser.add_argument('--num_steps', type=int, default=4000)
  parser.add_argument('--learning_rate', type=float, default=3e-3)
  parser.add_argument('--weight_decay', type=float, default=1e-4)
  parser.add_argument('--outlier_weight', type=float, default=0.5)
  args = parser.parse_args(argv)
  params, accuracy, num_heldout = train(args.num_steps, args.learning_rate,
                                        args.weight_decay, args.outlier_weight)
  print(f'held-out accuracy {accuracy:.4f} '
        f'({round(accuracy * num_heldout)}/{num_heldout})')
  dc.save_params(args.output, params)
  print(f'Wrote {args.output} ({os.path.getsize(args.output)} bytes)')


if __name__ == '__main__':
  main()
