"""Writes N images and their grid from the latest model of a workdir.

  python sample.py --workdir=/tmp/digits --num_samples=64
  python sample.py --workdir=/tmp/digits --num_steps=4 --method=stochastic
  python sample.py --workdir=DIR --labels=3,3,7 --output_dir=/tmp/out

The model is the final student if distillation ran, else the teacher; it
samples in its own number of steps unless --num_steps says otherwise.
"""

import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A workdir written by main.py.')
flags.DEFINE_integer('num_samples', 64, 'How many images.')
flags.DEFINE_integer('num_steps', None, 'Sampling steps (default: the model\'s).')
flags.DEFINE_list('labels', None, 'Class labels, one per image, for a '
                  'class-conditional model (default: uniform).')
flags.DEFINE_enum('method', 'ddim', ['ddim', 'ancestral', 'stochastic'],
                  'Sampler.')
flags.DEFINE_float('noise_interp', 0.5, 'Ancestral variance interpolation.')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_string('output_dir', None,
                    'Where to write (default: WORKDIR/generated/METHOD_STEPS).')
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  import jax  # pylint: disable=g-import-not-at-top
  from diffusion_distill import checkpoints, inference  # pylint: disable=g-import-not-at-top
  try:
    sampler = inference.load_sampler(FLAGS.workdir)
  except checkpoints.CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  labels = FLAGS.labels
  if labels is not None:
    if len(labels) != FLAGS.num_samples:
      raise app.UsageError(f'--labels has {len(labels)} entries; give one per '
                           f'image (--num_samples={FLAGS.num_samples}).')
    labels = [int(x) for x in labels]
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
