"""Config checks that run before any work: each error is one line with the fix."""

import os
import tempfile

import jax

from diffusion_distill import diffusion

KNOWN_STAGES = ('teacher', 'distill', 'eval')


class ConfigError(ValueError):
  """A config value is wrong; the message names the field, value and fix."""


def _require(cond, field, value, fix):
  if not cond:
    raise ConfigError(f'config.{field}={value!r} is invalid: {fix}')


def _is_power_of_two(n):
  return n >= 1 and (n & (n - 1)) == 0


def validate_config(config, num_devices=None):
  """Raises ConfigError for the first wrong field of `config`."""
  from diffusion_distill.input_pipeline import dataset_info  # pylint: disable=g-import-not-at-top
  num_devices = num_devices or jax.device_count()
  stages = tuple(config.stages)
  for s in stages:
    _require(s in KNOWN_STAGES, 'stages', stages,
             f'each stage must be one of {KNOWN_STAGES}')
  try:
    dataset_info(config.dataset.name)
  except ValueError as e:
    raise ConfigError(f'config.dataset.name={config.dataset.name!r} is '
                      f'invalid: {e}') from None
  m = config.model
  _require(m.mean_type in diffusion.MEAN_TYPES, 'model.mean_type', m.mean_type,
           f'use one of {diffusion.MEAN_TYPES}')
  _require(m.loss_weighting in diffusion.LOSS_WEIGHTINGS,
           'model.loss_weighting', m.loss_weighting,
           f'use one of {diffusion.LOSS_WEIGHTINGS}')
  _require(0. <= m.dropout < 1., 'model.dropout', m.dropout,
           'use a value in [0, 1)')
  if 'teacher' in stages:
    t = config.train
    for field in ('batch_size', 'num_steps'):
      _require(t[field] > 0, f'train.{field}', t[field], 'must be positive')
    _require(t.learning_rate > 0, 'train.learning_rate', t.learning_rate,
             'must be positive')
    _require(0. <= t.ema_decay < 1., 'train.ema_decay', t.ema_decay,
             'use a value in [0, 1)')
    _require(t.batch_size % num_devices == 0, 'train.batch_size',
             t.batch_size,
             f'must divide over the {num_devices} devices: use a multiple '
             f'of {num_devices}')
  if 'eval' in stages:
    _validate_eval(config, num_devices // jax.process_count())
  if 'distill' in stages:
    d = config.distill
    _require(m.mean_type != 'eps', 'model.mean_type', m.mean_type,
             "eps is unstable for distillation (x_hat = (z - sigma eps)/alpha "
             "as alpha -> 0); use 'x', 'v' or 'both'")
    for field in ('batch_size', 'steps_per_round', 'start_num_steps',
                  'end_num_steps', 'last_rounds_multiplier',
                  'long_rounds_max_steps'):
      _require(d[field] > 0, f'distill.{field}', d[field], 'must be positive')
    _require(d.learning_rate > 0, 'distill.learning_rate', d.learning_rate,
             'must be positive')
    ratio = d.start_num_steps // d.end_num_steps
    _require(
        d.start_num_steps % d.end_num_steps == 0 and _is_power_of_two(ratio),
        'distill.start_num_steps', d.start_num_steps,
        f'must be distill.end_num_steps={d.end_num_steps} times a power of '
        'two (each round halves the steps)')
    _require(d.batch_size % num_devices == 0, 'distill.batch_size',
             d.batch_size,
             f'must divide over the {num_devices} devices: use a multiple '
             f'of {num_devices}')


def validate_workdir(workdir):
  """Raises ConfigError unless `workdir` is or can become a writable dir.

  Creates nothing that stays: the workdir itself is made later, once every
  other check has passed. Remote paths (gs://...) are left to the first write.
  """
  if '://' in workdir:
    return
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'--workdir={workdir} cannot be used: {existing} is not '
                      'a directory; choose another --workdir')
  try:
    # What os.access cannot tell: read-only mounts, ACLs, root squash.
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} cannot be used: {existing} is not '
                      f'writable ({e.strerror or e}); choose another '
                      '--workdir') from None


def _validate_eval(config, local_devices):
  from diffusion_distill import inference  # pylint: disable=g-import-not-at-top
  e = config.eval
  for field in ('num_samples', 'batch_size', 'num_seeds'):
    _require(e[field] > 0, f'eval.{field}', e[field], 'must be positive')
  _require(e.num_samples >= 2, 'eval.num_samples', e.num_samples,
           'a Frechet distance needs at least 2 samples')
  _require(e.batch_size % local_devices == 0, 'eval.batch_size', e.batch_size,
           f'must divide over the {local_devices} local devices')
  for field in ('teacher_samplers', 'student_samplers'):
    for s in e[field]:
      _require(s in inference.SAMPLERS, f'eval.{field}', tuple(e[field]),
               f'each sampler must be one of {inference.SAMPLERS}')
  for n in e.sample_steps:
    _require(int(n) > 0, 'eval.sample_steps', tuple(e.sample_steps),
             'step counts must be positive')
  _require(0. <= e.ancestral_noise_interp <= 1., 'eval.ancestral_noise_interp',
           e.ancestral_noise_interp, 'use a value in [0, 1]')
