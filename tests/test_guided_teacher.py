"""What a guided teacher learns, trained through its stage: its null class.

Data: three classes of 8x8 images, each an isotropic Gaussian around its own
pattern, so that E[x | z_t, c] and the unconditional E[x | z_t] are exact
(tests/gaussian.py). A tiny teacher is trained on it by the teacher stage
(teacher_stage.teacher_stage, trainer.run_stage) with label dropout 0.3,
and once more with that stage's step rebuilt from its loss without the
dropout: the stage as it was before its loss received the rate. At a noise
level where z_t says little about the class, the prediction for the null
label is compared with the exact denoisers.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distill import dataset_info
from diffusion_distill import diffusion
from diffusion_distill import inference
from diffusion_distill import models
from diffusion_distill.stages import teacher as teacher_stage
from diffusion_distill import trainer
from tests import gaussian
from tests import tiny

NUM_CLASSES = 3  # Of the digits' 10 labels, the data uses 0, 1 and 2.
STD = 0.15
LOGSNR = -8.  # alpha^2 = 3e-4: z_t barely tells the classes apart.


def _class_means():
  """[3, 8, 8, 1]: bright, dark and a checkerboard."""
  yy, xx = np.mgrid[0:8, 0:8]
  patterns = [np.full((8, 8), 0.6), np.full((8, 8), -0.6),
              np.where((xx + yy) % 2 == 0, 0.6, -0.6)]
  return np.stack(patterns)[..., None].astype(np.float32)


def _batches(means, batch_size, seed):
  """Endless device batches of the class-conditional Gaussians."""
  devices = jax.local_device_count()
  rs = np.random.default_rng(seed)
  while True:
    labels = rs.integers(0, NUM_CLASSES, batch_size)
    images = means[labels] + STD * rs.standard_normal(
        (batch_size,) + means.shape[1:]).astype(np.float32)
    yield {'image': images.reshape((devices, -1) + means.shape[1:]),
           'label': labels.reshape(devices, -1).astype(np.int32)}


def _train_teacher(data_dir, workdir, applies_dropout):
  config = tiny.tiny_config(data_dir, **{
      'dataset.class_conditional': True, 'guidance.label_dropout': 0.3})
  t = config.train
  t.batch_size, t.num_steps, t.learning_rate = 64, 800, 5e-3
  t.warmup_steps, t.decay_steps, t.ema_decay = 50, 800, 0.99
  t.log_every_steps, t.checkpoint_every_steps, t.sample_every_steps = (
      100, 800, 0)
  stage = teacher_stage.teacher_stage(config, workdir)
  stage = dataclasses.replace(
      stage, make_iterator=lambda start: _batches(_class_means(), 64, start))
  if not applies_dropout:
    step = stage.step
    loss_fn = functools.partial(step.single.keywords['loss_fn'],
                                label_dropout=0.)
    stage = dataclasses.replace(stage, step=trainer.make_step(
        loss_fn, step.optimizer, step.learning_rate_fn, ema_decay=t.ema_decay))
  return config, trainer.run_stage(stage).ema_params


def _null_class_distances(config, params):
  """Mean squared distance of the teacher's null-class x_hat to the exact
  unconditional denoiser, and to each class's, at LOGSNR."""
  means = _class_means()
  flat = jnp.asarray(means.reshape(NUM_CLASSES, -1))
  dim = flat.shape[1]
  exact = gaussian.exact_class_x_hat_fn(
      flat, jnp.broadcast_to(STD**2 * jnp.eye(dim), (NUM_CLASSES, dim, dim)),
      jnp.full((NUM_CLASSES,), 1. / NUM_CLASSES))
  rs = np.random.default_rng(123)
  n = 300
  labels = rs.integers(0, NUM_CLASSES, n)
  x = means[labels] + STD * rs.standard_normal((n,) + means.shape[1:])
  logsnr = jnp.full((n,), LOGSNR)
  alpha, sigma = (np.sqrt(jax.nn.sigmoid(s * LOGSNR)) for s in (1., -1.))
  z = jnp.asarray(alpha * x + sigma * rs.standard_normal(x.shape),
                  jnp.float32)
  null = jnp.full((n,), dataset_info.null_label(config))
  out = inference.make_model_fn(models.create_model(config))(
      params, z, logsnr, null, False, None)
  x_hat = diffusion.predict(out, z, logsnr, config.model.mean_type).x_hat
  x_hat = x_hat.reshape(n, -1)
  distance = lambda label: float(jnp.mean(jnp.square(
      x_hat - exact(z.reshape(n, -1), logsnr, jnp.full((n,), label)))))
  return distance(NUM_CLASSES), [distance(c) for c in range(NUM_CLASSES)]


@pytest.mark.slow
@pytest.mark.parametrize('applies_dropout', [True, False])
def test_null_class_learns_the_unconditional_denoiser(digits_dir, tmp_path,
                                                      applies_dropout):
  config, params = _train_teacher(digits_dir, str(tmp_path), applies_dropout)
  unconditional, conditional = _null_class_distances(config, params)
  if applies_dropout:
    assert unconditional < 0.5 * min(conditional), (unconditional,
                                                    conditional)
  else:
    assert unconditional > min(conditional), (unconditional, conditional)
