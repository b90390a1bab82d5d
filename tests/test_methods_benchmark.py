"""benchmarks/methods.py: each method's command sets what the benchmark
says it does (equal updates at one batch), and the table from its rows."""

import json
import os

from absl import flags
from ml_collections import config_flags
import pytest

from benchmarks import methods
from configs import base
from diffusion_distill import cli
from diffusion_distill.stages import distill
from diffusion_distill import preflight
from diffusion_distill.stages import consistency


def _config_of(cmd):
  """The config main.py would run for `cmd` (its flags parsed as main.py
  parses them)."""
  argv = ['main.py', *cmd[2:]]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Config file.',
                                  flag_values=values, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Workdir.', flag_values=values)
  cli.parse_flags(argv, values)
  cli.check_known_fields(values.config, base.get_config(), argv)
  return values.config


@pytest.mark.parametrize('method', list(methods.METHODS))
def test_each_method_runs_the_same_updates_at_one_batch(method, tmp_path):
  cmd = methods.command(method, 2, '/teacher', str(tmp_path / 'wd'))
  config = _config_of(cmd)
  preflight.check(config, str(tmp_path / 'wd'), target=False)
  assert config.seed == 2 and config.distill.teacher_checkpoint == '/teacher'
  assert tuple(config.eval.student_samplers) == ('ddim',)
  for field, value in methods.METHODS[method][1].items():
    section, name = field.split('.')
    assert config[section][name] == value, field
  if method == 'pd':
    assert tuple(config.stages) == ('distill', 'eval')
    updates = sum(u for _, u in distill.config_round_plan(config))
    batch = config.distill.batch_size
  else:
    assert tuple(config.stages) == ('consistency', 'eval')
    updates = sum(u for _, _, u in consistency.phase_plan(config))
    batch = config.consistency.batch_size
  assert (updates, batch) == (methods.updates_of(method), 64)
  assert updates == methods.UPDATES or method in methods.VARIANTS


def _fake_run(root, method, seed, fds):
  workdir = os.path.join(root, f'{method}_seed{seed}')
  os.makedirs(os.path.join(workdir, 'eval'))
  rows = [{'model': 'teacher', 'sampler': 'ddim', 'num_steps': 1,
           'seed': seed, 'num_samples': 10, 'fd_digits': 999.}] + [
               {'model': 'student', 'sampler': 'ddim', 'num_steps': n,
                'seed': seed, 'num_samples': 10, 'fd_digits': fd}
               for n, fd in fds.items()]
  for name, content in (('config.json', {}), ('timing.json', {'stages': {}}),
                        (os.path.join('eval', 'results.json'), rows)):
    with open(os.path.join(workdir, name), 'w') as f:
      json.dump(content, f)
  return workdir


def test_rows_and_the_table_over_seeds(tmp_path):
  rows = []
  for seed, fd in ((0, 10.), (1, 14.)):
    rows += methods.rows_of('cd', _fake_run(str(tmp_path), 'cd', seed,
                                            {1: fd}))
    rows += methods.rows_of('pd', _fake_run(str(tmp_path), 'pd', seed,
                                            {2: 5., 1: fd + 10.}))
  assert {tuple(sorted(r)) for r in rows} == {(
      'fd_digits', 'method', 'network_evaluations', 'num_steps', 'seed',
      'updates')}
  assert len(rows) == 6  # The teacher's rows are left out.
  s = methods.summary(rows)
  assert s['cd'] == {1: (12., 2., 2)}
  assert s['pd'][1] == (22., 2., 2) and s['pd'][2] == (5., 0., 2)
  table = methods.markdown_table(rows).splitlines()
  assert table[0] == '| method | 1 steps | 2 steps |'
  assert table[2] == '| cd | 12.0 ± 2.0 |  |'
  assert table[3] == '| pd | 22.0 ± 2.0 | 5.0 ± 0.0 |'
  methods.plot(rows, str(tmp_path / 'plot.png'))
  assert os.path.getsize(tmp_path / 'plot.png') > 1000
