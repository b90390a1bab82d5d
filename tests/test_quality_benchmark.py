"""benchmarks/quality.py on synthetic eval rows (no JAX, no compile)."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import quality

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(groups, extra=True):
  """Eval-stage rows: {(model, sampler, num_steps): [fd per seed]}."""
  rows = []
  for (model, sampler, n), values in groups.items():
    for seed, v in enumerate(values):
      row = {'model': model, 'sampler': sampler, 'num_steps': n, 'seed': seed,
             'fd_digits': v}
      if extra:
        row.update(num_samples=2000, confidence=0.9, coverage=0.1)
      rows.append(row)
  return rows


def _summary(means):
  """Summary rows with the given means: {(model, sampler, num_steps): mean}."""
  return [{'model': m, 'sampler': s, 'num_steps': n, 'num_seeds': 3,
           'mean': v, 'std': 0., 'min': v, 'max': v}
          for (m, s, n), v in means.items()]


# Teacher's best DDIM mean 10 (at 256 steps); its stochastic best is 5.
BASE = {('teacher', 'ddim', 256): 10., ('teacher', 'ddim', 4): 40.,
        ('teacher', 'stochastic', 64): 5., ('teacher', 'stochastic', 4): 60.,
        ('student', 'ddim', 4): 12., ('student', 'stochastic', 4): 30.,
        ('student', 'ddim', 1): 19., ('student', 'stochastic', 1): 19.}


def _targets(**changes):
  means = dict(BASE)
  for key, value in changes.items():
    model, sampler, n = key.split('_')
    means[(model, sampler, int(n))] = value
  return {t['name'][:2]: t for t in quality.check_targets(_summary(means))}


def test_convert_rows_keeps_exactly_the_keys_and_sorts_teacher_first():
  raw = _rows({('student', 'ddim', 4): [3., 1.],
               ('teacher', 'stochastic', 2): [5.],
               ('teacher', 'ddim', 8): [2.],
               ('teacher', 'ddim', 2): [4.]})
  rows = quality.convert_rows(raw)
  assert all(tuple(r) == quality.ROW_KEYS for r in rows)
  assert [(r['model'], r['sampler'], r['num_steps'], r['seed'])
          for r in rows] == [('teacher', 'ddim', 2, 0), ('teacher', 'ddim', 8, 0),
                             ('teacher', 'stochastic', 2, 0),
                             ('student', 'ddim', 4, 0), ('student', 'ddim', 4, 1)]
  assert [r['fd_digits'] for r in rows] == [4., 2., 5., 3., 1.]


def test_convert_rows_rejects_missing_key_and_repeats():
  raw = _rows({('teacher', 'ddim', 2): [1., 2.]})
  del raw[0]['fd_digits']
  with pytest.raises(ValueError, match='lacks'):
    quality.convert_rows(raw)
  raw = _rows({('teacher', 'ddim', 2): [1.]})
  with pytest.raises(ValueError, match='repeated'):
    quality.convert_rows(raw + raw)


def test_summary_mean_std_min_max_over_seeds():
  rows = quality.convert_rows(_rows({('teacher', 'ddim', 4): [1., 2., 6.],
                                     ('student', 'ddim', 4): [2., 4., 6., 8.]}))
  teacher, student = quality.summarize(rows)
  assert (teacher['model'], teacher['num_seeds']) == ('teacher', 3)
  assert teacher['mean'] == pytest.approx(3.)
  # ddof=1: ((1-3)^2 + (2-3)^2 + (6-3)^2) / 2 = 7.
  assert teacher['std'] == pytest.approx(math.sqrt(7.))
  assert (teacher['min'], teacher['max']) == (1., 6.)
  assert student['num_seeds'] == 4
  assert student['mean'] == pytest.approx(5.)
  assert student['std'] == pytest.approx(math.sqrt(20. / 3.))


def test_fewer_than_three_seeds_is_an_error_unless_allowed():
  rows = quality.convert_rows(_rows({('teacher', 'ddim', 4): [1., 2., 3.],
                                     ('student', 'ddim', 4): [2., 4.]}))
  with pytest.raises(quality.FewSeedsError, match='student/ddim/4 steps: 2'):
    quality.summarize(rows)
  summary = quality.summarize(rows, min_seeds=1)
  assert [s['num_seeds'] for s in summary] == [3, 2]
  one = quality.summarize(quality.convert_rows(
      _rows({('teacher', 'ddim', 4): [1.]})), min_seeds=1)
  assert math.isnan(one[0]['std'])


def test_check_targets_base_case_values():
  t = _targets()
  assert list(t) == ['T1', 'T2', 'T3']
  assert t['T1']['value'] == pytest.approx(1.2)   # 12 / 10, student ddim
  assert t['T2']['value'] == pytest.approx(40. / 12.)
  assert t['T3']['value'] == pytest.approx(1.9)   # 19 / 10
  assert all(t[k]['met'] for k in t)
  # The all-samplers ratio is reported, not used: 12 / 5 = 2.4.
  assert 'ALL samplers' in t['T1']['detail'] and '2.400' in t['T1']['detail']
  assert '3.800' in t['T3']['detail']


@pytest.mark.parametrize('change, target, met', [
    ({'student_ddim_4': 12.4}, 'T1', True),     # 1.24 <= 1.25
    ({'student_ddim_4': 12.6}, 'T1', False),    # 1.26
    ({'student_ddim_4': 12.6, 'student_stochastic_4': 12.4}, 'T1', True),
    ({'teacher_ddim_4': 36.3}, 'T2', True),     # 36.3 / 12 = 3.025
    ({'teacher_ddim_4': 35.7}, 'T2', False),    # 2.975
    ({'student_ddim_1': 19.9, 'student_stochastic_1': 25.}, 'T3', True),
    ({'student_ddim_1': 20.1, 'student_stochastic_1': 25.}, 'T3', False),
    # A better stochastic teacher does not change the teacher's best.
    ({'teacher_stochastic_64': 1.}, 'T3', True),
])
def test_check_targets_both_sides_of_each_threshold(change, target, met):
  assert _targets(**change)[target]['met'] is met


def test_teachers_best_is_its_best_ddim_row_at_any_step_count():
  assert _targets(student_ddim_4=12.4)['T1']['met']  # 12.4 / 10
  t = _targets(student_ddim_4=12.4, teacher_ddim_64=9.7)['T1']
  assert t['value'] == pytest.approx(12.4 / 9.7) and not t['met']
  assert 'teacher ddim 64 steps' in t['detail']


def test_teacher_ddim_at_four_steps_is_the_t2_reference():
  # A worse stochastic 4-step teacher must not make T2 pass.
  t = _targets(teacher_ddim_4=24., teacher_stochastic_4=1000.)['T2']
  assert t['value'] == pytest.approx(2.) and not t['met']


def test_missing_rows_miss_the_target():
  means = {k: v for k, v in BASE.items() if k[2] != 1}
  t = {x['name'][:2]: x for x in quality.check_targets(_summary(means))}
  assert t['T3']['value'] is None and not t['T3']['met']
  assert t['T1']['met']
  assert all(x['value'] is None and not x['met']
             for x in quality.check_targets(_summary({})))


def test_markdown_table_cells():
  rows = quality.convert_rows(_rows({('teacher', 'ddim', 1): [1000., 1002., 1004.],
                                     ('student', 'ddim', 4): [1., 2., 6.]}))
  table = quality.markdown_table(quality.summarize(rows)).splitlines()
  assert table[0] == '| model / sampler | 1 | 4 |'
  assert table[2] == '| teacher ddim | 1002 ± 2 | — |'
  assert table[3] == '| student ddim | — | 3.00 ± 2.65 |'


def _workdir(tmp_path, seeds=3):
  groups = {}
  for i, n in enumerate((1, 2, 4, 8)):
    groups[('teacher', 'ddim', n)] = [100. / n + s for s in range(seeds)]
    groups[('teacher', 'stochastic', n)] = [120. / n + s for s in range(seeds)]
  for n in (1, 2, 4):
    groups[('student', 'ddim', n)] = [20. + n + s for s in range(seeds)]
  workdir = tmp_path / 'work'
  (workdir / 'eval').mkdir(parents=True)
  raw = _rows(groups)
  (workdir / 'eval' / 'results.json').write_text(json.dumps(raw))
  return str(workdir), raw


def test_run_writes_json_png_md(tmp_path):
  workdir, raw = _workdir(tmp_path)
  out, plot, md = (str(tmp_path / 'o' / f'q.{e}') for e in ('json', 'png', 'md'))
  summary, targets, table = quality.run(workdir, out, plot, md)
  with open(out) as f:
    written = json.load(f)
  assert set(written) == {'provenance', 'rows'}
  assert written['rows'] == quality.convert_rows(raw)
  assert all(set(r) == set(quality.ROW_KEYS) for r in written['rows'])
  assert workdir in written['provenance']['made_with']
  with open(plot, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert os.path.getsize(plot) > 1000
  text = open(md).read()
  assert table in text and 'samples per row: 2000' in text
  assert len(summary) == 11 and len(targets) == 3


def _script(args):
  return subprocess.run([sys.executable, '-m', 'benchmarks.quality', *args],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.slow
def test_script_end_to_end(tmp_path):
  workdir, _ = _workdir(tmp_path)
  # Only --out: the plot and the table land beside it.
  files = [str(tmp_path / 'out' / f'q.{e}') for e in ('json', 'png', 'md')]
  proc = _script([f'--workdir={workdir}', f'--out={files[0]}'])
  assert proc.returncode == 0, proc.stderr
  # Teacher best DDIM 100/8 = 13.5; 4-step student 25: T1 misses, T2 misses
  # (26/25), T3 passes (22/13.5 = 1.63).
  assert 'MISS  T1' in proc.stdout and 'MISS  T2' in proc.stdout
  assert 'PASS  T3' in proc.stdout
  assert all(os.path.getsize(p) > 0 for p in files)


@pytest.mark.slow
def test_script_fewer_seeds_fails_with_one_line(tmp_path):
  workdir, _ = _workdir(tmp_path, seeds=2)
  args = [f'--workdir={workdir}', f'--out={tmp_path}/q.json',
          f'--plot={tmp_path}/q.png', f'--md={tmp_path}/q.md']
  proc = _script(args)
  assert proc.returncode != 0
  assert proc.stderr.strip().count('\n') == 0
  assert 'fewer than 3 seeds' in proc.stderr
  assert not os.path.exists(tmp_path / 'q.json')
  proc = _script(args + ['--allow_fewer_seeds'])
  assert proc.returncode == 0, proc.stderr
  assert os.path.exists(tmp_path / 'q.json')


def test_importing_defines_no_flags():
  """main.py defines --workdir too; tests import both in one process."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  assert flags.FLAGS.find_module_defining_flag('workdir') != quality.__name__
  assert flags.FLAGS.find_module_defining_flag('out') != quality.__name__
