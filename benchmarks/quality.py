r"""Quality benchmark: FD-digits of the digits teacher and its students.

  python main.py --config=configs/digits_quality.py --workdir=/tmp/quality
  python -m benchmarks.quality --workdir=/tmp/quality

Reads WORKDIR/eval/results.json (written by the eval stage,
diffusion_distill/stages/evaluate.py) and writes, by default under
benchmarks/results/:

  quality_digits.json  (--out)   its provenance (benchmarks/provenance.py)
                                 and the rows, exactly {model, sampler,
                                 num_steps, seed, fd_digits}, sorted
                                 (teacher first, then sampler, steps, seed)
  quality_digits.png   (--plot)  FD-digits (log) against sampling steps
                                 (log2), mean +- sample std over seeds, a
                                 line per (model, sampler)
  quality_digits.md    (--md)    a header with the run's metadata, the table
                                 printed below (mean +- std over seeds) and
                                 the targets, for BENCHMARKS.md to include

--plot and --md default to --out's path with .png and .md.

Each (model, sampler, num_steps) needs >= 3 seeds (--allow_fewer_seeds to
summarize anyway). Targets (lower FD-digits is better; "teacher's best" is
the lowest mean over the teacher's DDIM rows, the undistilled DDIM teacher
being the paper's reference; the ratio against the teacher's best over all
samplers, the stochastic one included, is printed too, for information):

  T1  4-step student (its best sampler by mean) / teacher's best <= 1.25
  T2  teacher DDIM at 4 steps / 4-step student                 >= 3
  T3  1-step student (its best sampler by mean) / teacher's best <= 2

Reads only JSON; imports no TensorFlow.
"""

import collections
import json
import math
import os
import statistics
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence

from absl import app
from absl import flags

from benchmarks import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, 'benchmarks', 'results')
METRIC = 'fd_digits'
ROW_KEYS = ('model', 'sampler', 'num_steps', 'seed', METRIC)
MIN_SEEDS = 3
MODEL_ORDER = ('teacher', 'student')
REFERENCE_SAMPLER = 'ddim'  # the teacher's sampler that "teacher's best" uses
# The targets' thresholds (see check_targets).
T1_MAX_RATIO = 1.25  # 4-step student / teacher's best
T2_MIN_RATIO = 3.    # teacher DDIM at 4 steps / 4-step student
T3_MAX_RATIO = 2.    # 1-step student / teacher's best


class FewSeedsError(ValueError):
  """A (model, sampler, num_steps) has fewer seeds than required."""


def _sort_key(row):
  model = row['model']
  order = MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)
  return (order, model, row['sampler'], row['num_steps'], row.get('seed', 0))


def convert_rows(rows: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The eval rows reduced to ROW_KEYS, typed and sorted (teacher first).

  Raises ValueError (one line) if a row lacks a key or a row is repeated.
  """
  out, seen = [], set()
  for i, r in enumerate(rows):
    missing = [k for k in ROW_KEYS if k not in r]
    if missing:
      raise ValueError(f'row {i} of the eval results lacks {missing}: {r}')
    row = {'model': str(r['model']), 'sampler': str(r['sampler']),
           'num_steps': int(r['num_steps']), 'seed': int(r['seed']),
           METRIC: float(r[METRIC])}
    key = tuple(row[k] for k in ROW_KEYS[:4])
    if key in seen:
      raise ValueError(f'repeated row (model, sampler, num_steps, seed) = {key}')
    seen.add(key)
    out.append(row)
  return sorted(out, key=_sort_key)


def summarize(rows: Sequence[Dict[str, Any]],
              min_seeds: int = MIN_SEEDS) -> List[Dict[str, Any]]:
  """Per (model, sampler, num_steps): mean, std (ddof=1), min, max over seeds.

  std is nan for a single seed. Raises FewSeedsError (one line) if a group
  has fewer than `min_seeds` seeds.
  """
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r['model'], r['sampler'], r['num_steps'])].append(r[METRIC])
  few = sorted((k for k, v in groups.items() if len(v) < min_seeds),
               key=lambda k: _sort_key(dict(zip(ROW_KEYS[:3], k))))
  if few:
    listed = ', '.join(f'{m}/{s}/{n} steps: {len(groups[(m, s, n)])}'
                       for m, s, n in few[:4])
    if len(few) > 4:
      listed += ', ...'
    raise FewSeedsError(
        f'fewer than {min_seeds} seeds for {len(few)} of {len(groups)} rows '
        f'({listed}); pass --allow_fewer_seeds to summarize anyway')
  summary = []
  for (model, sampler, n), values in groups.items():
    summary.append({
        'model': model, 'sampler': sampler, 'num_steps': n,
        'num_seeds': len(values), 'mean': statistics.fmean(values),
        'std': statistics.stdev(values) if len(values) > 1 else math.nan,
        'min': min(values), 'max': max(values)})
  return sorted(summary, key=_sort_key)


def _best(summary, model, sampler=None, num_steps=None):
  """The summary row of `model` with the lowest mean, or None."""
  rows = [s for s in summary if s['model'] == model
          and (sampler is None or s['sampler'] == sampler)
          and (num_steps is None or s['num_steps'] == num_steps)]
  return min(rows, key=lambda s: s['mean']) if rows else None


def _describe(s):
  n = s['num_steps']
  return (f'{s["model"]} {s["sampler"]} {n} step{"s" * (n != 1)} '
          f'({s["mean"]:.3f})')


def check_targets(summary: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The three targets: [{name, value, goal, met, detail}] (value: a ratio).

  A target whose rows are missing has value None and is not met.
  """
  teacher_best = _best(summary, 'teacher', REFERENCE_SAMPLER)
  teacher_best_all = _best(summary, 'teacher')
  teacher_4 = _best(summary, 'teacher', REFERENCE_SAMPLER, 4)
  student_4 = _best(summary, 'student', num_steps=4)
  student_1 = _best(summary, 'student', num_steps=1)

  def versus_teacher(name, student, max_ratio, what):
    goal = f'<= {max_ratio:g}'
    if student is None or teacher_best is None:
      absent = 'student' if student is None else f'teacher {REFERENCE_SAMPLER}'
      return {'name': name, 'value': None, 'goal': goal, 'met': False,
              'detail': f'no {absent} rows for {what}'}
    ratio = student['mean'] / teacher_best['mean']
    detail = (f'{_describe(student)} / teacher\'s best {REFERENCE_SAMPLER}: '
              f'{_describe(teacher_best)}')
    ratio_all = student['mean'] / teacher_best_all['mean']
    detail += (f'\ninfo, not the target: vs the teacher\'s best over ALL '
               f'samplers, {_describe(teacher_best_all)}: ratio {ratio_all:.3f}')
    return {'name': name, 'value': ratio, 'goal': goal,
            'met': ratio <= max_ratio, 'detail': detail}

  t1 = versus_teacher(
      'T1: 4-step student within 25% of the teacher\'s best', student_4,
      T1_MAX_RATIO, 'T1')
  t3 = versus_teacher(
      'T3: 1-step student within 2x of the teacher\'s best', student_1,
      T3_MAX_RATIO, 'T3')
  t2_name = f'T2: teacher {REFERENCE_SAMPLER} at 4 steps >= 3x worse than the 4-step student'
  t2_goal = f'>= {T2_MIN_RATIO:g}'
  if teacher_4 is None or student_4 is None:
    absent = 'student' if student_4 is None else f'teacher {REFERENCE_SAMPLER}'
    t2 = {'name': t2_name, 'value': None, 'goal': t2_goal, 'met': False,
          'detail': f'no 4-step {absent} rows'}
  else:
    ratio = teacher_4['mean'] / student_4['mean']
    t2 = {'name': t2_name, 'value': ratio, 'goal': t2_goal,
          'met': ratio >= T2_MIN_RATIO,
          'detail': f'{_describe(teacher_4)} / {_describe(student_4)}'}
  return [t1, t2, t3]


def format_cell(mean, std):
  """'mean ± std' with the decimals the mean's size asks for."""
  decimals = 0 if abs(mean) >= 100 else 1 if abs(mean) >= 10 else 2
  text = f'{mean:.{decimals}f}'
  if not math.isnan(std):
    text += f' ± {std:.{decimals}f}'
  return text


def markdown_table(summary: Sequence[Dict[str, Any]]) -> str:
  """Rows model/sampler, columns the step counts, cells 'mean ± std'."""
  steps = sorted({s['num_steps'] for s in summary})
  lines = sorted({(s['model'], s['sampler']) for s in summary},
                 key=lambda k: _sort_key(dict(model=k[0], sampler=k[1],
                                              num_steps=0)))
  cells = {(s['model'], s['sampler'], s['num_steps']): s for s in summary}
  out = ['| model / sampler | ' + ' | '.join(str(n) for n in steps) + ' |',
         '|---|' + '---:|' * len(steps)]
  for model, sampler in lines:
    row = []
    for n in steps:
      s = cells.get((model, sampler, n))
      row.append(format_cell(s['mean'], s['std']) if s else '—')
    out.append(f'| {model} {sampler} | ' + ' | '.join(row) + ' |')
  return '\n'.join(out)


def format_targets(targets: Sequence[Dict[str, Any]]) -> str:
  out = []
  for t in targets:
    value = 'n/a' if t['value'] is None else f'{t["value"]:.3f}'
    out.append(f'{"PASS" if t["met"] else "MISS"}  {t["name"]}: ratio '
               f'{value} (goal {t["goal"]})')
    out.extend('      ' + line for line in t['detail'].splitlines())
  return '\n'.join(out)


def plot_png(summary: Sequence[Dict[str, Any]], path: str,
             reference: Optional[Dict[str, Any]] = None) -> None:
  """FD-digits (log) vs steps (log2), mean ± std error bars, a line per
  (model, sampler); a dashed line at `reference` (the teacher's best)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  lines = sorted({(s['model'], s['sampler']) for s in summary},
                 key=lambda k: _sort_key(dict(model=k[0], sampler=k[1],
                                              num_steps=0)))
  for model, sampler in lines:
    rows = sorted((s for s in summary
                   if (s['model'], s['sampler']) == (model, sampler)),
                  key=lambda s: s['num_steps'])
    means = [s['mean'] for s in rows]
    std = [0. if math.isnan(s['std']) else s['std'] for s in rows]
    # On a log axis a bar below zero cannot be drawn: stop it just above 0.
    lower = [min(e, 0.95 * m) for e, m in zip(std, means)]
    label = ('distilled' if model == 'student' else 'undistilled') + (
        f' {sampler}')
    ax.errorbar([s['num_steps'] for s in rows], means, yerr=[lower, std],
                marker='o', markersize=4, capsize=3, label=label,
                linestyle='-' if model == 'student' else '--')
  if reference is not None:
    ax.axhline(reference['mean'], color='gray', linewidth=0.8, linestyle=':',
               label=f'teacher best {reference["sampler"]} '
                     f'({reference["mean"]:.2f})')
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('sampling steps')
  ax.set_ylabel('FD-digits (mean ± std over seeds)')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format='png')
  plt.close(fig)


def beside(out: str, flag_value, ext: str) -> str:
  """`flag_value`, or when it is unset the output `out` with `ext` ('.md',
  '.png') for its extension: an --out elsewhere keeps the table and plot
  beside it instead of overwriting those under benchmarks/results/."""
  return flag_value or os.path.splitext(out)[0] + ext


def write_text(path, text):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def _metadata(workdir, raw_rows, rows, summary, config_name):
  """Lines for the .md header: what produced these numbers."""
  num_samples = sorted({int(r['num_samples']) for r in raw_rows
                        if 'num_samples' in r})
  seeds = sorted({r['seed'] for r in rows})
  meta = [f'- config: `{config_name}`',
          f'- source: `{os.path.join(workdir, "eval", "results.json")}` '
          f'({len(rows)} rows)',
          f'- samples per row: {", ".join(map(str, num_samples)) or "unknown"}',
          f'- seeds: {", ".join(map(str, seeds))} (per cell: '
          f'{", ".join(map(str, sorted({s["num_seeds"] for s in summary})))})']
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
    for section, keys in (
        ('train', ('num_steps', 'batch_size')),
        ('distill', ('start_num_steps', 'end_num_steps', 'steps_per_round',
                     'last_rounds_multiplier', 'long_rounds_max_steps',
                     'batch_size'))):
      values = config.get(section) or {}
      given = [f'{k}={values[k]}' for k in keys if k in values]
      if given:
        meta.append(f'- {section} (workdir config.json): ' + ', '.join(given))
  return meta


def run(workdir: str, out: str, plot: str, md: str, *,
        allow_fewer_seeds: bool = False,
        config_name: str = 'configs/digits_quality.py'):
  """Reads the eval results, writes out/plot/md; returns (summary, targets, table).

  Raises FileNotFoundError or ValueError (FewSeedsError) with one line.
  """
  source = os.path.join(workdir, 'eval', 'results.json')
  if not os.path.exists(source):
    raise FileNotFoundError(f'no {source}: run `python main.py '
                            f'--config={config_name} --workdir={workdir}` first')
  with open(source) as f:
    raw_rows = json.load(f)
  rows = convert_rows(raw_rows)
  if not rows:
    raise ValueError(f'{source} holds no rows')
  summary = summarize(rows, min_seeds=1 if allow_fewer_seeds else MIN_SEEDS)
  targets = check_targets(summary)
  table = markdown_table(summary)
  reference = _best(summary, 'teacher', REFERENCE_SAMPLER)

  write_text(out, json.dumps({'provenance': provenance.record(
      f'python main.py --config={config_name} --workdir={workdir}'),
                              'rows': rows}, indent=1) + '\n')
  plot_png(summary, plot, reference)
  md_text = '\n'.join(
      ['<!-- Written by benchmarks/quality.py; do not edit by hand. -->',
       '', '**FD-digits** (lower is better) against sampling steps; each '
       'cell is the mean ± sample std (ddof=1) over seeds.', ''] +
      _metadata(workdir, raw_rows, rows, summary, config_name) +
      ['', table, '', 'Targets:', '', '```', format_targets(targets), '```',
       ''])
  write_text(md, md_text)
  return summary, targets, table


FLAGS = flags.FLAGS


def define_flags():
  """Defined when run as a script only: importing this module (as the tests
  do, next to main.py's --workdir) defines no flags."""
  flags.DEFINE_string('workdir', None, 'Workdir of the '
                      'configs/digits_quality.py run (its eval/results.json '
                      'is read).')
  flags.DEFINE_string('out', os.path.join(RESULTS_DIR, 'quality_digits.json'),
                      'Output JSON (the rows).')
  flags.DEFINE_string('plot', None, 'Output plot (default: --out with .png).')
  flags.DEFINE_string('md', None,
                      'Output markdown table (default: --out with .md).')
  flags.DEFINE_boolean('allow_fewer_seeds', False,
                       f'Summarize even with fewer than {MIN_SEEDS} seeds per '
                       'row.')
  flags.DEFINE_string('config_name', 'configs/digits_quality.py',
                      'Config that produced the workdir (for the .md header).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  plot = beside(FLAGS.out, FLAGS.plot, '.png')
  md = beside(FLAGS.out, FLAGS.md, '.md')
  try:
    _, targets, table = run(FLAGS.workdir, FLAGS.out, plot, md,
                            allow_fewer_seeds=FLAGS.allow_fewer_seeds,
                            config_name=FLAGS.config_name)
  except (OSError, ValueError) as e:
    sys.exit(f'quality: error: {e}')
  print('FD-digits, mean ± std over seeds:\n')
  print(table)
  print()
  print(format_targets(targets))
  print(f'\n{sum(t["met"] for t in targets)}/{len(targets)} targets met')
  for path in (FLAGS.out, plot, md):
    print(f'wrote {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
