r"""Fréchet distance in raw pixel space, for comparison with the issue's prototype.

  python -m benchmarks.pixel_fd --workdir=/tmp/quality2

The prototype that set the quality benchmark's targets measured a Fréchet
distance on the 64 raw pixels, with images in [-1, 1]: 2,000 samples
against the 1,797 digits. This script measures the same distance for
the teacher at 128, 4 and 1 DDIM steps and for the 4- and 1-step students of
a configs/digits_quality.py workdir. It uses one sampling seed, the
evaluation's first, and writes benchmarks/results/pixel_fd_digits.json
(--out).
"""

import json
import os

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import provenance
from configs import digits_quality
from diffusion_distill import input_pipeline
from diffusion_distill import layout
from diffusion_distill.stages import distill
from diffusion_distill.evaluation import frechet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES = 2000


def _stats(images_uint8):
  x = images_uint8.reshape(len(images_uint8), -1).astype(np.float64)
  x = x / 127.5 - 1.
  return x.mean(0), np.cov(x, rowvar=False)


def measure(workdir):
  config = digits_quality.get_config()
  real = _stats(input_pipeline.load_all_images(config))
  rows = [('teacher', layout.checkpoint_dir(layout.teacher_dir(workdir)), n)
          for n in (128, 4, 1)]
  rows += [('student', layout.checkpoint_dir(distill.student_dir(workdir, n)), n)
           for n in (4, 1)]
  out = []
  for model, source, n in rows:
    m_config, m, params, meta = layout.load_model(source)
    sampler = layout.make_sampler(m_config, m, params,
                                  num_steps=meta.get('num_sample_steps'))
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    images = np.concatenate(list(sampler.sample_batches(
        rng, NUM_SAMPLES, config.eval.batch_size, num_steps=n,
        method='ddim')))
    fd = frechet.frechet_distance(*_stats(images), *real)
    out.append({'model': model, 'sampler': 'ddim', 'num_steps': n,
                'seed': config.seed, 'num_samples': NUM_SAMPLES,
                'pixel_fd': float(fd)})
    print(f'{model} ddim {n:3d} steps: pixel FD {fd:.4f}', flush=True)
  return out


def main(argv):
  del argv
  rows = measure(FLAGS.workdir)
  record = provenance.record(f'the checkpoints and data of {FLAGS.workdir}, '
                             'a run of configs/digits_quality.py')
  with open(FLAGS.out, 'w') as f:
    json.dump({'provenance': record, 'rows': rows}, f, indent=1)
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  FLAGS = flags.FLAGS
  flags.DEFINE_string('workdir', None, 'Workdir of configs/digits_quality.py.')
  flags.DEFINE_string('out', os.path.join(REPO, 'benchmarks', 'results',
                                          'pixel_fd_digits.json'),
                      'Output JSON.')
  flags.mark_flag_as_required('workdir')
  app.run(main)
