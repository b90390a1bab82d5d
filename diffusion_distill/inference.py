"""Drawing images from a trained model: the `Sampler` object users hold.

`layout.load_sampler(workdir)` (also `diffusion_distill.load_sampler`)
builds one from a workdir; `layout.make_sampler` from a config and
parameters.
"""

import copy
import dataclasses
from typing import Any, Optional

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distill import dataset_info
from diffusion_distill import samplers
from diffusion_distill import schedules


def make_model_fn(model):
  """Adapts a U-Net module to `model_fn(params, z, logsnr, y, train, rng)`.

  For a net that takes the guidance strength, y is (labels, w), or in
  training (labels, w, scale of the w-embedding) (UNet's guidance_scale).
  """

  def model_fn(params, z, logsnr, y, train, rng):
    rngs = {'dropout': rng} if (train and rng is not None) else None
    guidance = scale = None
    if model.guidance_embedding:
      y, guidance, *rest = y
      scale = rest[0] if rest else None
    return model.apply({'params': params}, z, logsnr, y, train=train,
                       rngs=rngs, guidance=guidance, guidance_scale=scale)

  return model_fn


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


@dataclasses.dataclass(frozen=True)
class _Program:
  """What a compiled sampler depends on, besides its arguments."""
  model: Any
  mean_type: str
  schedule: tuple  # (name, logsnr_min, logsnr_max)
  clip_x: bool
  image_shape: tuple
  num_classes: int
  # How w acts: None (unguided), 'input' (a net that takes w) or the null
  # label of a net trained with label dropout (two evaluations per step).
  guided: Any = None

  def _x_hat_fn(self, params, labels, w):
    model_fn = make_model_fn(self.model)
    if self.guided is None:
      return samplers.model_x_hat_fn(model_fn, params, self.mean_type, labels,
                                     self.clip_x)
    if self.guided == 'input':
      w = jnp.broadcast_to(w, labels.shape)
      return samplers.model_x_hat_fn(model_fn, params, self.mean_type,
                                     (labels, w), self.clip_x)
    return samplers.guided_x_hat_fn(model_fn, params, self.mean_type, labels,
                                    jnp.full_like(labels, self.guided), w,
                                    self.clip_x)

  def run_fn(self, method):
    """(params, z, labels, num_steps, rng, noise_interp, w) -> uint8 images.

    Parameters, step count, labels, the ancestral coefficient and the
    guidance strength are arguments, so another model of the same
    architecture, or another step count or w, does not recompile.
    """
    logsnr_fn = schedules.logsnr_schedule(*self.schedule)

    def run(params, z, labels, num_steps, rng, noise_interp, w=None):
      x_hat_fn = self._x_hat_fn(params, labels, w)
      if method == 'ddim':
        x = samplers.ddim_sample(x_hat_fn, z, num_steps, logsnr_fn)
      elif method == 'ancestral':
        x = samplers.ancestral_sample(x_hat_fn, z, num_steps, logsnr_fn, rng,
                                      noise_interp)
      else:
        x = samplers.stochastic_sample(x_hat_fn, z, num_steps, logsnr_fn, rng)
      return samplers.to_uint8(x)

    return run

  def from_key(self, method):
    """`run_fn` on one device, drawing its noise and labels inside.

    One dispatch per `Sampler.sample` call: with few steps, drawing the
    noise with separate eager ops costs a noticeable part of a network
    evaluation.
    """
    run = self.run_fn(method)

    def run_from_key(params, rng, labels, num_steps, noise_interp, w,
                     num_samples):
      rng_noise, rng_sampler = jax.random.split(rng)
      z, labels = _noise_and_labels(rng_noise, num_samples, self.image_shape,
                                    self.num_classes, labels)
      return run(params, z, labels, num_steps, rng_sampler, noise_interp, w)

    return jax.jit(run_from_key, static_argnames='num_samples')

  def parallel(self, method):
    """`run_fn` pmapped over the local devices."""
    return jax.pmap(self.run_fn(method),
                    in_axes=(0, 0, 0, None, 0, None, None))


class Sampler:
  """A model with its parameters, ready to sample.

  `num_steps` is the number of sampling steps the model was trained for
  (None for a continuous-time teacher, which then samples with
  `default_num_steps`). `schedule` is the config.schedule section the model
  was trained with. `num_classes` counts the data set's classes; a model
  trained with label dropout also has the class `null_label`, and is guided
  with two evaluations per step; a model that takes w (`guidance_range`,
  the [w_min, w_max] it learned) with one. `null_class_untrained`: a guided
  run's model whose teacher never trained its null class
  (dataset_info.UNTRAINED_NULL_CLASS), sampled unguided only. Compiled programs are kept by the
  sampler and shared with the samplers `with_params` makes.
  """

  def __init__(self, model, params, *, mean_type: str, image_shape,
               num_classes: int, schedule=None,
               num_steps: Optional[int] = None, default_num_steps=256,
               clip_x=True, config: Any = None, null_label=None,
               guidance_range=None, null_class_untrained=False):
    self.model = model
    self.params = params
    self.mean_type = mean_type
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    s = schedule or {'name': 'cosine', 'logsnr_min': -20.,
                     'logsnr_max': 20.}
    self.schedule = (s.get('name', 'cosine'), float(s['logsnr_min']),
                     float(s['logsnr_max']))
    self.num_steps = num_steps
    self.default_num_steps = default_num_steps
    self.clip_x = clip_x
    self.config = config
    self.null_label = null_label
    self.null_class_untrained = null_class_untrained
    self.guidance_range = (None if guidance_range is None else
                           tuple(float(w) for w in guidance_range))
    self._device_params = None
    self._compiled = {}

  def _program(self, guided=None):
    return _Program(self.model, self.mean_type, self.schedule, self.clip_x,
                    self.image_shape, self.num_classes, guided)

  def _guided(self, guidance):
    """How to apply `guidance` (see _Program.guided); one-line errors."""
    if guidance and self.null_class_untrained:
      raise ValueError(f'guidance={guidance} cannot be used with this model: '
                       + dataset_info.UNTRAINED_NULL_CLASS)
    if self.guidance_range is not None:
      w_min, w_max = self.guidance_range
      if guidance is not None and not w_min <= guidance <= w_max:
        raise ValueError(
            f'guidance={guidance} is outside [{w_min}, {w_max}], the range '
            'this model was trained on: use a w in it')
      return 'input'
    if guidance is None or guidance == 0:
      return None  # The conditional model itself: one evaluation per step.
    if self.null_label is None:
      raise ValueError(
          f'guidance={guidance} needs a class-conditional model trained with '
          'label dropout (config.guidance.label_dropout > 0); this one is '
          + ('unconditional' if self.num_classes <= 1 else
             'trained without it') + ': leave guidance out')
    return self.null_label

  def _fn(self, kind, method, guided=None):
    key = (self._program(guided), kind, method)
    if key not in self._compiled:
      if method not in samplers.SAMPLERS:
        raise ValueError(f'sampler {method!r} is not known; use one of '
                         f'{samplers.SAMPLERS}.')
      self._compiled[key] = getattr(key[0], kind)(method)
    return self._compiled[key]

  def with_params(self, params, num_steps=None):
    """The same sampler (and compiled programs) for other parameters of the
    same model, trained for `num_steps` sampling steps if given."""
    new = copy.copy(self)
    new.params = params
    new._device_params = None  # pylint: disable=protected-access
    if num_steps is not None:
      new.num_steps = num_steps
    return new

  def _params_on_device(self):
    """The parameters on the default device, copied there once (not per call)."""
    if self._device_params is None:
      self._device_params = jax.device_put(self.params)
    return self._device_params

  def sample(self, rng, num_samples, num_steps=None, labels=None,
             method='ddim', noise_interp=0., guidance=None):
    """Samples as uint8 [num_samples, H, W, C], on one device.

    `method` is 'ddim' (default), 'ancestral' (with `noise_interp` in [0, 1])
    or 'stochastic' (for distilled models). Without `labels`, a
    class-conditional model draws labels uniformly. `guidance` is the
    classifier-free guidance strength w (None or 0: none).
    """
    guided = self._guided(guidance)
    num_steps = num_steps or self.num_steps or self.default_num_steps
    if self.num_classes <= 1:
      labels = None
    elif labels is not None:
      labels = np.asarray(labels, np.int32)
      if labels.shape != (num_samples,):
        raise ValueError(f'labels must have shape ({num_samples},), got '
                         f'{labels.shape}')
    fn = self._fn('from_key', method, guided)
    w = None if guided is None else np.float32(guidance or 0.)
    return np.asarray(fn(self._params_on_device(), rng, labels,
                         np.int32(num_steps), np.float32(noise_interp), w,
                         num_samples=int(num_samples)))

  def sample_batches(self, rng, num_samples, batch_size, num_steps=None,
                     method='ddim', noise_interp=0., guidance=None):
    """Yields (uint8 images, labels or None) batches totalling `num_samples`,
    pmapped over local devices; labels are those drawn for a
    class-conditional model.

    `batch_size` must divide over the local devices; the last batch may be
    smaller (it is cut from a full one, so nothing recompiles).
    """
    devices = jax.local_devices()
    if batch_size % len(devices):
      raise ValueError(f'eval batch size {batch_size} must divide over the '
                       f'{len(devices)} local devices')
    guided = self._guided(guidance)
    w = None if guided is None else np.float32(guidance or 0.)
    num_steps = num_steps or self.num_steps or self.default_num_steps
    fn = self._fn('parallel', method, guided)
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
               jnp.float32(noise_interp), w)
      out = np.asarray(out).reshape((batch_size,) + self.image_shape)
      take = min(batch_size, num_samples - done)
      yield out[:take], None if labels is None else np.asarray(labels)[:take]
      done += take
      index += 1
