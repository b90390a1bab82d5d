r"""Guided-distillation benchmark: FD-digits and label accuracy against w.

  python main.py --config=configs/digits_guided.py --workdir=/tmp/digits_guided
  python main.py --config=configs/digits_guided.py --workdir=/tmp/digits_guided \
      "--config.stages=('eval',)" --config.eval.num_seeds=3 \
      "--config.eval.sample_steps=(4,16,64)"
  python -m benchmarks.guided --workdir=/tmp/digits_guided

Reads WORKDIR/eval/results.json (the eval stage's rows, DDIM only) and
writes under benchmarks/results/:

  guided_digits.json  (--out)  {'provenance': benchmarks/provenance.py's
                               record, 'rows': exactly {model, num_steps,
                               guidance, seed, fd_digits, label_accuracy},
                               sorted}
  guided_digits.md    (--md)   mean +- std over seeds per (model, steps, w)
                               and the targets, for BENCHMARKS.md
                               (default: --out's path with .md)

Targets ("the guided teacher" at a w is the teacher at its best step count
for that w, by mean FD-digits; "spread" is the std over seeds):

  G1  each teacher's label accuracy rises with w (no w below another's)
  G2  4-step student FD-digits / the guided teacher's, each w   <= 1.25
  G3  |4-step student label accuracy - the teacher's|, each w   <= 2 points
  G4  1-step student FD-digits / the guided teacher's, each w   <= 2
  G5  each teacher's label accuracy at its best w over w = 0's, by more than
      the two spreads together

Imports no TensorFlow; JAX only to name the machine.
"""

import collections
import json
import os
import statistics
import sys

from absl import app
from absl import flags

from benchmarks import provenance
from benchmarks import quality

ROW_KEYS = ('model', 'num_steps', 'guidance', 'seed', 'fd_digits',
            'label_accuracy')
SAMPLER = 'ddim'
G2_MAX, G3_MAX_POINTS, G4_MAX = 1.25, 2., 2.


def convert_rows(rows):
  """The DDIM rows reduced to ROW_KEYS, typed and sorted (teacher first)."""
  out = []
  for r in rows:
    if r.get('sampler', SAMPLER) != SAMPLER:
      continue
    out.append({'model': str(r['model']), 'num_steps': int(r['num_steps']),
                'guidance': float(r['guidance']), 'seed': int(r['seed']),
                'fd_digits': float(r['fd_digits']),
                'label_accuracy': float(r['label_accuracy'])})
  return sorted(out, key=lambda r: (r['model'] != 'teacher', r['model'],
                                    r['num_steps'], r['guidance'], r['seed']))


def summarize(rows):
  """{(model, num_steps, w): {metric: (mean, std), 'seeds': n}}."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r['model'], r['num_steps'], r['guidance'])].append(r)
  out = {}
  for key, group in groups.items():
    out[key] = {'seeds': len(group)}
    for metric in ('fd_digits', 'label_accuracy'):
      values = [r[metric] for r in group]
      out[key][metric] = (statistics.fmean(values), statistics.stdev(values)
                          if len(values) > 1 else float('nan'))
  return out


def _mean(summary, key, metric):
  return summary[key][metric][0] if key in summary else None


def _steps(n):
  return f'{n} step' + ('' if n == 1 else 's')


def check_targets(summary):
  """[{name, w, value, goal, met}] for G1 and G5 per teacher step count,
  and at each w G2-G4."""
  ws = sorted({w for _, _, w in summary})
  teacher_steps = sorted({n for m, n, _ in summary if m == 'teacher'})
  targets = []
  for n in teacher_steps:
    acc = {w: summary[('teacher', n, w)]['label_accuracy'] for w in ws}
    rises = [acc[b][0] - acc[a][0] for a, b in zip(ws, ws[1:])]
    targets.append({
        'name': f'G1 teacher {_steps(n)}: smallest rise of label accuracy '
                'from one w to the next',
        'w': ws[-1], 'value': min(rises, default=float('nan')),
        'goal': '>= 0', 'met': bool(rises) and min(rises) >= 0})
  for n in teacher_steps:
    acc = {w: summary[('teacher', n, w)]['label_accuracy'] for w in ws}
    best_w = max(ws, key=lambda w: acc[w][0])
    margin = acc[best_w][0] - acc[0.][0]
    spread = acc[best_w][1] + acc[0.][1]
    targets.append({
        'name': f'G5 teacher {_steps(n)}: label accuracy at its best w over '
                f'w=0, minus the two spreads ({spread:.4f})',
        'w': best_w, 'value': margin - spread, 'goal': '> 0',
        'met': best_w != 0. and margin - spread > 0})
  for w in ws:
    n_best = min(teacher_steps,
                 key=lambda n: _mean(summary, ('teacher', n, w), 'fd_digits'))
    teacher = ('teacher', n_best, w)
    for name, steps, metric, goal, ok in (
        ('G2 4-step student FD / teacher', 4, 'fd_digits', f'<= {G2_MAX}',
         lambda v: v <= G2_MAX),
        ('G3 4-step student label accuracy - teacher (points)', 4,
         'label_accuracy', f'abs <= {G3_MAX_POINTS:g}',
         lambda v: abs(v) <= G3_MAX_POINTS),
        ('G4 1-step student FD / teacher', 1, 'fd_digits', f'<= {G4_MAX:g}',
         lambda v: v <= G4_MAX)):
      s, t = (_mean(summary, ('student', steps, w), metric),
              _mean(summary, teacher, metric))
      value = None if s is None else (
          s / t if metric == 'fd_digits' else 100. * (s - t))
      targets.append({'name': f'{name} ({_steps(n_best)})', 'w': w,
                      'value': value, 'goal': goal,
                      'met': value is not None and ok(value)})
  return targets


def markdown(summary, targets):
  ws = sorted({w for _, _, w in summary})
  models = sorted({(m, n) for m, n, _ in summary},
                  key=lambda k: (k[0] != 'teacher', -k[1]))
  lines = ['| model | steps | ' + ' | '.join(f'w = {w:g}' for w in ws) + ' |',
           '|---|---:|' + '---:|' * len(ws)]
  for m, n in models:
    cells = []
    for w in ws:
      s = summary.get((m, n, w))
      cells.append('' if s is None else (
          f'{quality.format_cell(*s["fd_digits"])} / '
          f'{100 * s["label_accuracy"][0]:.1f}%'))
    lines.append(f'| {m} | {n} | ' + ' | '.join(cells) + ' |')
  lines += ['', '| target | w | value | goal | met |', '|---|---:|---:|---|---|']
  for t in targets:
    value = '—' if t['value'] is None else f'{t["value"]:.3f}'
    lines.append(f'| {t["name"]} | {t["w"]:g} | {value} | {t["goal"]} | '
                 f'{"yes" if t["met"] else "no"} |')
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  source = os.path.join(FLAGS.workdir, 'eval', 'results.json')
  try:
    with open(source) as f:
      rows = convert_rows(json.load(f))
  except (OSError, ValueError, KeyError) as e:
    sys.exit(f'guided: error: {source}: {e!r}')
  summary = summarize(rows)
  text = markdown(summary, check_targets(summary))
  record = provenance.record(FLAGS.made_with or (
      f'the commands of benchmarks/guided.py, --workdir={FLAGS.workdir}'))
  quality.write_text(FLAGS.out, json.dumps(
      {'provenance': record, 'rows': rows}, indent=1) + '\n')
  quality.write_text(quality.beside(FLAGS.out, FLAGS.md, '.md'), (
      '<!-- Written by benchmarks/guided.py. -->\n\nFD-digits (mean ± std '
      'over seeds) / label accuracy (mean), DDIM. Rows: '
      f'`{os.path.basename(FLAGS.out)}` (commit {record["commit"][:12]}, '
      f'{record["date"]}, {record["machine"]}).\n\n' + text + '\n'))
  print(text)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Workdir of a configs/digits_guided.py '
                      'run.', required=True)
  flags.DEFINE_string('out', os.path.join(quality.RESULTS_DIR,
                                          'guided_digits.json'), 'Rows.')
  flags.DEFINE_string('md', None, 'Table (default: --out with .md).')
  flags.DEFINE_string('made_with', None, 'How WORKDIR came about, for the '
                      "provenance record (default: this module's commands).")
  app.run(main)
