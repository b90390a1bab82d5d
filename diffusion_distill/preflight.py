"""Everything checked before any work, and the plan of the run.

`check(config, workdir)` runs every check that needs no training: the
config (config_checks), the division of the batches over the devices, the
workdir (writable; a resumed run's config unchanged where it matters), the
Inception weights, the data set, the teacher and what evaluation will read.
It returns the Plan, with the resolved teacher, that train_and_evaluate
follows. With `target=False` it skips what only the machine that runs the
work can check (devices, workdir, weights, data, checkpoints): what
launchers run on a laptop before they create anything. Each failure is one
line: ConfigError (a config or workdir mistake) or the error of what is
missing (CheckpointError, DataNotFoundError, FileNotFoundError).
"""

import dataclasses
import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distill import checkpoints
from diffusion_distill import config_checks
from diffusion_distill import dataset_info
from diffusion_distill import distill
from diffusion_distill import guide_stage
from diffusion_distill import input_pipeline
from diffusion_distill import models
from diffusion_distill import stages as stages_lib
from diffusion_distill import teacher as teacher_lib
from diffusion_distill import teacher_stage
from diffusion_distill import layout
from diffusion_distill.config_checks import ConfigError
from diffusion_distill.config_checks import require
from diffusion_distill.evaluation import inception

log = logging.getLogger(__name__)

INSTALL_TPU = 'pip install -c constraints.txt -e ".[tpu]"'
INSTALL_CUDA = 'pip install -c constraints.txt -e ".[cuda12]"'


@dataclasses.dataclass
class Plan:
  """What a run will do: its stages, rounds and batches, and its teachers.

  `teachers` maps a stage ('guide', 'distill', 'eval') to its resolved
  teacher when that exists before the run (trained by an earlier run, or
  distill.teacher_checkpoint); a teacher this run trains is resolved when
  its stage starts. `rounds` is [(student steps, updates)], from the
  teacher's own step count when it has one; `phases` maps each registered
  stage that runs (stages/) to its plan, [(student steps, teacher grid,
  updates)].
  """
  stages: tuple
  teachers: dict
  rounds: list
  num_devices: Optional[int] = None
  phases: dict = dataclasses.field(default_factory=dict)


def devices_line():
  """The backend, device kind and counts, for the first lines of the log."""
  devices = jax.devices()
  return (f'JAX backend {jax.default_backend()}, device kind '
          f'{devices[0].device_kind}, {jax.local_device_count()} local and '
          f'{jax.device_count()} global devices, process '
          f'{jax.process_index()} of {jax.process_count()}')


def check_backend(config, allow_cpu=False):
  """Stops a paper-scale config on a CPU-only JAX (digits is meant for CPUs)."""
  if allow_cpu or config.dataset.name == 'digits':
    return
  if jax.default_backend() == 'cpu':
    raise ConfigError(
        f'config.dataset.name={config.dataset.name!r} would train on the CPU: '
        'this JAX has no TPU or GPU backend; install the accelerator\'s JAX '
        f'with `{INSTALL_TPU}` (TPU VM) or `{INSTALL_CUDA}` (NVIDIA GPU), or '
        'pass --allow_cpu to run on the CPU anyway')


def check_workdir(workdir):
  """Raises ConfigError unless `workdir` is or can become a writable dir.

  Creates nothing that stays: the workdir itself is made later, once every
  other check has passed (checkpoints.unwritable).
  """
  reason = checkpoints.unwritable(workdir)
  if reason:
    raise ConfigError(f'--workdir={workdir} cannot be used: {reason}; '
                      'choose another --workdir')


def check_resume(config, workdir):
  """A re-run may not change what the workdir's stages trained; logs what
  else changed."""
  saved = layout.saved_config(workdir)
  if saved is None:
    return
  started = layout.started_stages(workdir)
  for field, old, new in config_checks.resume_changes(saved, config, workdir,
                                                      started):
    log.info('config.%s changed since the last run in %s: %r -> %r', field,
             workdir, old, new)


def _stages_to_resume(config, workdir):
  """[(name, checkpoint dir, its stage's number of steps)] of the stages
  this run would resume: the teacher's length is this config's, a stage 1's
  and a round's the one their checkpoints recorded (it is frozen)."""
  stages, out = tuple(config.stages), []
  if 'teacher' in stages:
    out.append(('teacher', layout.checkpoint_dir(layout.teacher_dir(workdir)),
                config.train.num_steps))
  dirs = []
  if 'guide' in stages:
    dirs.append(('guide', layout.checkpoint_dir(layout.guide_dir(workdir))))
  if 'distill' in stages:
    dirs += [(f'round {n}', directory) for n, directory in
             layout.round_checkpoint_dirs(workdir)]
  for name, stage in stages_lib.REGISTRY.items():
    if name in stages:
      dirs += stage.resume_dirs(workdir)
  for name, directory in dirs:
    ckpt = checkpoints.Checkpointer(directory, read_only=True)
    if ckpt.latest_step() is not None:
      out.append((name, directory, ckpt.restore_meta()['stage_num_steps']))
    ckpt.close()
  return out


def check_dispatch_resume(config, workdir):
  """A stage resumes at its latest checkpoint, so that step must be a
  multiple of train.steps_per_dispatch unless the stage is finished (the
  trainer's own check would stop it after config.json is written)."""
  k = config.train.steps_per_dispatch
  if k == 1:
    return
  for name, directory, num_steps in _stages_to_resume(config, workdir):
    step = checkpoints.Checkpointer(directory, read_only=True).latest_step()
    require(step is None or not step % k or step >= num_steps,
            'train.steps_per_dispatch', k,
            f'the {name} checkpoint at step {step} in {directory} is not a '
            'multiple of it: resume with a train.steps_per_dispatch that '
            f'divides {step}')


def _check_eval_teacher(config, teacher):
  """A student as the 'teacher' of evaluation is run at its own steps only."""
  if teacher.is_student:
    own = teacher.num_sample_steps
    steps = tuple(int(n) for n in config.eval.sample_steps)
    require(all(n == own for n in steps), 'eval.sample_steps', steps,
            f'{teacher.description} is a student distilled for {own} '
            'sampling steps (not a teacher to sweep over step counts): set '
            f'--config.eval.sample_steps="({own},)" or point '
            'distill.teacher_checkpoint to an undistilled teacher')


def _check_students(config, workdir):
  """Finished students that evaluation will read must be of config's data
  (and, evaluated with guidance, of a teacher that trained its null class)."""
  students = layout.finished_students(workdir)
  for n, student_dir in students:
    meta = checkpoints.Checkpointer(student_dir, read_only=True).restore_meta()
    if any(config.eval.guidance) and dataset_info.null_class_untrained(
        layout.config_from_meta(meta)):
      raise checkpoints.CheckpointError(
          f'the student distilled for {n} steps in {student_dir} cannot be '
          f'evaluated at config.eval.guidance={tuple(config.eval.guidance)}: '
          + dataset_info.UNTRAINED_NULL_CLASS)
    name = meta.get('dataset', {}).get('name', config.dataset.name)
    if name != config.dataset.name:
      raise checkpoints.CheckpointError(
          f'the student distilled for {n} steps in {student_dir} was trained '
          f'with dataset.name={name!r} but config.dataset.name='
          f'{config.dataset.name!r}, whose metric and reference images '
          f'evaluation uses: set --config.dataset.name={name}')
  return students


def _resolve_teachers(config, workdir):
  """{stage: teacher} of the stages whose teacher exists before the run."""
  stages = tuple(config.stages)
  out = {}
  guided = dataset_info.has_null_class(config)
  if 'guide' in stages and 'teacher' not in stages:
    out['guide'] = teacher_lib.resolve(config, workdir, 'guide')
  trained_here = 'guide' in stages if guided else 'teacher' in stages
  if 'distill' in stages and not trained_here:
    out['distill'] = teacher_lib.resolve(config, workdir, 'distill')
  for name in stages_lib.REGISTRY:
    if name in stages and 'teacher' not in stages:
      out[name] = teacher_lib.resolve(config, workdir, name)
  if 'eval' in stages and 'teacher' not in stages and (
      config.distill.teacher_checkpoint or
      teacher_lib.exists(config, workdir, 'eval')):
    teacher = teacher_lib.resolve(config, workdir, 'eval')
    same = [t for t in out.values() if t.checkpoint_dir and
            t.checkpoint_dir == teacher.checkpoint_dir]
    out['eval'] = same[0] if same else teacher
  return out


def _check_teacher_to_resume(config, workdir):
  """A guided teacher of the workdir whose checkpoints never trained its
  null class is neither resumed nor used: it is retrained."""
  if 'teacher' not in config.stages or not dataset_info.has_null_class(
      config):
    return
  directory = layout.stage_checkpoint_dir(layout.teacher_dir(workdir))
  if directory is None:
    return
  meta = checkpoints.Checkpointer(directory, read_only=True).restore_meta()
  if dataset_info.null_class_untrained(layout.config_from_meta(meta)):
    raise checkpoints.CheckpointError(
        f'the guided teacher in {directory} cannot be resumed or guided: '
        + dataset_info.UNTRAINED_NULL_CLASS)


def check_sources(config, workdir):
  """The teachers and the models to evaluate: there, readable, of config's
  kind; returns {stage: teacher} (see Plan)."""
  stages = tuple(config.stages)
  _check_teacher_to_resume(config, workdir)
  teachers = _resolve_teachers(config, workdir)
  d = config.distill
  teacher = teachers.get('distill')
  if teacher is not None and teacher.num_sample_steps:
    n = teacher.num_sample_steps
    require(config_checks.halves_to(n, d.end_num_steps),
            'distill.end_num_steps', d.end_num_steps,
            f'{teacher.description} samples in {n} steps, where distillation '
            f'starts: use {n} divided by a power of two')
  for name, stage in stages_lib.REGISTRY.items():
    if name in stages:
      stage.check_teacher(config, teachers.get(name))
  if 'eval' in stages and 'teacher' not in stages:
    if teachers.get('eval') is not None:
      _check_eval_teacher(config, teachers['eval'])
    students = _check_students(config, workdir)
    distills = ('distill', *stages_lib.REGISTRY)
    if 'eval' not in teachers and not students and not any(
        s in stages for s in distills):
      raise checkpoints.CheckpointError(
          f'nothing to evaluate: --workdir={workdir} has no teacher checkpoint '
          'and no finished student, and config.distill.teacher_checkpoint is '
          'unset; add \'teacher\' or \'distill\' to config.stages, or set '
          '--config.distill.teacher_checkpoint=PATH')
  return teachers


def check(config, workdir, *, target=True) -> Plan:
  """Runs every check that needs no training; returns the plan. See module."""
  config_checks.check_config(config)
  config_checks.check_teacher_choice(config, workdir)
  teachers, num_devices = {}, None
  if target:
    num_devices = jax.device_count()
    config_checks.check_batch_divides(config, num_devices,
                                      jax.local_device_count())
    check_workdir(workdir)
    # Before the resume check: what the folder gives is part of the config.
    input_pipeline.resolve_image_folder(config)
    check_resume(config, workdir)
    check_dispatch_resume(config, workdir)
    if 'eval' in config.stages and config.dataset.name != 'digits':
      inception.load_inception_params(config.eval.inception_weights or None)
    input_pipeline.check_data_available(config)
    teachers = check_sources(config, workdir)
  rounds = []
  if 'distill' in config.stages:
    teacher = teachers.get('distill')
    rounds = distill.config_round_plan(
        config, teacher.num_sample_steps if teacher else None)
  phases = {}
  for name, stage in stages_lib.REGISTRY.items():
    if name in config.stages:
      teacher = teachers.get(name)
      phases[name] = stage.phase_plan(
          config, teacher.num_sample_steps if teacher else None)
  return Plan(stages=tuple(config.stages), teachers=teachers, rounds=rounds,
              num_devices=num_devices, phases=phases)


def _batch(config, batch_size):
  info = dataset_info.of(config)
  return {'image': jax.ShapeDtypeStruct((batch_size,) + info.image_shape,
                                        jnp.float32),
          'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}


def _forward_flops(config, model, params):
  """XLA's FLOP count of one network evaluation of one image (eval mode)."""
  batch = _batch(config, 1)
  lowered = jax.jit(lambda p, x, y: model.apply(
      {'params': p}, x, jnp.zeros((1,)), y, train=False)).lower(
          params, batch['image'], batch['label'])
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops') or 0.)


def _stage_lines(config, plan):
  """(name, steps, batch, FLOP per step, detail lines) of each stage."""
  model = models.create_model(config)
  params = models.abstract_params(model, config)
  out = []
  if 'teacher' in plan.stages:
    t = config.train
    step = teacher_stage.make_teacher_step(config, model)
    out.append(('teacher', t.num_steps, t.batch_size,
                step.flops(params, _batch(config, t.batch_size)), []))
  if 'guide' in plan.stages:
    g = config.guidance
    student = models.student_config(config, takes_guidance=True)
    student_model = models.create_model(student)
    step = guide_stage.make_guide_step(student, student_model, model)
    out.append(('guide', g.num_steps, g.batch_size, step.flops(
        models.abstract_params(student_model, student),
        _batch(config, g.batch_size), params), []))
  if 'distill' in plan.stages:
    d = config.distill
    rounds = distill.Rounds(config, '', plan.rounds,
                            takes_guidance=dataset_info.has_null_class(config))
    student_params = models.abstract_params(rounds.model, rounds.config)
    updates = sum(u for _, u in plan.rounds)
    flops = rounds.step(plan.rounds[0][1]).flops(
        student_params, _batch(config, d.batch_size), student_params,
        np.int32(1))
    detail = [f'round {i + 1}: {2 * n} -> {n} sampling steps, {u:,} updates'
              for i, (n, u) in enumerate(plan.rounds)]
    out.append(('distill', updates, d.batch_size, flops, detail))
  for name, phases in plan.phases.items():
    out.append(stages_lib.REGISTRY[name].flops_line(config, phases, _batch))
  if 'eval' in plan.stages:
    out.append(_eval_line(config, plan, model, params))
  return out


def _eval_line(config, plan, model, params):
  """Network evaluations of one image in all of evaluation's rows."""
  e = config.eval
  ws = ([float(w) for w in e.guidance]
        if dataset_info.has_null_class(config) else [0.])
  # A guided teacher evaluates twice per step at w != 0; a student once.
  teacher = sum(2 if w else 1 for w in ws) * len(e.teacher_samplers) * sum(
      e.sample_steps)
  student_steps = sum(n for n, _ in plan.rounds) + sum(
      t for phases in plan.phases.values() for t, _, _ in phases)
  students = len(ws) * len(e.student_samplers) * student_steps
  evals = teacher + students
  return ('eval', evals * e.num_samples * e.num_seeds, 1,
          _forward_flops(config, model, params),
          [f'{evals} network evaluations per sample, {e.num_samples:,} '
           f'samples x {e.num_seeds} seed(s)'])


def _flop(x):
  return 'unknown' if not x else f'{x:.3g}'


def describe(config, workdir, plan):
  """The plan as text: stages, rounds, batches and FLOP, for --check."""
  lines = [f'plan for --workdir={workdir}: stages {", ".join(plan.stages)}']
  where = (f'{plan.num_devices} devices' if plan.num_devices else
           'devices not checked here')
  total = 0.
  for name, steps, batch, flops, detail in _stage_lines(config, plan):
    unit = ('network evaluations of one image' if name == 'eval' else
            f'steps at batch {batch}')
    per_device = (f' ({batch // plan.num_devices} per device)'
                  if plan.num_devices and name != 'eval' else '')
    stage_flops = (flops or 0.) * steps
    total += stage_flops
    what = 'per network evaluation' if name == 'eval' else 'per step'
    lines.append(f'  {name}: {steps:,} {unit}{per_device}; {_flop(flops)} '
                 f'FLOP {what}, {_flop(stage_flops)} FLOP in all')
    lines += [f'    {line}' for line in detail]
  lines.append(f'  {where}; {_flop(total)} FLOP in all stages (XLA cost '
               'analysis of the compiled step)')
  for stage, teacher in plan.teachers.items():
    lines.append(f'  teacher of {stage}: {teacher.description}')
  lines.append('check passed: nothing was written')
  return '\n'.join(lines)
