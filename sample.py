"""Writes N images and their grid from the latest model of a workdir.

  python sample.py --workdir=/tmp/digits --num_samples=64
  python sample.py --workdir=/tmp/digits --num_steps=4 --method=stochastic
  python sample.py --workdir=DIR --labels=3,3,7 --output_dir=/tmp/out

The model is the final student if distillation ran, else the teacher, in
its own number of steps. --num_steps=N picks the student distilled for N
steps, else the (continuous-time) teacher, which samples in any number of
steps; a student is never run at another count than its own (error, exit 2).
"""

import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A workdir written by main.py.')
flags.DEFINE_integer('num_samples', 64, 'How many images.')
flags.DEFINE_integer('num_steps', None, 'Sampling steps: the student distilled '
                     'for them, else the teacher (default: the latest '
                     'model, in its own steps).')
flags.DEFINE_list('labels', None, 'Class labels, one per image, for a '
                  'class-conditional model (default: uniform).')
flags.DEFINE_enum('method', 'ddim', ['ddim', 'ancestral', 'stochastic'],
                  'Sampler.')
flags.DEFINE_float('noise_interp', 0.5, 'Ancestral variance interpolation.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_string('output_dir', None,
                    'Where to write (default: WORKDIR/generated/METHOD_STEPS).')
flags.mark_flag_as_required('workdir')


def _usage_error(message):
  """One line and exit code 2, as main.py does for config errors."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.num_samples <= 0:
    _usage_error(f'--num_samples={FLAGS.num_samples} is invalid: must be '
                 'positive')
  if FLAGS.num_steps is not None and FLAGS.num_steps <= 0:
    _usage_error(f'--num_steps={FLAGS.num_steps} is invalid: must be '
                 'positive, or left out for the model\'s own count')
  if not 0. <= FLAGS.noise_interp <= 1.:
    _usage_error(f'--noise_interp={FLAGS.noise_interp} is invalid: use a '
                 'value in [0, 1]')
  labels = FLAGS.labels
  if labels is not None:
    if len(labels) != FLAGS.num_samples:
      _usage_error(f'--labels has {len(labels)} entries but '
                   f'--num_samples={FLAGS.num_samples}: give one per image')
    try:
      labels = [int(x) for x in labels]
    except ValueError:
      _usage_error(f'--labels={",".join(labels)} is invalid: give integers')
  import jax  # pylint: disable=g-import-not-at-top
  from diffusion_distill import checkpoints, inference  # pylint: disable=g-import-not-at-top
  try:
    ckpt_dir, note = inference.select_model_dir(FLAGS.workdir,
                                                FLAGS.num_steps)
    if ckpt_dir is None:
      raise checkpoints.CheckpointError(
          f'no model checkpoint under {FLAGS.workdir}: train one with '
          'main.py first')
    config, model, params, meta = inference.load_model(ckpt_dir)
  except inference.StepCountError as e:
    _usage_error(e)
  except checkpoints.CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  sampler = inference.make_sampler(config, model, params,
                                   num_steps=meta.get('num_sample_steps'))
  if note:
    print(f'{note}: sampling the teacher in {ckpt_dir}', file=sys.stderr)
  if labels is not None:
    if sampler.num_classes <= 1:
      _usage_error(f'--labels given but the model in {ckpt_dir} is '
                   'unconditional: leave --labels out')
    bad = [y for y in labels if not 0 <= y < sampler.num_classes]
    if bad:
      _usage_error(f'--labels has {bad[0]}: the model has '
                   f'{sampler.num_classes} classes, use 0 to '
                   f'{sampler.num_classes - 1}')
  num_steps = FLAGS.num_steps or sampler.num_steps or sampler.default_num_steps
  images = sampler.sample(jax.random.PRNGKey(FLAGS.seed), FLAGS.num_samples,
                          num_steps=num_steps, labels=labels,
                          method=FLAGS.method, noise_interp=FLAGS.noise_interp)
  out = FLAGS.output_dir or os.path.join(
      FLAGS.workdir, 'generated', f'{FLAGS.method}_{num_steps}steps')
  for i, image in enumerate(images):
    inference.save_png(os.path.join(out, f'{i:06d}.png'), image)
  inference.save_png(os.path.join(out, 'grid.png'),
                     inference.image_grid(images))
  print(f'{len(images)} images in {num_steps} {FLAGS.method} steps: {out}')


if __name__ == '__main__':
  app.run(main)
