"""Writes N images and their grid from the latest model of a workdir.

  python sample.py --workdir=/tmp/digits --num_samples=64
  python sample.py --workdir=/tmp/digits --num_steps=4 --method=stochastic
  python sample.py --workdir=DIR --labels=3,3,7 --num_samples=3 --output_dir=/tmp/out
  python sample.py --workdir=/tmp/digits_guided --guidance=0.5 --labels=3

The model is the final student if distillation ran, else the teacher, in
its own number of steps. --num_steps=N picks the student distilled for N
steps, else the (continuous-time) teacher, which samples in any number of
steps; a student is never run at another count than its own (error, exit 2).
Images are drawn --batch_size at a time and written as they come, so memory
does not grow with --num_samples; with more than one batch, batch b uses the
key fold_in(PRNGKey(seed), b), and the log shows the progress. grid.png
shows the first 256. Every flag is checked before anything is written: a
mistake is one `error:` line, exit 2. Needs neither TensorFlow nor TFDS.
"""

import logging
import math
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

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
flags.DEFINE_integer('batch_size', 256, 'Images drawn per call.')
flags.mark_flag_as_required('workdir')

INT32_MAX = 2**31 - 1  # Step counts and labels are int32 in the sampler.
GRID_MAX = 256  # Images in grid.png.


def _check_flags():
  """The flags' values alone; returns the labels as ints (or None)."""
  for name, low in (('num_samples', 1), ('batch_size', 1), ('num_steps', 1),
                    ('seed', 0)):
    value = FLAGS[name].value
    if value is not None and not low <= value <= INT32_MAX:
      cli.exit_with(f'--{name}={value} is invalid: use an integer from {low} '
                    f'to {INT32_MAX}' + (', or leave it out for the model\'s '
                                         'own count' if name == 'num_steps'
                                         else ''), 2)
  if not 0. <= FLAGS.noise_interp <= 1.:
    cli.exit_with(f'--noise_interp={FLAGS.noise_interp} is invalid: use a '
                  'value in [0, 1]', 2)
  w = FLAGS.guidance
  if w is not None and not (math.isfinite(w) and w >= 0):
    cli.exit_with(f'--guidance={w} is invalid: use a finite w >= 0 (0: no '
                  'guidance), or leave it out', 2)
  if FLAGS.output_dir is not None:
    if not FLAGS.output_dir:
      cli.exit_with('--output_dir is empty: give a directory, or leave it out '
                    'for WORKDIR/generated/...', 2)
    _check_writable(FLAGS.output_dir, '--output_dir')
  labels = FLAGS.labels
  if labels is None:
    return None
  if len(labels) not in (1, FLAGS.num_samples):
    cli.exit_with(f'--labels has {len(labels)} entries but '
                  f'--num_samples={FLAGS.num_samples}: give one per image, '
                  'or one for all', 2)
  try:
    labels = np.array([int(x) for x in labels], np.int64)
  except ValueError:
    cli.exit_with(f'--labels={",".join(labels)} is invalid: give integers', 2)
  return labels  # One label stands for all images.


def _check_writable(directory, flag):
  reason = checkpoints.unwritable(directory)
  if reason:
    cli.exit_with(f'{flag}={directory} cannot be used: {reason}; choose '
                  'another directory', 2)


def _check_labels(labels, sampler, ckpt_dir):
  if labels is None:
    return
  if sampler.num_classes <= 1:
    cli.exit_with(f'--labels given but the model in {ckpt_dir} is '
                  'unconditional: leave --labels out', 2)
  bad = [int(y) for y in labels if not 0 <= y < sampler.num_classes]
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


def _batches(sampler, labels, num_steps):
  """Yields (first index, uint8 images) batch by batch; the first batch's
  sampling checks the guidance (ValueError) before anything is written."""
  n, size = FLAGS.num_samples, FLAGS.batch_size
  rng = jax.random.PRNGKey(FLAGS.seed)
  for b, start in enumerate(range(0, n, size)):
    count = min(size, n - start)
    yield start, sampler.sample(
        rng if n <= size else jax.random.fold_in(rng, b), count,
        num_steps=num_steps,
        labels=None if labels is None else np.broadcast_to(
            labels, (n,))[start:start + count],
        method=FLAGS.method, noise_interp=FLAGS.noise_interp,
        guidance=FLAGS.guidance)


def _write(batches, out, ckpt_dir):
  """Writes every image and the grid; returns how many were written."""
  n, digits = FLAGS.num_samples, max(6, len(str(FLAGS.num_samples - 1)))
  grid, t0, done = [], time.time(), 0
  try:
    for start, images in batches:
      for i, image in enumerate(images):
        images_lib.save_png(os.path.join(out, f'{start + i:0{digits}d}.png'),
                            image)
      grid.extend(images[:GRID_MAX - len(grid)])
      done = start + len(images)
      if done < n:
        rate = done / max(time.time() - t0, 1e-9)
        log.info('%d/%d images (%.0f%%), %.1f images/s, ETA %.0f s', done, n,
                 100. * done / n, rate, (n - done) / rate)
  except ValueError as e:  # A guidance the model cannot take.
    cli.fail(f'--guidance={FLAGS.guidance}: {e} ({ckpt_dir})', 2)
  images_lib.save_png(os.path.join(out, 'grid.png'),
                      images_lib.upscale(images_lib.image_grid(np.stack(grid))))
  return done


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.configure_logging()
  labels = _check_flags()
  sampler, ckpt_dir = _load(FLAGS.workdir, FLAGS.num_steps)
  _check_labels(labels, sampler, ckpt_dir)
  num_steps = FLAGS.num_steps or sampler.num_steps or sampler.default_num_steps
  out = FLAGS.output_dir or layout.generated_dir(
      FLAGS.workdir, FLAGS.method, num_steps, FLAGS.guidance)
  _check_writable(out, '--output_dir')
  done = _write(_batches(sampler, labels, num_steps), out, ckpt_dir)
  print(f'{done} images in {num_steps} {FLAGS.method} steps: {out}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
