"""Multistep consistency distillation as a stage (docs/method.md, section 8).

One loss covers CD (phases (1,)), multistep CD (phases (T,)) and TRACT
(decreasing phases ending at 1): losses.consistency_loss. Each phase is a
trainer.Stage that trains a student for T sampling steps, starting from the
previous phase's student (the first from the teacher), with a fresh Adam
whose learning rate decays linearly to 0 over consistency.num_steps
updates, and a target network, a moving average of the student at
consistency.target_decay (0: its stop-gradient copy). A phase's teacher is
the previous phase's student on its own grid of N = the previous T steps;
the first phase's is the run's teacher on a grid of
consistency.teacher_num_steps (or the teacher's own count, for a distilled
teacher). Students sample with DDIM on their T-step grid, like the rounds',
and live in WORKDIR/consistency/student_NNNNN, where evaluation and
sample.py find them.

This module is the stage: its config section and checks, its teacher, its
loss, its directories, its phases and how it runs. The registry
(stages/__init__.py) lists it for the driver and the checks.
"""

import functools

import jax
import numpy as np
import optax

from diffusion_distill import dataset_info
from diffusion_distill import diffusion
from diffusion_distill import field_checks
from diffusion_distill import inference
from diffusion_distill import input_pipeline
from diffusion_distill import layout
from diffusion_distill import losses
from diffusion_distill import models
from diffusion_distill import schedules
from diffusion_distill import teacher as teacher_lib
from diffusion_distill import trainer
from diffusion_distill.field_checks import require
from diffusion_distill.stages import base
from diffusion_distill.stages import distill as distill_stage
from diffusion_distill.stages import teacher as teacher_stage

NAME = 'consistency'
SECTION = 'consistency'
LOCAL_BATCH = False
MAKES_STUDENTS = True
# Output types whose x_hat -> z as sigma -> 0, the consistency function's
# boundary condition (docs/method.md, section 8).
MEAN_TYPES = ('v', 'both')
# The stage's keys and data order, apart from the teacher's (0), the
# rounds' (their step counts) and stage 1's (2**30).
_STREAM = 2**29

RANGES = {
    'consistency.teacher_num_steps': (field_checks.count(1),
                                      field_checks.COUNT),
    'consistency.num_steps': (field_checks.count(1), field_checks.COUNT),
    'consistency.learning_rate': (field_checks.rate, field_checks.RATE),
    'consistency.batch_size': (field_checks.count(1), field_checks.COUNT),
    'consistency.target_decay': (
        lambda v: field_checks.is_number(v) and 0 <= v <= 1,
        'use a rate in [0, 1] (0: a stop-gradient copy of the student, '
        '1: frozen)'),
}
# What a started stage trained with: a re-run in its workdir may not change
# it (config_checks.resume_changes).
FROZEN = ('distill.teacher_checkpoint', 'distill.grad_clip',
          'consistency.phases', 'consistency.teacher_num_steps',
          'consistency.num_steps', 'consistency.learning_rate',
          'consistency.batch_size', 'consistency.target_decay',
          'consistency.loss_weighting')


def phase_plan(config, teacher_num_steps=None):
  """[(T, N, updates)]: each phase's student steps, its teacher's grid and
  its number of updates; N of the first phase is the teacher's own step
  count when it has one, consistency.teacher_num_steps otherwise."""
  c = config.consistency
  n, plan = teacher_num_steps or c.teacher_num_steps, []
  for t in c.phases:
    plan.append((int(t), int(n), int(c.num_steps)))
    n = t
  return plan


def _check_grid(phases, teacher_num_steps, where):
  """Each phase's T divides its teacher's N, and the T decrease."""
  n = teacher_num_steps
  for t in phases:
    require(t < n and n % t == 0, 'consistency.phases', phases,
            f'a phase of {t} steps must divide the {n} steps of its '
            f'teacher\'s grid ({where}) into equal segments and be fewer: '
            'use decreasing divisors, e.g. (8, 1) from 64')
    n = t


def check(config):
  """The section's values; with the stage in config.stages, the run's."""
  c = config.consistency
  phases = tuple(c.phases)
  require(phases and all(field_checks.count(1)(t) for t in phases),
          'consistency.phases', phases,
          'give positive student step counts, e.g. (1,) or (8, 1)')
  require(all(a > b for a, b in zip(phases, phases[1:])),
          'consistency.phases', phases,
          'phases must decrease (each trains a student for fewer steps '
          'from the one before), e.g. (8, 1)')
  _check_grid(phases, c.teacher_num_steps,
              'the first from consistency.teacher_num_steps='
              f'{c.teacher_num_steps}')
  require(c.loss_weighting is None or
          c.loss_weighting in diffusion.LOSS_WEIGHTINGS,
          'consistency.loss_weighting', c.loss_weighting,
          f'use one of {diffusion.LOSS_WEIGHTINGS}, or leave it unset for '
          'model.loss_weighting')
  require(c.num_steps % config.train.steps_per_dispatch == 0,
          'consistency.num_steps', c.num_steps,
          'must be a multiple of train.steps_per_dispatch='
          f'{config.train.steps_per_dispatch}')
  stages = tuple(config.stages)
  if NAME not in stages:
    return
  require(config.model.mean_type in MEAN_TYPES, 'model.mean_type',
          config.model.mean_type,
          f'consistency distillation needs an output whose x_hat tends to z '
          f'as sigma -> 0 (the boundary condition): use one of {MEAN_TYPES} '
          'for the teacher and its students')
  require(distill_stage.NAME not in stages, 'stages', stages,
          f"'{distill_stage.NAME}' (progressive rounds) and '{NAME}' each "
          'distil the teacher: run one per workdir, and share the teacher '
          'with --config.distill.teacher_checkpoint')
  require(not dataset_info.has_null_class(config), 'guidance.label_dropout',
          config.guidance.label_dropout,
          'consistency distillation takes an unguided teacher: set '
          '--config.guidance.label_dropout=0')


check_files = base.no_files

def teacher_need(config):
  """The run's teacher (unguided: check refuses label dropout)."""
  del config
  return teacher_lib.Need(maker=teacher_stage.NAME)


def check_sources(config, workdir, teacher, students_coming):
  """A distilled teacher's own step count is the first phase's grid."""
  del workdir, students_coming
  if teacher is not None and teacher.num_sample_steps:
    _check_grid(tuple(config.consistency.phases), teacher.num_sample_steps,
                f'{teacher.description} samples in '
                f'{teacher.num_sample_steps} steps')


def loss_weighting(config):
  """The stage's weighting: consistency.loss_weighting, else the teacher's."""
  return config.consistency.loss_weighting or config.model.loss_weighting


def _objective(params, batch, rng, teacher_params, num_student_steps,
               num_teacher_steps, *, target_params, **kwargs):
  return losses.consistency_loss(
      params, teacher_params, batch, rng, target_params=target_params,
      num_student_steps=num_student_steps,
      num_teacher_steps=num_teacher_steps, **kwargs)


def consistency_loss_fn(config, model):
  """The loss `(params, batch, rng, teacher_params, T, N, *,
  target_params)`, built from the config here only."""
  return functools.partial(
      _objective, model_fn=inference.make_model_fn(model),
      mean_type=config.model.mean_type, weighting=loss_weighting(config),
      logsnr_fn=schedules.get_logsnr_fn(config.schedule))


def make_step(config, model) -> trainer.Step:
  """Fresh Adam, linear decay to 0 over a phase, the target network."""
  c = config.consistency
  learning_rate_fn = optax.linear_schedule(c.learning_rate, 0., c.num_steps)
  return trainer.make_step(
      consistency_loss_fn(config, model),
      trainer.make_optimizer(learning_rate_fn,
                             grad_clip=config.distill.grad_clip),
      learning_rate_fn, ema_decay=0.,
      skip_nonfinite=config.train.skip_nonfinite,
      steps_per_dispatch=config.train.steps_per_dispatch,
      target_decay=float(c.target_decay))


def student_dir(workdir, num_student_steps):
  return layout.student_dir(workdir, NAME, num_student_steps)


def student_steps(plan):
  """The step counts of the students of a phase plan."""
  return [t for t, _, _ in plan]


def resume_dirs(config, workdir):
  """The phases started in `workdir` (base.student_resume_dirs)."""
  del config
  return base.student_resume_dirs(workdir, NAME,
                                  'consistency phase to %d steps')


def directories(workdir):
  return base.student_dirs(workdir, NAME)


class Phases:
  """What every phase of one run shares: the student's model, its loss, its
  sampler and one compiled step (T and N are arguments of the step)."""

  def __init__(self, config, workdir, plan):
    self.config = models.student_config(config)
    self.workdir = workdir
    self.plan = plan
    self.model = models.create_model(self.config)
    self.step = make_step(self.config, self.model)
    self.sampler = layout.make_sampler(self.config, self.model, None)

  def stage(self, index, teacher_params, init_params) -> trainer.Stage:
    """Phase `index`: a student for T steps from `init_params`, taught by
    `teacher_params` on its N-step grid."""
    config = self.config
    t, n, num_updates = self.plan[index]
    total = sum(u for _, _, u in self.plan)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _STREAM)
    return trainer.Stage(
        name=f'consistency to {t} steps',
        directory=student_dir(self.workdir, t),
        num_steps=num_updates,
        step=self.step,
        init_params=init_params,
        rng=jax.random.fold_in(key, t),
        make_iterator=input_pipeline.iterator_factory(
            config, config.consistency.batch_size,
            (config.seed + _STREAM + t) % 2**31),
        meta=layout.model_meta(config, stage=NAME, num_sample_steps=t,
                               stage_num_steps=num_updates),
        sampler=self.sampler,
        grid_num_steps=t,
        periodic=teacher_stage.periodic(config, num_updates),
        extra=(teacher_params, np.int32(t), np.int32(n)),
        hparams=teacher_stage.hparams(config),
        progress=trainer.Progress(
            done_before=index * num_updates, total=total,
            label=f'phase {index + 1} of {len(self.plan)}'),
        workdir=self.workdir)


def build(config, workdir, teacher) -> Phases:
  """The phases that distil the resolved `teacher`."""
  return Phases(config, workdir,
                phase_plan(config, teacher.num_sample_steps))


def run(config, workdir, teacher, step_hook=None):
  """Runs every phase; returns the last student's parameters (host)."""
  teacher_params = teacher_lib.load(teacher)
  phases = build(config, workdir, teacher)
  params = teacher_params
  for index in range(len(phases.plan)):
    stage = phases.stage(index, teacher_params, params)
    stage.step_hook = step_hook
    state = trainer.run_stage(stage)
    # The next phase's teacher, and where its student starts.
    teacher_params = params = state.params
  return params


def flops_line(config, plan, batch):
  """(name, updates, batch, FLOP per update, detail, unit) for preflight's
  plan."""
  c = config.consistency
  plan_phases = plan.phases[NAME]
  phases = Phases(config, '', plan_phases)
  params = models.abstract_params(phases.model, phases.config)
  flops = phases.step.flops(params, batch(config, c.batch_size), params,
                            np.int32(1), np.int32(2))
  detail = [f'phase {i + 1}: {t} sampling steps on a {n}-step teacher grid, '
            f'{u:,} updates' for i, (t, n, u) in enumerate(plan_phases)]
  return (NAME, sum(u for _, _, u in plan_phases), c.batch_size, flops,
          detail, 'step')
