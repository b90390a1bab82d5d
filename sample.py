"""Writes N images and their grid from the latest model of a workdir.

  python sample.py --workdir=/tmp/digits --num_samples=64
  python sample.py --workdir=/tmp/digits --num_steps=4 --method=stochastic
  python sample.py --workdir=DIR --labels=3,3,7 --num_samples=3 --output_dir=/tmp/out
  python sample.py --workdir=/tmp/digits_guided --guidance=0.5 --labels=3

The model is the final student if distillation ran, else the teacher, in
its own number of steps. --num_steps=N picks the student distilled for N
steps, else the (continuous-time) teacher, which samples in any number of
steps; a student is never run at another count than its own (error, exit 2).
Needs neither TensorFlow nor TFDS.
"""

import logging
import os
import sys

from absl import app
from absl import flags
import jax

from diffusion_distill import checkpoints
from diffusion_distill import cli
from diffusion_distill import images as images_lib
from diffusion_distill import samplers
from diffusion_distill import layout

FLAGS = flags.FLAGS
log = logging.getLogger('diffusion_distill.sample')
flags.DEFINE_string('workdir', None, 'A workdir written by main.py.')
flags.DEFINE_integer('num_samples', 64, 'How many images.')
flags.DEFINE_integer('num_steps', None, 'Sampling steps: the student distilled '
                     'for them, else the teacher (default: the latest '
                     'model, in its own steps).')
flags.DEFINE_list('labels', None, 'Class labels for a class-conditional '
                  'model: one per image, or one for all (default: uniform).')
flags.DEFINE_enum('method', 'ddim', list(samplers.SAMPLERS), 'Sampler.')
flags.DEFINE_float('noise_interp', 0.5, 'Ancestral variance interpolation.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_float('guidance', None, 'Classifier-free guidance strength w, for '
                   'a guided run\'s models (default: none).')
flags.DEFINE_string('output_dir', None,
                    'Where to write (default: WORKDIR/generated/METHOD_STEPS).')
flags.mark_flag_as_required('workdir')


def _check_flags():
  """The flags' values alone; returns the labels as ints (or None)."""
  if FLAGS.num_samples <= 0:
    cli.exit_with(f'--num_samples={FLAGS.num_samples} is invalid: must be '
                  'positive', 2)
  if FLAGS.num_steps is not None and FLAGS.num_steps <= 0:
    cli.exit_with(f'--num_steps={FLAGS.num_steps} is invalid: must be '
                  'positive, or left out for the model\'s own count', 2)
  if not 0. <= FLAGS.noise_interp <= 1.:
    cli.exit_with(f'--noise_interp={FLAGS.noise_interp} is invalid: use a '
                  'value in [0, 1]', 2)
  labels = FLAGS.labels
  if labels is None:
    return None
  if len(labels) == 1:
    labels = labels * FLAGS.num_samples
  if len(labels) != FLAGS.num_samples:
    cli.exit_with(f'--labels has {len(labels)} entries but '
                  f'--num_samples={FLAGS.num_samples}: give one per image, '
                  'or one for all', 2)
  try:
    return [int(x) for x in labels]
  except ValueError:
    cli.exit_with(f'--labels={",".join(labels)} is invalid: give integers', 2)


def _check_labels(labels, sampler, ckpt_dir):
  if labels is None:
    return
  if sampler.num_classes <= 1:
    cli.exit_with(f'--labels given but the model in {ckpt_dir} is '
                  'unconditional: leave --labels out', 2)
  bad = [y for y in labels if not 0 <= y < sampler.num_classes]
  if bad:
    cli.exit_with(f'--labels has {bad[0]}: the model has '
                  f'{sampler.num_classes} classes, use 0 to '
                  f'{sampler.num_classes - 1}', 2)


def _load(workdir, num_steps):
  """(sampler, checkpoint dir) of the model to sample; mistakes are one line."""
  try:
    ckpt_dir, note = layout.select_model_dir(workdir, num_steps)
    if ckpt_dir is None:
      raise checkpoints.CheckpointError(
          f'no model checkpoint under {workdir}: train one with main.py first')
    config, model, params, meta = layout.load_model(ckpt_dir)
  except layout.StepCountError as e:
    cli.fail(e, 2)
  except checkpoints.CheckpointError as e:
    cli.fail(e, 1)
  if note:
    log.info('%s: sampling the teacher in %s', note, ckpt_dir)
  return layout.make_sampler(
      config, model, params, num_steps=meta.get('num_sample_steps')), ckpt_dir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.configure_logging()
  labels = _check_flags()
  sampler, ckpt_dir = _load(FLAGS.workdir, FLAGS.num_steps)
  _check_labels(labels, sampler, ckpt_dir)
  num_steps = FLAGS.num_steps or sampler.num_steps or sampler.default_num_steps
  try:
    samples = sampler.sample(jax.random.PRNGKey(FLAGS.seed),
                             FLAGS.num_samples, num_steps=num_steps,
                             labels=labels, method=FLAGS.method,
                             noise_interp=FLAGS.noise_interp,
                             guidance=FLAGS.guidance)
  except ValueError as e:  # A guidance the model cannot take.
    cli.fail(f'--guidance={FLAGS.guidance}: {e} ({ckpt_dir})', 2)
  out = FLAGS.output_dir or layout.generated_dir(
      FLAGS.workdir, FLAGS.method, num_steps, FLAGS.guidance)
  for i, image in enumerate(samples):
    images_lib.save_png(os.path.join(out, f'{i:06d}.png'), image)
  images_lib.save_png(os.path.join(out, 'grid.png'),
                      images_lib.upscale(images_lib.image_grid(samples)))
  print(f'{len(samples)} images in {num_steps} {FLAGS.method} steps: {out}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
