"""Drawing images from a trained model: the `Sampler` object users hold."""

import copy
import functools
import os
from typing import Any, Optional

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distill import samplers, schedules


def make_model_fn(model):
  """Adapts a U-Net module to `model_fn(params, z, logsnr, y, train, rng)`."""

  def model_fn(params, z, logsnr, y, train, rng):
    rngs = {'dropout': rng} if (train and rng is not None) else None
    return model.apply({'params': params}, z, logsnr, y, train=train,
                       rngs=rngs)

  return model_fn


SAMPLERS = ('ddim', 'ancestral', 'stochastic')


@functools.lru_cache(maxsize=None)
def _compiled_sampler(model, mean_type, logsnr_min, logsnr_max, clip_x, method,
                      parallel):
  """One compiled sampler per (model, parameterization, schedule, method).

  Parameters, step count, labels and the ancestral coefficient are
  arguments, so sampling a new round's student or at another step count
  does not recompile. With `parallel`, it is pmapped over the local devices.
  """
  if method not in SAMPLERS:
    raise ValueError(f'sampler {method!r} is not known; use one of {SAMPLERS}.')
  model_fn = make_model_fn(model)
  logsnr_fn = lambda t: schedules.cosine_logsnr(t, logsnr_min, logsnr_max)

  def run(params, z, labels, num_steps, rng, noise_interp):
    x_hat_fn = samplers.model_x_hat_fn(model_fn, params, mean_type, labels,
                                       clip_x)
    if method == 'ddim':
      x = samplers.ddim_sample(x_hat_fn, z, num_steps, logsnr_fn)
    elif method == 'ancestral':
      x = samplers.ancestral_sample(x_hat_fn, z, num_steps, logsnr_fn, rng,
                                    noise_interp)
    else:
      x = samplers.stochastic_sample(x_hat_fn, z, num_steps, logsnr_fn, rng)
    return samplers.to_uint8(x)

  if parallel:
    return jax.pmap(run, in_axes=(0, 0, 0, None, 0, None))
  return jax.jit(run)


@functools.lru_cache(maxsize=None)
def _compiled_sampler_from_key(model, mean_type, logsnr_min, logsnr_max,
                               clip_x, method, image_shape, num_classes):
  """`_compiled_sampler` on one device, drawing its noise and labels inside.

  One dispatch per `Sampler.sample` call: with few steps, drawing the noise
  with separate eager ops costs a noticeable part of a network evaluation.
  """
  run = _compiled_sampler(model, mean_type, logsnr_min, logsnr_max, clip_x,
                          method, False)

  def run_from_key(params, rng, labels, num_steps, noise_interp, num_samples):
    rng_noise, rng_sampler = jax.random.split(rng)
    z, labels = _noise_and_labels(rng_noise, num_samples, image_shape,
                                  num_classes, labels)
    return run(params, z, labels, num_steps, rng_sampler, noise_interp)

  return jax.jit(run_from_key, static_argnames='num_samples')


def _noise_and_labels(rng, num_samples, image_shape, num_classes, labels):
  """The starting noise z_1 and, for a class-conditional model, the labels.

  Without `labels`, a class-conditional model's labels are drawn uniformly.
  """
  rng_z, rng_y = jax.random.split(rng)
  z = jax.random.normal(rng_z, (num_samples,) + tuple(image_shape))
  if num_classes <= 1:
    return z, None
  if labels is None:
    labels = jax.random.randint(rng_y, (num_samples,), 0, num_classes)
  return z, jnp.asarray(labels, jnp.int32)


class Sampler:
  """A model with its parameters, ready to sample.

  `num_steps` is the number of sampling steps the model was trained for
  (None for a continuous-time teacher, which then samples with
  `default_num_steps`).
  """

  def __init__(self, model, params, *, mean_type: str, image_shape,
               num_classes: int, logsnr_min=-20., logsnr_max=20.,
               num_steps: Optional[int] = None, default_num_steps=256,
               clip_x=True, config: Any = None):
    self.model = model
    self.params = params
    self.mean_type = mean_type
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    self.logsnr_min = float(logsnr_min)
    self.logsnr_max = float(logsnr_max)
    self.num_steps = num_steps
    self.default_num_steps = default_num_steps
    self.clip_x = clip_x
    self.config = config
    self._device_params = None

  def with_params(self, params):
    """The same sampler for other parameters of the same model."""
    new = copy.copy(self)
    new.params = params
    new._device_params = None  # pylint: disable=protected-access
    return new

  def _params_on_device(self):
    """The parameters on the default device, copied there once (not per call)."""
    if self._device_params is None:
      self._device_params = jax.device_put(self.params)
    return self._device_params

  def _fn(self, method, parallel):
    return _compiled_sampler(self.model, self.mean_type, self.logsnr_min,
                             self.logsnr_max, self.clip_x, method, parallel)

  def sample(self, rng, num_samples, num_steps=None, labels=None,
             method='ddim', noise_interp=0.):
    """Samples as uint8 [num_samples, H, W, C], on one device.

    `method` is 'ddim' (default), 'ancestral' (with `noise_interp` in [0, 1])
    or 'stochastic' (for distilled models). Without `labels`, a
    class-conditional model draws labels uniformly.
    """
    num_steps = num_steps or self.num_steps or self.default_num_steps
    if self.num_classes <= 1:
      labels = None
    elif labels is not None:
      labels = np.asarray(labels, np.int32)
      if labels.shape != (num_samples,):
        raise ValueError(f'labels must have shape ({num_samples},), got '
                         f'{labels.shape}')
    fn = _compiled_sampler_from_key(
        self.model, self.mean_type, self.logsnr_min, self.logsnr_max,
        self.clip_x, method, self.image_shape, self.num_classes)
    return np.asarray(fn(self._params_on_device(), rng, labels,
                         np.int32(num_steps), np.float32(noise_interp),
                         num_samples=int(num_samples)))

  def sample_batches(self, rng, num_samples, batch_size, num_steps=None,
                     method='ddim', noise_interp=0.):
    """Yields uint8 batches totalling `num_samples`, pmapped over local devices.

    `batch_size` must divide over the local devices; the last batch may be
    smaller (it is cut from a full one, so nothing recompiles).
    """
    devices = jax.local_devices()
    if batch_size % len(devices):
      raise ValueError(f'eval batch size {batch_size} must divide over the '
                       f'{len(devices)} local devices')
    num_steps = num_steps or self.num_steps or self.default_num_steps
    fn = self._fn(method, parallel=True)
    params = flax.jax_utils.replicate(self.params, devices)
    done, index = 0, 0
    while done < num_samples:
      key = jax.random.fold_in(rng, index)
      rng_noise, rng_sampler = jax.random.split(key)
      z, labels = _noise_and_labels(rng_noise, batch_size, self.image_shape,
                                    self.num_classes, None)
      shard = lambda a: None if a is None else a.reshape(
          (len(devices), -1) + a.shape[1:])
      out = fn(params, shard(z), shard(labels), jnp.int32(num_steps),
               jax.random.split(rng_sampler, len(devices)),
               jnp.float32(noise_interp))
      out = np.asarray(out).reshape((batch_size,) + self.image_shape)
      take = min(batch_size, num_samples - done)
      yield out[:take]
      done += take
      index += 1


def image_grid(images, ncols=None, pad=1):
  """Tiles uint8 [N, H, W, C] images into one image, with grey lines between."""
  n = images.shape[0]
  ncols = ncols or int(np.ceil(np.sqrt(n)))
  nrows = int(np.ceil(n / ncols))
  images = np.pad(images, ((0, nrows * ncols - n), (pad, pad), (pad, pad),
                           (0, 0)), constant_values=128)
  _, h, w, c = images.shape
  return images.reshape(nrows, ncols, h, w, c).swapaxes(1, 2).reshape(
      nrows * h, ncols * w, c)


def save_png(path, image):
  """Writes a uint8 [H, W, C] image as PNG (via tf.io, so gs:// works)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if os.path.dirname(path):
    tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(tf.io.encode_png(image).numpy())



def init_params(model, config, rng):
  """Freshly initialized U-Net parameters for `config` (host NumPy arrays)."""
  x, logsnr, y = _dummy_inputs(config)
  params = jax.jit(lambda r: model.init({'params': r}, x, logsnr, y,
                                        train=False)['params'])(rng)
  return jax.device_get(params)


def abstract_params(model, config):
  """Shapes and dtypes of the parameters, without allocating them."""
  x, logsnr, y = _dummy_inputs(config)
  return jax.eval_shape(
      lambda: model.init({'params': jax.random.PRNGKey(0)}, x, logsnr, y,
                         train=False)['params'])


def _dummy_inputs(config):
  from diffusion_distill.input_pipeline import dataset_info  # pylint: disable=g-import-not-at-top
  info = dataset_info(config.dataset.name)
  shape = (1, info.image_size, info.image_size, info.channels)
  return jnp.zeros(shape), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)


def model_meta(config, *, stage, num_sample_steps, stage_num_steps):
  """What a checkpoint records so that it can be loaded on its own."""
  return {
      'stage': stage,
      'num_sample_steps': num_sample_steps,
      'stage_num_steps': int(stage_num_steps),
      'model': config.model.to_dict(),
      'dataset': {'name': config.dataset.name,
                  'class_conditional': bool(config.dataset.class_conditional)},
      'schedule': config.schedule.to_dict(),
  }


def config_from_meta(meta):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({k: meta[k] for k in
                                    ('model', 'dataset', 'schedule')})


def load_model(checkpoint_dir, step=None):
  """(config, model, ema_params, meta) of a stage's checkpoint directory."""
  from diffusion_distill import checkpoints, models  # pylint: disable=g-import-not-at-top
  ckpt = checkpoints.Checkpointer(checkpoint_dir, read_only=True)
  meta = ckpt.restore_meta(step)
  config = config_from_meta(meta)
  model = models.create_model(config)
  # Its meta, not restore_meta's: this restore may have skipped an unusable
  # latest checkpoint.
  params, meta = ckpt.restore_params(abstract_params(model, config),
                                     'ema_params', step)
  ckpt.close()
  return config, model, params, meta


def _latest_model_dir(workdir):
  """The final student's checkpoints if any round finished, else the teacher's."""
  from diffusion_distill import checkpoints, distill  # pylint: disable=g-import-not-at-top
  students = distill.finished_students(workdir)
  if students:
    return students[-1][1]
  return checkpoints.stage_checkpoint_dir(workdir)


class StepCountError(ValueError):
  """No model of a workdir samples in the number of steps asked for."""


def select_model_dir(workdir, num_steps=None):
  """(checkpoint_dir, note) of the model of `workdir` to sample in `num_steps`.

  Without `num_steps`: the latest model (load_sampler's). With it: the
  student distilled for exactly `num_steps` steps, else the continuous-time
  teacher, which samples in any number of steps (`note` then says why it was
  chosen). A student is never run at another step count than its own: that
  raises StepCountError, one line listing the counts there are.
  Reads checkpoint metadata only.
  """
  from diffusion_distill import checkpoints, distill  # pylint: disable=g-import-not-at-top
  if num_steps is None:
    return _latest_model_dir(workdir), None
  students = distill.finished_students(workdir)
  for n, d in students:
    if n == num_steps:
      return d, None
  counts = ', '.join(str(n) for n, _ in students)
  teacher = checkpoints.stage_checkpoint_dir(workdir)
  teacher = teacher and os.fspath(teacher)
  own = None
  if teacher is not None:
    own = checkpoints.Checkpointer(teacher, read_only=True).restore_meta().get(
        'num_sample_steps')
    if own is None:
      return teacher, (
          f'no student in {workdir} was distilled for {num_steps} steps '
          f'(students: {counts})' if students else None)
    if own == num_steps:
      return teacher, None
    counts = counts or str(own)
  if not counts:
    return None, None  # No model at all: load_sampler's error.
  raise StepCountError(
      f'--num_steps={num_steps} does not fit {workdir}: its models were '
      f'distilled for {counts} sampling steps and a distilled model samples '
      'only in its own count; use one of those, or leave --num_steps out')


def load_sampler(workdir, clip_x=True):
  """A Sampler for the latest model of a workdir (the final student if any)."""
  from diffusion_distill import checkpoints  # pylint: disable=g-import-not-at-top
  ckpt_dir = _latest_model_dir(workdir)
  if ckpt_dir is None:
    raise checkpoints.CheckpointError(
        f'no model checkpoint under {workdir}: train one with main.py first')
  config, model, params, meta = load_model(ckpt_dir)
  return make_sampler(config, model, params,
                      num_steps=meta.get('num_sample_steps'), clip_x=clip_x)


def make_sampler(config, model, params, num_steps=None, clip_x=True):
  """A Sampler for `model` with `params`, shaped by `config`'s data set."""
  from diffusion_distill.input_pipeline import dataset_info  # pylint: disable=g-import-not-at-top
  info = dataset_info(config.dataset.name)
  return Sampler(
      model, params, mean_type=config.model.mean_type,
      image_shape=(info.image_size, info.image_size, info.channels),
      num_classes=info.num_classes if config.dataset.class_conditional else 1,
      logsnr_min=config.schedule.logsnr_min,
      logsnr_max=config.schedule.logsnr_max,
      num_steps=num_steps, clip_x=clip_x, config=config)
