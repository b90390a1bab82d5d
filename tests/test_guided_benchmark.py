"""benchmarks/guided.py: its rows and targets, on made-up eval rows."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import guided

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(model, n, w, seed, fd, acc, sampler='ddim'):
  return {'model': model, 'sampler': sampler, 'num_steps': n, 'guidance': w,
          'seed': seed, 'fd_digits': fd, 'label_accuracy': acc,
          'confidence': 0.9}


def _rows():
  rows = []
  for seed in range(3):
    for w, acc in ((0., .80), (2., .95)):
      rows.append(_row('teacher', 64, w, seed, 10. + seed, acc))
      rows.append(_row('teacher', 4, w, seed, 30., acc - .1))
      rows.append(_row('student', 4, w, seed, 12. + seed, acc - .03))
      rows.append(_row('student', 1, w, seed, 25. + seed, acc))
      rows.append(_row('student', 4, w, seed, 99., 0., sampler='stochastic'))
  return rows


def test_rows_keep_ddim_and_exactly_the_benchmark_keys():
  rows = guided.convert_rows(_rows())
  assert len(rows) == 3 * 2 * 4
  assert all(tuple(r) == guided.ROW_KEYS for r in rows)
  assert rows[0]['model'] == 'teacher' and rows[-1]['model'] == 'student'


def test_targets_against_the_teacher_at_its_best_step_count():
  summary = guided.summarize(guided.convert_rows(_rows()))
  mean, std = summary[('teacher', 64, 0.)]['fd_digits']
  assert mean == 11. and math.isclose(std, 1.)
  targets = {(t['name'].split()[0], t['w'], t['name'].split('(')[-1]): t
             for t in guided.check_targets(summary)}
  g1 = [t for t in targets.values() if t['name'].startswith('G1 teacher 64')]
  assert math.isclose(g1[0]['value'], .15) and g1[0]['met']
  g5 = [t for t in targets.values() if t['name'].startswith('G5 teacher 64')]
  assert g5[0]['w'] == 2. and math.isclose(g5[0]['value'], .15)
  assert g5[0]['met']
  g2 = targets[('G2', 2., '64 steps)')]
  assert math.isclose(g2['value'], 13. / 11.) and g2['met']
  g3 = targets[('G3', 0., '64 steps)')]  # 3 points below the teacher
  assert math.isclose(g3['value'], -3.) and not g3['met']
  g4 = targets[('G4', 0., '64 steps)')]
  assert math.isclose(g4['value'], 26. / 11.) and not g4['met']
  assert '| teacher | 64 |' in guided.markdown(summary,
                                               guided.check_targets(summary))


def test_label_accuracy_gain_within_the_spread_is_not_a_gain():
  """G5 asks for more than the seeds' spread; G1 for no fall with w."""
  rows = [_row('teacher', 16, w, seed, 10., acc + (.05 if seed == 1 else 0))
          for seed in range(3) for w, acc in ((0., .90), (1., .93), (2., .92))]
  targets = guided.check_targets(guided.summarize(guided.convert_rows(rows)))
  g1, g5 = targets[0], targets[1]
  assert g1['name'].startswith('G1') and not g1['met']  # .93 -> .92 falls.
  assert math.isclose(g1['value'], -.01)
  assert g5['name'].startswith('G5') and g5['w'] == 1. and not g5['met']
  # .03 gained against a std of 0.0289 at each w.
  assert math.isclose(g5['value'], .03 - 2 * .05 / 3**.5, rel_tol=1e-6)


@pytest.mark.slow
def test_script_writes_the_table_beside_its_out(tmp_path):
  os.makedirs(tmp_path / 'w' / 'eval')
  with open(tmp_path / 'w' / 'eval' / 'results.json', 'w') as f:
    json.dump(_rows(), f)
  out = tmp_path / 'o' / 'g.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.guided',
       f'--workdir={tmp_path / "w"}', f'--out={out}'],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 0, proc.stderr
  written = json.loads(out.read_text())
  assert len(written['rows']) == 3 * 2 * 4
  assert set(written['provenance']) == {'commit', 'date', 'machine',
                                        'command', 'made_with'}
  assert 'benchmarks.guided' in written['provenance']['command']
  assert '| teacher | 64 |' in (tmp_path / 'o' / 'g.md').read_text()
