r"""The quickstart's table and time, from its workdir, with their provenance.

  python main.py --config=configs/digits.py --workdir=/tmp/digits
  python -m benchmarks.quickstart --workdir=/tmp/digits \
      [--before=/tmp/digits_before --before_config=FILE]

Reads WORKDIR/eval/results.json and WORKDIR/timing.json (and those of
--before, the same quickstart run with an earlier config on the same
machine, for the side-by-side comparison) and writes
benchmarks/results/quickstart_digits.json (--out): the provenance (commit,
date, machine, this command), each run's config values that differ between
them, each stage's seconds, the FD-digits rows, and the ratios that the
README quotes; beside it quickstart_digits.md, the README's table,
quickstart_digits.png, the run's eval/quality_vs_steps.png, and
quickstart_digits_student1.png, the 1-step student's last sample grid.

Reads only JSON (and the workdir's two images); the config's fields are
flattened as config_checks flattens them.
"""

import glob
import json
import os
import shutil

from absl import app
from absl import flags

from benchmarks import provenance
from diffusion_distill import config_checks

COLUMNS = (('teacher', 'ddim'), ('teacher', 'ancestral'), ('student', 'ddim'),
           ('student', 'stochastic'))


def read_run(workdir):
  """{config, timing, rows} of a quickstart workdir."""
  def load(*parts):
    with open(os.path.join(workdir, *parts)) as f:
      return json.load(f)
  rows = [{k: r[k] for k in ('model', 'sampler', 'num_steps', 'seed',
                             'num_samples', 'fd_digits')}
          for r in load('eval', 'results.json')]
  return {'workdir': workdir, 'config': load('config.json'),
          'timing': load('timing.json'), 'rows': rows}


def config_differences(before, after):
  """{field: [before, after]} of the fields whose values differ."""
  a, b = config_checks.flat(before), config_checks.flat(after)
  return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)}


def fd(rows, model, sampler, num_steps):
  found = [r['fd_digits'] for r in rows if (r['model'], r['sampler'],
                                            r['num_steps']) == (
                                                model, sampler, num_steps)]
  return found[0] if found else None


def best(rows, model, num_steps=None):
  """(FD-digits, sampler, steps) of the model's best row (at num_steps)."""
  return min((r['fd_digits'], r['sampler'], r['num_steps']) for r in rows
             if r['model'] == model and num_steps in (None, r['num_steps']))


def headline(run):
  """The figures the quickstart is judged by: the teacher's best row and
  the 1- and 4-step students' best samplers, and the run's seconds."""
  rows = run['rows']
  return {'teacher_best': best(rows, 'teacher'),
          'student_4_best': best(rows, 'student', 4),
          'student_1_best': best(rows, 'student', 1),
          'run_seconds': run['timing']['stages']['run']['seconds']}


def markdown_table(rows):
  steps = sorted({r['num_steps'] for r in rows})
  out = ['| steps | teacher DDIM | teacher ancestral | student DDIM | '
         'student stochastic |', '|---|---|---|---|---|']
  for n in steps:
    cells = [fd(rows, m, s, n) for m, s in COLUMNS]
    out.append(f'| {n} | ' + ' | '.join(
        '' if c is None else f'{c:.1f}' for c in cells) + ' |')
  return '\n'.join(out)


def stage_seconds(run):
  return {k: v['seconds'] for k, v in run['timing']['stages'].items()}


def build(after, before=None, before_config='', note=''):
  out = {'provenance': provenance.record(
      'main.py --config=configs/digits.py runs, in the workdirs named below'
      + (f'; {note}' if note else '')),
         'machine': after['timing']['machine'],
         'run': {'workdir': after['workdir'], 'headline': headline(after),
                 'stage_seconds': stage_seconds(after),
                 'rows': after['rows']}}
  if before is not None:
    h, hb = headline(after), headline(before)
    out['before'] = {'workdir': before['workdir'], 'config': before_config,
                     'machine': before['timing']['machine'],
                     'headline': hb, 'stage_seconds': stage_seconds(before),
                     'rows': before['rows']}
    out['config_changes'] = config_differences(before['config'],
                                               after['config'])
    out['ratios'] = {
        'time': h['run_seconds'] / hb['run_seconds'],
        **{k: h[k][0] / hb[k][0] for k in ('teacher_best', 'student_4_best',
                                          'student_1_best')}}
  return out


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('workdir', None, 'The quickstart workdir.')
  flags.DEFINE_string('before', None, 'The same quickstart with the earlier '
                      'config, run on the same machine.')
  flags.DEFINE_string('before_config', '', 'How --before was configured.')
  flags.DEFINE_string('out', 'benchmarks/results/quickstart_digits.json',
                      'The JSON to write; the table goes beside it (.md).')
  flags.DEFINE_string('note', '', 'Added to the provenance: how the runs '
                      'came about (e.g. the code they ran).')
  flags.DEFINE_bool('copy_images', True, 'Copy the plot and the 1-step '
                    'student\'s grid beside --out.')
  flags.mark_flag_as_required('workdir')


def images(workdir):
  """{suffix of the copy: the workdir's image}: the plot and the 1-step
  student's last grid."""
  grids = sorted(glob.glob(os.path.join(
      workdir, 'distill', 'student_00001', 'samples', 'step_*.png')))
  return {'.png': os.path.join(workdir, 'eval', 'quality_vs_steps.png'),
          '_student1.png': grids[-1]}


def main(argv):
  del argv
  after = read_run(FLAGS.workdir)
  before = read_run(FLAGS.before) if FLAGS.before else None
  result = build(after, before, FLAGS.before_config, FLAGS.note)
  stem = os.path.splitext(FLAGS.out)[0]
  result['images'] = {}
  for suffix, source in (images(FLAGS.workdir).items()
                         if FLAGS.copy_images else ()):
    shutil.copyfile(source, stem + suffix)
    result['images'][os.path.basename(stem + suffix)] = source
  with open(FLAGS.out, 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  table = markdown_table(after['rows'])
  with open(os.path.splitext(FLAGS.out)[0] + '.md', 'w') as f:
    f.write(table + '\n')
  print(table)
  print(json.dumps({k: v for k, v in result.items()
                    if k in ('ratios', 'config_changes')}, indent=1))


if __name__ == '__main__':
  define_flags()
  app.run(main)
