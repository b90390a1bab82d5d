r"""Candidate teachers for the quickstart, side by side, with provenance.

  python main.py --config=configs/digits_teacher.py --workdir=DIR \
      "--config.stages=('teacher','eval')" "--config.eval.sample_steps=(32,)" \
      --config.train.sample_every_steps=100000 [--config.FIELD=VALUE ...]
  python -m benchmarks.quickstart_teachers --workdirs=DIR,DIR,... \
      [--note='how the runs shared the machine']

Reads each workdir's config.json, eval/results.json and timing.json and
writes benchmarks/results/quickstart_teachers_digits.json (--out): the
provenance, and per run the teacher's settings that the candidates vary,
its FD-digits rows and each stage's seconds.
"""

import json

from absl import app
from absl import flags

from benchmarks import provenance
from benchmarks import quickstart
from diffusion_distill import config_checks

# The teacher's settings the candidates vary.
FIELDS = ('model.mean_type', 'model.num_res_blocks', 'train.num_steps',
          'train.decay_steps', 'train.learning_rate', 'train.ema_decay',
          'train.batch_size')


def summary(run):
  """{workdir, settings, rows, stage_seconds} of one teacher's run."""
  flat = config_checks.flat(run['config'])
  return {'workdir': run['workdir'],
          'settings': {k: flat.get(k) for k in FIELDS},
          'rows': [{k: r[k] for k in ('sampler', 'num_steps', 'seed',
                                      'num_samples', 'fd_digits')}
                   for r in run['rows'] if r['model'] == 'teacher'],
          'stage_seconds': quickstart.stage_seconds(run)}


def build(runs, note=''):
  return {'provenance': provenance.record(
      'main.py --config=configs/digits_teacher.py teacher-and-eval runs, in '
      'the workdirs named below' + (f'; {note}' if note else '')),
          'machine': runs[0]['timing']['machine'],
          'runs': [summary(r) for r in runs]}


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_list('workdirs', None, 'The candidate teachers\' workdirs.')
  flags.DEFINE_string('out',
                      'benchmarks/results/quickstart_teachers_digits.json',
                      'The JSON to write.')
  flags.DEFINE_string('note', '', 'Added to the provenance.')
  flags.mark_flag_as_required('workdirs')


def main(argv):
  del argv
  result = build([quickstart.read_run(w) for w in FLAGS.workdirs], FLAGS.note)
  with open(FLAGS.out, 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  for run in result['runs']:
    print(run['settings'], [(r['sampler'], r['num_steps'],
                             round(r['fd_digits'], 2)) for r in run['rows']],
          run['stage_seconds'])


if __name__ == '__main__':
  define_flags()
  app.run(main)
