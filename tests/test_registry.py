"""The stage registry: every stage is found there, and nowhere else by name.

A stage plugged into the registry alone (a module-like object, no other
file touched) is checked, planned, given its teacher and run by the driver;
no module outside stages/ names a stage.
"""

import ast
import os
import types

import pytest

from diffusion_distill import config_checks
from diffusion_distill import layout
from diffusion_distill import preflight
from diffusion_distill import stages as stages_lib
from diffusion_distill import teacher as teacher_lib
from diffusion_distill import train
from diffusion_distill.stages import teacher as teacher_stage
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'diffusion_distill')
# What each stage module declares (stages/__init__.py).
INTERFACE = ('NAME', 'SECTION', 'LOCAL_BATCH', 'MAKES_STUDENTS', 'RANGES',
             'FROZEN', 'check', 'check_files', 'teacher_need', 'check_sources', 'phase_plan',
             'student_steps', 'resume_dirs', 'directories', 'flops_line',
             'run')


def test_every_stage_module_declares_the_interface():
  assert list(stages_lib.REGISTRY) == [
      'teacher', 'guide', 'distill', 'consistency', 'eval']
  assert config_checks.stage_order() == tuple(stages_lib.REGISTRY)
  for name, stage in stages_lib.REGISTRY.items():
    missing = [a for a in INTERFACE if not hasattr(stage, a)]
    assert not missing, (name, missing)
    assert stage.NAME == name
    for field in (*stage.RANGES, *stage.FROZEN):
      assert field.split('.')[0] in ('train', 'guidance', 'distill',
                                     'consistency', 'eval'), field


def _string_constants(path):
  with open(path) as f:
    tree = ast.parse(f.read())
  return [(node.lineno, node.value) for node in ast.walk(tree)
          if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_module_outside_the_stages_names_a_stage():
  """Stage names appear as strings only in their own module; layout names
  the teacher's directory once (what a workdir given as a teacher means)."""
  names = set(stages_lib.REGISTRY)
  found = []
  for d, _, files in os.walk(PACKAGE):
    if os.path.relpath(d, PACKAGE).split(os.sep)[0] == 'stages':
      continue
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(d, f)
        found += [(os.path.relpath(path, REPO), line, value)
                  for line, value in _string_constants(path)
                  if value in names]
  assert found == [('diffusion_distill/layout.py',
                    _line_of('TEACHER = ', 'diffusion_distill/layout.py'),
                    'teacher')]
  assert teacher_stage.NAME == layout.TEACHER


def _line_of(text, rel):
  with open(os.path.join(REPO, rel)) as f:
    return next(i for i, line in enumerate(f, 1) if line.startswith(text))


def _probe_stage(calls):
  """A stage of students that distils the run's teacher, declared here
  only: it records what the driver gives it."""
  name = 'probe'

  def run(config, workdir, teacher):
    calls.append(('run', workdir, teacher.description))

  return types.SimpleNamespace(
      NAME=name, SECTION='consistency', LOCAL_BATCH=False,
      MAKES_STUDENTS=True,
      RANGES={'consistency.num_steps': (lambda v: v < 1000, 'use < 1000')},
      FROZEN=('consistency.learning_rate',),
      check=lambda config: calls.append(('check',)),
      check_files=lambda config: calls.append(('check_files',)),
      teacher_need=lambda config: teacher_lib.Need(maker=teacher_stage.NAME),
      check_sources=lambda config, workdir, teacher, coming: calls.append(
          ('check_sources', teacher.num_sample_steps, coming)),
      phase_plan=lambda config, n: [(n // 4, n, 3)],
      student_steps=lambda plan: [t for t, _, _ in plan],
      resume_dirs=lambda config, workdir: [],
      directories=lambda workdir: [],
      flops_line=lambda config, plan, batch: (
          name, 3, 8, 2., [f'plan {plan.phases[name]}'], 'step'),
      run=run)


@pytest.fixture
def probe(monkeypatch):
  calls = []
  registry = dict(stages_lib.REGISTRY)
  evaluation = registry.pop('eval')
  registry.update(probe=_probe_stage(calls), eval=evaluation)
  monkeypatch.setattr(stages_lib, 'REGISTRY', registry)
  return calls


def test_a_stage_in_the_registry_alone_is_checked_planned_and_run(
    probe, digits_dir, tmp_path):
  teacher_path = str(tmp_path / 'teacher')
  config = tiny.tiny_config(digits_dir, **{
      'stages': ('probe',), 'distill.teacher_checkpoint': teacher_path})
  tiny.paper_teacher(config, teacher_path, num_sample_steps=8)
  # Its range and place in the order are checked.
  config.consistency.num_steps = 2000
  with pytest.raises(config_checks.ConfigError, match='consistency.num_steps'):
    config_checks.check_config(config)
  config.consistency.num_steps = 4
  with pytest.raises(config_checks.ConfigError, match='in the order'):
    config_checks.check_config(tiny.tiny_config(
        digits_dir, stages=('eval', 'probe')))
  workdir = str(tmp_path / 'wd')
  plan = preflight.check(config, workdir)
  # Its teacher resolved (8 steps), its plan from it, evaluation's count.
  assert ('check_sources', 8, True) in probe and ('check_files',) in probe
  assert plan.phases == {'probe': [(2, 8, 3)]} and plan.student_steps == [2]
  text = preflight.describe(config, workdir, plan)
  assert '  probe: 3 steps at batch 8' in text and 'plan [(2, 8, 3)]' in text
  # Its batch divides over the devices.
  config.consistency.batch_size = 6
  with pytest.raises(config_checks.ConfigError,
                     match='consistency.batch_size'):
    config_checks.check_batch_divides(config, 4)
  config.consistency.batch_size = 8
  train.train_and_evaluate(config, workdir, plan)
  assert probe[-1] == ('run', workdir,
                       f'config.distill.teacher_checkpoint={teacher_path!r}')


def test_a_started_stage_freezes_its_own_fields(probe):
  del probe
  saved = {'consistency': {'learning_rate': 1e-4}}
  config = types.SimpleNamespace(to_json_best_effort=lambda: (
      '{"consistency": {"learning_rate": 0.001}}'))
  with pytest.raises(config_checks.ConfigError, match='learning_rate'):
    config_checks.resume_changes(saved, config, '/wd', {'probe'})
  assert config_checks.resume_changes(saved, config, '/wd', {'distill'}) == [
      ('consistency.learning_rate', 1e-4, 1e-3)]


def test_a_teacher_trained_here_is_the_one_every_stage_uses(digits_dir):
  """With 'teacher' in the run, a distill.teacher_checkpoint elsewhere would
  be ignored by each stage that needs a teacher: the guide stage too (the
  stage strings listed only the rounds, consistency and evaluation, so a
  guide stage trained from the named checkpoint instead)."""
  for stages in (('teacher', 'guide'), ('teacher', 'distill'),
                 ('teacher', 'eval')):
    config = tiny.tiny_config(digits_dir, **{
        'stages': stages, 'distill.teacher_checkpoint': '/elsewhere'})
    with pytest.raises(config_checks.ConfigError,
                       match="drop 'teacher' from config.stages"):
      config_checks.check_teacher_choice(config, '/wd')
  config = tiny.tiny_config(digits_dir, **{
      'stages': ('teacher',), 'distill.teacher_checkpoint': '/elsewhere'})
  config_checks.check_teacher_choice(config, '/wd')  # Nothing uses it.
  config.stages = ('teacher', 'distill')
  config.distill.teacher_checkpoint = '/wd/teacher'
  config_checks.check_teacher_choice(config, '/wd')  # The one trained here.
