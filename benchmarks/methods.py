r"""Few-step methods side by side from one teacher: PD, CD, multistep CD, TRACT.

  python main.py --config=configs/digits.py --workdir=/tmp/digits
  python -m benchmarks.methods --teacher=/tmp/digits --root=/tmp/methods \
      [--seeds=0,1,2] [--methods=pd,cd,mcd2,mcd4,mcd8,tract] [--note=...]
  (variants beside those: --methods=cd_n16,tract3)

Runs main.py once per method and seed, in ROOT/METHOD_seedS, each
distilling the same teacher (distill.teacher_checkpoint) with the same
training compute: the quickstart's rounds' updates at their batch (1,200
at 64: rounds of 200, 200, 200 and 600 from 16 steps), and per update three
network evaluations (PD: the student, with its gradient, and two teacher
steps; the consistency family: the student, one teacher step and one
target-network step). Each run evaluates its students with DDIM, the one
sampler all methods share (1,000 samples; the teacher once, at 1 step).
A run already finished is read, not run again; an interrupted one
resumes. Writes benchmarks/results/methods_digits.json (--out): the
provenance, each run's seconds, and rows {method, num_steps, seed,
fd_digits, updates, network_evaluations}; beside it methods_digits.md (the
mean and spread over seeds) and methods_digits.png (FD-digits against
steps, one curve per method, error bars over seeds).
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np

from benchmarks import provenance
from benchmarks import quickstart

# Network evaluations of one training example per update, every method.
EVALUATIONS_PER_UPDATE = 3
UPDATES = 1200


def _consistency(phases, num_steps=UPDATES, target_decay=0., **more):
  return ('configs/digits_consistency.py', {
      'consistency.phases': phases, 'consistency.num_steps': num_steps,
      'consistency.target_decay': target_decay,
      **{f'consistency.{k}': v for k, v in more.items()}})


# method -> (config file, {field: value}); each trains UPDATES updates.
METHODS = {
    'pd': ('configs/digits_distill.py', {}),
    'cd': _consistency((1,)),
    'mcd2': _consistency((2,)),
    'mcd4': _consistency((4,)),
    'mcd8': _consistency((8,)),
    # TRACT's two phases, 64 -> 8 -> 1, half the updates each, and its
    # target network's rate.
    'tract': _consistency((8, 1), UPDATES // 2, 0.5),
}
# Variants that probe what the 1-step consistency students lack: at the
# same budget, the teacher's grid N of PD's first round (16, not 64) or 8,
# the target rate, the weighting, and TRACT in three phases (64 -> 16 -> 4
# -> 1, 400 updates each); and CD at three times the budget.
VARIANTS = {
    'cd_n16': _consistency((1,), teacher_num_steps=16),
    'cd_n8': _consistency((1,), teacher_num_steps=8),
    'tract3': _consistency((16, 4, 1), UPDATES // 3, 0.5),
    # CD from 16 steps with TRACT's target rate, or weighting every noise
    # level alike (more weight at high noise, where one step starts).
    'cd_n16_r05': _consistency((1,), UPDATES, 0.5, teacher_num_steps=16),
    'cd_n16_const': _consistency((1,), teacher_num_steps=16,
                                 loss_weighting='constant'),
    # Three times the budget: does more training close the 1-step gap?
    'cd_n16_x3': _consistency((1,), 3 * UPDATES, teacher_num_steps=16),
}
MAIN = list(METHODS)
METHODS.update(VARIANTS)
STAGES = {'pd': 'distill'}


def _value(v):
  """`v` as --config.FIELD=... spells it."""
  return v if isinstance(v, str) else repr(v).replace(' ', '')


def command(method, seed, teacher, workdir):
  """main.py's command line for one run."""
  config, fields = METHODS[method]
  fields = {'seed': seed, 'distill.teacher_checkpoint': teacher,
            'stages': (STAGES.get(method, 'consistency'), 'eval'),
            'eval.sample_steps': (1,), 'eval.teacher_samplers': ('ddim',),
            'eval.student_samplers': ('ddim',), **fields}
  return [sys.executable, 'main.py', f'--config={config}',
          f'--workdir={workdir}'] + [f'--config.{k}={_value(v)}'
                                     for k, v in fields.items()]


def run(method, seed, teacher, root):
  """Runs (or resumes) one method's run unless it has finished; returns
  its workdir."""
  workdir = os.path.join(root, f'{method}_seed{seed}')
  if not os.path.exists(os.path.join(workdir, 'eval', 'results.json')):
    subprocess.run(command(method, seed, teacher, workdir), check=True)
  return workdir


def updates_of(method):
  """The updates a method's run trains: every phase's, or the rounds'."""
  fields = METHODS[method][1]
  if 'consistency.phases' not in fields:
    return UPDATES
  return len(fields['consistency.phases']) * fields['consistency.num_steps']


def rows_of(method, workdir):
  """The students' rows of one run, as the benchmark records them."""
  r = quickstart.read_run(workdir)
  return [{'method': method, 'num_steps': row['num_steps'],
           'seed': row['seed'], 'fd_digits': row['fd_digits'],
           'updates': updates_of(method),
           'network_evaluations': EVALUATIONS_PER_UPDATE}
          for row in r['rows'] if row['model'] == 'student']


def summary(rows):
  """{method: {num_steps: (mean, std over seeds, number of seeds)}}."""
  out = {}
  for row in rows:
    out.setdefault(row['method'], {}).setdefault(
        row['num_steps'], []).append(row['fd_digits'])
  return {m: {n: (float(np.mean(v)), float(np.std(v)), len(v))
              for n, v in sorted(by_steps.items())}
          for m, by_steps in out.items()}


def markdown_table(rows):
  s = summary(rows)
  steps = sorted({n for by_steps in s.values() for n in by_steps})
  out = ['| method | ' + ' | '.join(f'{n} steps' for n in steps) + ' |',
         '|---|' + '---|' * len(steps)]
  for method, by_steps in s.items():
    cells = [f'{by_steps[n][0]:.1f} ± {by_steps[n][1]:.1f}'
             if n in by_steps else '' for n in steps]
    out.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(out)


def plot(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, by_steps in summary(rows).items():
    steps = list(by_steps)
    ax.errorbar(steps, [by_steps[n][0] for n in steps],
                yerr=[by_steps[n][1] for n in steps], marker='o',
                capsize=3, label=method)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('sampling steps (DDIM)')
  ax.set_ylabel('FD-digits (lower is better)')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('teacher', None, 'The shared teacher: a workdir or '
                      'checkpoint (distill.teacher_checkpoint).')
  flags.DEFINE_string('root', None, 'Where each run gets its workdir.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of each method.')
  flags.DEFINE_list('methods', MAIN, 'Methods to run: '
                    + ', '.join(METHODS) + '.')
  flags.DEFINE_string('out', 'benchmarks/results/methods_digits.json',
                      'The JSON to write; the table and plot go beside it.')
  flags.DEFINE_string('note', '', 'Added to the provenance.')
  flags.mark_flags_as_required(['teacher', 'root'])


def main(argv):
  del argv
  runs, rows = [], []
  for method in FLAGS.methods:
    for seed in map(int, FLAGS.seeds):
      workdir = run(method, seed, FLAGS.teacher, FLAGS.root)
      timing = quickstart.read_run(workdir)['timing']
      runs.append({'method': method, 'seed': seed, 'workdir': workdir,
                   'command': ' '.join(command(method, seed, FLAGS.teacher,
                                               workdir)[1:]),
                   'stage_seconds': {k: v['seconds'] for k, v in
                                     timing['stages'].items()}})
      rows += rows_of(method, workdir)
  result = {'provenance': provenance.record(
      f'main.py runs distilling the teacher {FLAGS.teacher}, one per method '
      'and seed, in the workdirs named below'
      + (f'; {FLAGS.note}' if FLAGS.note else '')),
            'machine': timing['machine'], 'runs': runs, 'rows': rows}
  stem = os.path.splitext(FLAGS.out)[0]
  with open(FLAGS.out, 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  table = markdown_table(rows)
  with open(stem + '.md', 'w') as f:
    f.write(table + '\n')
  plot(rows, stem + '.png')
  print(table)


if __name__ == '__main__':
  define_flags()
  app.run(main)
