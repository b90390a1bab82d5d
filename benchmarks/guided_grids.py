r"""Sample grids of a guided digits run at each w: the teacher and a student.

  python -m benchmarks.guided_grids --workdir=/tmp/digits_guided \
      --teacher_steps=64 --student_steps=1

One row per model (the teacher with DDIM at --teacher_steps, the student
distilled for --student_steps), one column per w of --guidance: 100 samples
each, column k of every grid asked for digit k, seed --seed. Writes
benchmarks/results/guided_digits_grids.png (--out) and beside it a JSON
record of what made it (benchmarks/provenance.py).
"""

import io
import json
import os

from absl import app
from absl import flags
import jax
import matplotlib
import numpy as np

from benchmarks import provenance
from benchmarks import quality
from diffusion_distill import images
from diffusion_distill import layout

NUM_SAMPLES = 100


def grids(workdir, teacher_steps, student_steps, ws, seed):
  """{(label, w): uint8 grid image}: each model's 100 samples at each w."""
  labels = np.arange(NUM_SAMPLES) % 10
  out = {}
  for label, n in ((f'teacher, DDIM {teacher_steps} steps', teacher_steps),
                   (f'student, {n_steps(student_steps)}', student_steps)):
    sampler = layout.load_sampler(workdir, num_steps=n)
    for w in ws:
      samples = sampler.sample(jax.random.PRNGKey(seed), NUM_SAMPLES,
                               num_steps=n, labels=labels, guidance=w)
      out[(label, w)] = images.image_grid(samples, ncols=10)
  return out


def n_steps(n):
  return f'{n} step' + ('' if n == 1 else 's')


def figure(cells, ws):
  """PNG bytes: the grids, a row per model and a column per w."""
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  models = list(dict.fromkeys(label for label, _ in cells))
  fig, axes = plt.subplots(len(models), len(ws), dpi=120, squeeze=False,
                           figsize=(2.4 * len(ws), 2.6 * len(models)))
  for i, label in enumerate(models):
    for j, w in enumerate(ws):
      ax = axes[i][j]
      ax.imshow(cells[(label, w)][..., 0], cmap='gray', vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(f'w = {w:g}', fontsize=10)
      if j == 0:
        ax.set_ylabel(label, fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png')
  plt.close(fig)
  return buf.getvalue()


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  ws = [float(w) for w in FLAGS.guidance]
  cells = grids(FLAGS.workdir, FLAGS.teacher_steps, FLAGS.student_steps, ws,
                FLAGS.seed)
  png = figure(cells, ws)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'wb') as f:
    f.write(png)
  record = provenance.record(
      f'the runs of benchmarks/guided.py, --workdir={FLAGS.workdir}')
  quality.write_text(os.path.splitext(FLAGS.out)[0] + '.json',
                     json.dumps({'provenance': record}, indent=1) + '\n')
  print(FLAGS.out)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Workdir of a configs/digits_guided.py '
                      'run.', required=True)
  flags.DEFINE_integer('teacher_steps', 64, "The teacher's DDIM steps.")
  flags.DEFINE_integer('student_steps', 1, 'The student to show.')
  flags.DEFINE_list('guidance', ['0', '0.25', '0.5', '1'], 'The w, one a column.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_string('out', os.path.join(quality.RESULTS_DIR,
                                          'guided_digits_grids.png'), 'PNG.')
  app.run(main)
