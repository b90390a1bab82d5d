"""benchmarks/quickstart.py: a quickstart workdir's table, time and ratios
against the run before it, with provenance."""

import json
import os

import pytest

from benchmarks import quickstart
from benchmarks import quickstart_teachers


def _workdir(root, name, scale, seconds, num_steps):
  wd = os.path.join(root, name)
  os.makedirs(os.path.join(wd, 'eval'))
  rows = [{'model': 'teacher', 'sampler': s, 'num_steps': n, 'seed': 0,
           'num_samples': 1000, 'fd_digits': scale * (100. / n + k)}
          for k, s in enumerate(('ddim', 'ancestral')) for n in (1, 4, 16)]
  rows += [{'model': 'student', 'sampler': s, 'num_steps': n, 'seed': 0,
            'num_samples': 1000, 'fd_digits': scale * (20. + n + k)}
           for k, s in enumerate(('ddim', 'stochastic')) for n in (1, 4)]
  files = {'eval/results.json': rows,
           'config.json': {'train': {'num_steps': num_steps}, 'seed': 0},
           'timing.json': {'machine': {'cpu': 'x'}, 'stages': {
               'teacher': {'seconds': seconds / 2},
               'run': {'seconds': seconds}}}}
  for path, data in files.items():
    with open(os.path.join(wd, path), 'w') as f:
      json.dump(data, f)
  return quickstart.read_run(wd)


def test_build_compares_with_the_run_before(tmp_path):
  before = _workdir(str(tmp_path), 'before', 1.0, 2000., 6000)
  after = _workdir(str(tmp_path), 'after', 1.05, 900., 3000)
  out = quickstart.build(after, before, 'old values')
  assert out['config_changes'] == {'train.num_steps': [6000, 3000]}
  assert out['ratios']['time'] == pytest.approx(0.45)
  for key in ('teacher_best', 'student_4_best', 'student_1_best'):
    assert out['ratios'][key] == pytest.approx(1.05)
  # The teacher's best: ddim at 16 steps, 100 / 16.
  assert out['run']['headline']['teacher_best'] == pytest.approx(
      (1.05 * 6.25, 'ddim', 16))
  assert out['run']['headline']['student_1_best'][1:] == ('ddim', 1)
  assert set(out['provenance']) >= {'commit', 'date', 'machine', 'command'}


def test_markdown_table_has_a_row_per_step_count(tmp_path):
  run = _workdir(str(tmp_path), 'run', 1.0, 100., 10)
  lines = quickstart.markdown_table(run['rows']).splitlines()
  assert lines[2] == '| 1 | 100.0 | 101.0 | 21.0 | 22.0 |'
  assert lines[4] == '| 16 | 6.2 | 7.2 |  |  |'
  assert len(lines) == 5


def test_teacher_candidates_keep_their_settings_and_teacher_rows(tmp_path):
  runs = [_workdir(str(tmp_path), name, scale, 100., steps)
          for name, scale, steps in (('a', 1.0, 3500), ('b', 2.0, 4000))]
  out = quickstart_teachers.build(runs, 'two at a time')
  assert [r['settings']['train.num_steps'] for r in out['runs']] == [3500,
                                                                       4000]
  assert out['runs'][0]['settings']['model.mean_type'] is None
  assert all(len(r['rows']) == 6 for r in out['runs'])  # teacher rows only
  assert out['runs'][1]['rows'][0]['fd_digits'] == pytest.approx(200.)
  assert 'two at a time' in out['provenance']['made_with']
