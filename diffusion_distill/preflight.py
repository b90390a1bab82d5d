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
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distill import checkpoints
from diffusion_distill import config_checks
from diffusion_distill import dataset_info
from diffusion_distill import input_pipeline
from diffusion_distill import stages as stages_lib
from diffusion_distill import teacher as teacher_lib
from diffusion_distill import layout
from diffusion_distill.config_checks import ConfigError
from diffusion_distill.config_checks import require

log = logging.getLogger(__name__)

INSTALL_TPU = 'pip install -c constraints.txt -e ".[tpu]"'
INSTALL_CUDA = 'pip install -c constraints.txt -e ".[cuda12]"'


@dataclasses.dataclass
class Plan:
  """What a run will do: its stages, rounds and batches, and its teachers.

  `teachers` maps a stage to its resolved teacher when that exists before
  the run (trained by an earlier run, or distill.teacher_checkpoint); a
  teacher this run trains is resolved when its stage starts. `phases` maps
  each stage that runs and has a plan to it (its phase_plan, from the
  teacher's own step count when it has one), and
  `student_steps` lists the step counts of the students they make.
  """
  stages: tuple
  teachers: dict
  num_devices: Optional[int] = None
  phases: dict = dataclasses.field(default_factory=dict)
  student_steps: list = dataclasses.field(default_factory=list)


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
  started = layout.started_stages(workdir, stages_lib.REGISTRY)
  for field, old, new in config_checks.resume_changes(saved, config, workdir,
                                                      started):
    log.info('config.%s changed since the last run in %s: %r -> %r', field,
             workdir, old, new)


def _stages_to_resume(config, workdir):
  """[(name, checkpoint dir, its stage's number of steps)] of the stages
  this run would resume: a stage's resume_dirs give the length, or leave it
  to the one its checkpoint recorded (it is frozen)."""
  out = []
  for name in config.stages:
    for label, directory, num_steps in stages_lib.REGISTRY[name].resume_dirs(
        config, workdir):
      if num_steps is not None:
        out.append((label, directory, num_steps))
        continue
      ckpt = checkpoints.Checkpointer(directory, read_only=True)
      if ckpt.latest_step() is not None:
        out.append((label, directory,
                    ckpt.restore_meta()['stage_num_steps']))
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


def stage_teacher(config, workdir, name, known=()):
  """Stage `name`'s teacher, resolved, or None: a stage that trains from
  the data, or whose optional teacher is not there. One of `known` (resolved
  teachers) when it is the same checkpoint, so that it is loaded once."""
  need = stages_lib.REGISTRY[name].teacher_need(config)
  if need is None or need.optional and not config.distill.teacher_checkpoint \
      and not teacher_lib.exists(config, workdir, need):
    return None
  teacher = teacher_lib.resolve(config, workdir, need)
  same = [t for t in known if t is not None and t.checkpoint_dir and
          t.checkpoint_dir == teacher.checkpoint_dir]
  return same[0] if same else teacher


def _resolve_teachers(config, workdir):
  """{stage: teacher} of the stages whose teacher exists before the run."""
  out = {}
  for name in config.stages:
    need = stages_lib.REGISTRY[name].teacher_need(config)
    if need is not None and not need.made_in(config):
      teacher = stage_teacher(config, workdir, name, out.values())
      if teacher is not None:
        out[name] = teacher
  return out


def check_sources(config, workdir):
  """The teachers and the models to evaluate: there, readable, of config's
  kind; returns {stage: teacher} (see Plan)."""
  teachers = _resolve_teachers(config, workdir)
  students_coming = any(stages_lib.REGISTRY[name].MAKES_STUDENTS
                        for name in config.stages)
  for name in config.stages:
    stages_lib.REGISTRY[name].check_sources(config, workdir,
                                            teachers.get(name),
                                            students_coming)
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
    for name in config.stages:
      stages_lib.REGISTRY[name].check_files(config)
    input_pipeline.check_data_available(config)
    teachers = check_sources(config, workdir)
  phases, student_steps = {}, []
  for name in config.stages:
    stage = stages_lib.REGISTRY[name]
    teacher = teachers.get(name)
    phase_plan = stage.phase_plan(
        config, teacher.num_sample_steps if teacher else None)
    if phase_plan is not None:
      phases[name] = phase_plan
      student_steps += stage.student_steps(phase_plan)
  return Plan(stages=tuple(config.stages), teachers=teachers,
              num_devices=num_devices, phases=phases,
              student_steps=student_steps)


def _batch(config, batch_size):
  info = dataset_info.of(config)
  return {'image': jax.ShapeDtypeStruct((batch_size,) + info.image_shape,
                                        jnp.float32),
          'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}


def _flop(x):
  return 'unknown' if not x else f'{x:.3g}'


def describe(config, workdir, plan):
  """The plan as text: stages, rounds, batches and FLOP, for --check."""
  lines = [f'plan for --workdir={workdir}: stages {", ".join(plan.stages)}']
  where = (f'{plan.num_devices} devices' if plan.num_devices else
           'devices not checked here')
  total = 0.
  for name, steps, batch, flops, detail, per in (
      stages_lib.REGISTRY[name].flops_line(config, plan, _batch)
      for name in plan.stages):
    per_step = per == 'step'
    unit = (f'steps at batch {batch}' if per_step else
            f'{per}s of one image')
    per_device = (f' ({batch // plan.num_devices} per device)'
                  if plan.num_devices and per_step else '')
    stage_flops = (flops or 0.) * steps
    total += stage_flops
    what = f'per {per}'
    lines.append(f'  {name}: {steps:,} {unit}{per_device}; {_flop(flops)} '
                 f'FLOP {what}, {_flop(stage_flops)} FLOP in all')
    lines += [f'    {line}' for line in detail]
  lines.append(f'  {where}; {_flop(total)} FLOP in all stages (XLA cost '
               'analysis of the compiled step)')
  for stage, teacher in plan.teachers.items():
    lines.append(f'  teacher of {stage}: {teacher.description}')
  lines.append('check passed: nothing was written')
  return '\n'.join(lines)
