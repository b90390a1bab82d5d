"""Every config field a stage reads reaches what the built stage computes.

Each stage (teacher, guide, the rounds of an unguided and of a guided
teacher, the consistency phases, evaluation) is built exactly as train.py builds it, from a tiny
config. A field that acts (tests/stage_fields.py), set alone to another
value, must change one component of the built stage:

  step     the compiled step's program: the jaxpr of the pmapped step
           (loss, optimizer, learning-rate schedule, EMA), with its constants
  params   the shapes of the parameters it starts from (and of the teacher's)
  rng      the stage's base key
  data     its first batch
  loop     its length, logging, checkpoint and sample-grid intervals
  sampler  what its sample grids are drawn with
  rows     evaluation: the rows it measures and how it samples each
  metric   evaluation: the metric it measures with
  reference  evaluation: the reference statistics

A field that does not act, set to another value, must change none of them.
Parameters are built as shapes only (models.init_params would compile an
initialisation per config); `rng` stands for the values they start from.
"""

import dataclasses
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from diffusion_distill import config_checks
from diffusion_distill import dataset_info
from diffusion_distill.stages import distill
from diffusion_distill.stages import evaluate
from diffusion_distill.stages import guide as guide_stage
from diffusion_distill import models
from diffusion_distill import teacher as teacher_lib
from diffusion_distill.stages import teacher as teacher_stage
from diffusion_distill.evaluation import metrics as metrics_lib
from diffusion_distill.stages import consistency
from tests import stage_fields
from tests import tiny

TRAINING_COMPONENTS = ('step', 'params', 'rng', 'data', 'loop', 'sampler')
EVAL_COMPONENTS = ('rows', 'metric', 'reference')
STUDENTS = ((2, '/students/student_00002'), (1, '/students/student_00001'))


def _fields(tree, prefix=''):
  out = []
  for key, value in tree.items():
    if hasattr(value, 'keys'):
      out += _fields(value, f'{prefix}{key}.')
    else:
      out.append(prefix + key)
  return out


ALL_FIELDS = tuple(_fields(base.get_config()))


def base_config(stage, data_dir, overrides=()):
  """The tiny config each stage is built from; `overrides`, ((field,
  value), ...), as a field of stage_fields.acts asks."""
  config = tiny.tiny_config(data_dir, **{'dataset.class_conditional': True})
  if stage.startswith('distill'):
    config.distill.last_rounds_multiplier = 2  # So that long_rounds_... acts.
  if stage == 'consistency':
    config.stages = ('consistency',)
    config.model.mean_type = 'v'
  if stage in ('guide', 'distill_guided', 'eval'):
    config.guidance.label_dropout = 0.1
    config.eval.guidance = (0.5, 1.0) if stage == 'eval' else (1.0,)
  for field, value in overrides:
    config = with_field(config, field, value)
  return config


def _get(config, field):
  section, _, name = field.rpartition('.')
  return (config[section] if section else config)[name]


def with_field(config, field, value):
  config = config.copy_and_resolve_references()
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  return config


def _abstract_params(config):
  return models.abstract_params(models.create_model(config), config)


def build(stage, config, workdir):
  """The stage as train.py builds it: [trainer.Stage], or for 'eval' its
  rows, from a teacher whose parameters are shapes."""
  if stage == 'teacher':
    return [teacher_stage.teacher_stage(config, workdir)]
  if stage == 'guide':
    teacher = teacher_lib.Teacher('the wiring teacher', config, None,
                                  params=_abstract_params(config))
    return [guide_stage.guide_stage(config, workdir, teacher)]
  if stage.startswith('distill'):
    guided = stage == 'distill_guided'
    teacher_config = models.student_config(config, guided) if guided else config
    teacher = teacher_lib.Teacher('the wiring teacher', teacher_config, None,
                                  params=_abstract_params(teacher_config),
                                  takes_guidance=guided)
    rounds = distill.build_rounds(config, workdir, teacher)
    return [rounds.stage(i, teacher.params) for i in range(len(rounds.plan))]
  if stage == 'consistency':
    teacher = teacher_lib.Teacher('the wiring teacher', config, None,
                                  params=_abstract_params(config))
    phases = consistency.build(config, workdir, teacher)
    return [phases.stage(i, teacher.params, teacher.params)
            for i in range(len(phases.plan))]
  teacher = teacher_lib.Teacher('the wiring teacher', config, None)
  return evaluate.plan_rows(config, teacher, STUDENTS)


def _digest(*arrays):
  h = hashlib.sha256()
  for a in arrays:
    a = np.asarray(a)
    h.update(str((a.shape, a.dtype)).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _shapes(tree):
  return tuple((jax.tree_util.keystr(path), tuple(np.shape(x)),
                str(jnp.result_type(x)))
               for path, x in jax.tree_util.tree_flatten_with_path(tree)[0])


def _step_program(stage):
  """The jaxpr of the stage's pmapped step on one device, with the values of
  the constants it closes over."""
  data = stage.make_iterator
  info = dataset_info.get(data.config.dataset.name)
  k = stage.step.steps_per_dispatch
  lead = (1,) if k == 1 else (1, k)
  per_device = data.batch_size // jax.device_count()
  batch = {'image': jax.ShapeDtypeStruct(lead + (per_device,) +
                                         info.image_shape, jnp.float32),
           'label': jax.ShapeDtypeStruct(lead + (per_device,), jnp.int32)}
  state = jax.eval_shape(lambda p: stage.step.init_state(p, stage.rng),
                         stage.init_params)
  one = lambda x: jax.ShapeDtypeStruct((1,) + tuple(np.shape(x)),
                                       jnp.result_type(x))
  closed = jax.make_jaxpr(lambda s, b, e: stage.step(s, b, e))(
      jax.tree.map(one, state), batch, jax.tree.map(one, stage.extra))
  return (hashlib.sha256(str(closed.jaxpr).encode()).hexdigest(),
          _digest(*closed.consts))


def _sampler(stage):
  s = stage.sampler
  return (repr(s.model), s.mean_type, s.schedule, s.image_shape,
          s.num_classes, s.null_label, s.guidance_range, s.clip_x,
          s.null_class_untrained, s.num_steps, s.default_num_steps)


def _loop(stage, workdir):
  scalars = tuple(x for x in stage.extra if isinstance(x, (int, np.integer)))
  return (stage.name, os.path.relpath(stage.directory, workdir),
          stage.num_steps, dataclasses.astuple(stage.periodic),
          stage.grid_num_steps, stage.progress, tuple(map(int, scalars)))


def _first_batch(stage):
  batch = next(iter(stage.make_iterator(0)))
  return _digest(batch['image'], batch['label'])


def _training_component(stages, component, workdir):
  if component == 'step':
    programs = {}  # Rounds of one length share their step.
    for s in stages:
      if id(s.step) not in programs:
        programs[id(s.step)] = _step_program(s)
    return tuple(programs.values())
  per_stage = {
      'params': lambda s: (_shapes(s.init_params), _shapes(s.extra)),
      'rng': lambda s: _digest(jax.random.key_data(s.rng)
                               if jnp.issubdtype(s.rng.dtype,
                                                 jax.dtypes.prng_key)
                               else s.rng),
      'data': _first_batch,
      'loop': lambda s: _loop(s, workdir),
      'sampler': _sampler,
  }[component]
  return tuple(per_stage(s) for s in stages)


def _eval_component(config, rows, component, tmp_dir):
  if component == 'rows':
    return tuple(dataclasses.astuple(dataclasses.replace(
        r, source=getattr(r.source, 'description', r.source))) for r in rows)
  try:
    metric = metrics_lib.make_metric(config.dataset.name,
                                     config.eval.inception_weights)
  except FileNotFoundError as e:  # An Inception metric without weights.
    return ('FileNotFoundError', str(e))
  if component == 'metric':
    return type(metric).__name__
  stats = evaluate.reference_stats(config, metric, tmp_dir)
  return _digest(stats.mean(), stats.cov())


class Builds:
  """Builds stages and their components, each baseline once."""

  def __init__(self, data_dir, tmp_dir):
    self.data_dir, self.tmp_dir = data_dir, tmp_dir
    self.workdir = os.path.join(tmp_dir, 'wd')
    self._baselines = {}
    self._count = 0

  def components(self, stage, config, names):
    built = build(stage, config, self.workdir)
    if stage == 'eval':
      self._count += 1  # A fresh directory: reference stats are cached.
      where = os.path.join(self.tmp_dir, f'eval{self._count}')
      os.makedirs(where)
      return {c: _eval_component(config, built, c, where) for c in names}
    return {c: _training_component(built, c, self.workdir) for c in names}

  def baseline(self, stage, component, overrides=()):
    key = (stage, component, overrides)
    if key not in self._baselines:
      config = base_config(stage, self.data_dir, overrides)
      self._baselines[key] = self.components(stage, config,
                                             (component,))[component]
    return self._baselines[key]


@pytest.fixture(scope='module')
def builds(digits_dir, tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(models, 'init_params',
                  lambda model, config, rng: models.abstract_params(
                      model, config))
    yield Builds(digits_dir, str(tmp_path_factory.mktemp('wiring')))


def _components(stage):
  return EVAL_COMPONENTS if stage == 'eval' else TRAINING_COMPONENTS


@pytest.mark.parametrize('stage', stage_fields.STAGES)
def test_every_field_is_placed_once(stage):
  places = {'acts': set(stage_fields.acts(stage)),
            'inert': set(stage_fields.inert(stage)),
            'refused': set(stage_fields.refused(stage)),
            'one choice': set(stage_fields.ONE_CHOICE)}
  for name, fields in places.items():
    unknown = fields - set(ALL_FIELDS)
    assert not unknown, f'{stage}: {name} lists fields base.py lacks: {unknown}'
  names = list(places)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      both = places[a] & places[b]
      assert not both, f'{stage}: {sorted(both)} both {a} and {b}'
  placed = set().union(*places.values())
  missing = [f for f in ALL_FIELDS if f not in placed]
  assert not missing, (
      f'{stage}: configs/base.py fields in no list of tests/stage_fields.py: '
      f'{missing}; add each where it belongs, with a value that shows it')
  for field, (component, *_) in stage_fields.acts(stage).items():
    assert component in _components(stage), (field, component)


def test_fields_of_one_choice_have_one_choice():
  for field in stage_fields.ONE_CHOICE:
    assert len(config_checks._CHOICES[field]) == 1, (  # pylint: disable=protected-access
        f'{field} now has several values: move it to the fields that act')


def _acting_cases():
  return [(stage, field) for stage in stage_fields.STAGES
          for field in stage_fields.acts(stage)]


@pytest.mark.parametrize('stage,field', _acting_cases())
def test_field_changes_what_the_stage_computes(builds, stage, field):
  component, value, *rest = stage_fields.acts(stage)[field]
  overrides = tuple(sorted(rest[0].items())) if rest else ()
  before = base_config(stage, builds.data_dir, overrides)
  config_checks.check_config(before)
  config = with_field(before, field, value)
  config_checks.check_config(config)  # A valid change, made alone.
  changed = builds.components(stage, config, (component,))[component]
  assert changed != builds.baseline(stage, component, overrides), (
      f'{stage}: config.{field}={value!r} (from {_get(before, field)!r}) '
      f"does not change the built stage's {component}: the value never "
      'reaches it')


@pytest.mark.parametrize('stage', stage_fields.STAGES)
def test_fields_that_do_not_act_change_nothing(builds, stage):
  """All of them at once; on a change, each alone names the culprits."""
  others = {f: v for f, (_, v) in stage_fields.inert(stage).items()
            if v is not stage_fields.UNCHECKED}
  config = base_config(stage, builds.data_dir)
  for field, value in others.items():
    config = with_field(config, field, value)
  config_checks.check_config(config)
  names = _components(stage)
  got = builds.components(stage, config, names)
  if all(got[c] == builds.baseline(stage, c) for c in names):
    return
  culprits = []
  for field, value in others.items():
    one = builds.components(
        stage, with_field(base_config(stage, builds.data_dir), field, value),
        names)
    culprits += [f'config.{field}={value!r} changes its {c}' for c in names
                 if one[c] != builds.baseline(stage, c)]
  pytest.fail(f'{stage}: fields listed as not read act: {culprits}')


@pytest.mark.parametrize('stage', stage_fields.STAGES)
def test_refused_changes_are_one_line(digits_dir, stage):
  for field, value in stage_fields.refused(stage).items():
    config = with_field(base_config(stage, digits_dir), field, value)
    with pytest.raises(config_checks.ConfigError) as e:
      config_checks.check_config(config)
    assert '\n' not in str(e.value), field
