"""The progressive distillation driver (docs/method.md, section 4): the rounds.

Each round halves the number of sampling steps: the student starts as a copy
of its teacher, learns with a fresh Adam whose learning rate decays linearly
to zero over the round, and becomes the next round's teacher. Rounds are
stages (trainer.run_stage), so an interrupted round resumes mid-way and a
finished one is only reloaded. The driver builds the loss once, and one
compiled step per round length, and hands them to the rounds: rounds of the
same length share one compiled program (the number of student steps is an
argument of the step, not a constant in it). Its section is `distill`,
its students WORKDIR/distill/student_NNNNN; in a guided run (label dropout)
its teacher is the guide stage's student that takes w.
"""

import functools
import logging

import jax
import numpy as np
import optax

from diffusion_distill import dataset_info
from diffusion_distill import diffusion
from diffusion_distill import field_checks
from diffusion_distill import input_pipeline
from diffusion_distill import inference
from diffusion_distill import losses
from diffusion_distill import models
from diffusion_distill import schedules
from diffusion_distill import teacher as teacher_lib
from diffusion_distill.stages import teacher as teacher_stage
from diffusion_distill import trainer
from diffusion_distill import layout
from diffusion_distill.field_checks import require
from diffusion_distill.stages import base
from diffusion_distill.stages import guide as guide_stage

log = logging.getLogger(__name__)

NAME = 'distill'
SECTION = 'distill'
LOCAL_BATCH = False
MAKES_STUDENTS = True

RANGES = {
    'distill.start_num_steps': (field_checks.count(1), field_checks.COUNT),
    'distill.end_num_steps': (field_checks.count(1), field_checks.COUNT),
    'distill.steps_per_round': (field_checks.count(1), field_checks.COUNT),
    'distill.last_rounds_multiplier': (field_checks.count(1),
                                       field_checks.COUNT),
    'distill.long_rounds_max_steps': (field_checks.count(1),
                                      field_checks.COUNT),
    'distill.learning_rate': (field_checks.rate, field_checks.RATE),
    'distill.batch_size': (field_checks.count(1), field_checks.COUNT),
    'distill.grad_clip': (field_checks.non_negative,
                          'must be 0 (no clipping) or positive'),
}
# What a started round trained with (config_checks.resume_changes);
# distill.end_num_steps may change, to distill further.
FROZEN = ('distill.teacher_checkpoint', 'distill.start_num_steps',
          'distill.steps_per_round', 'distill.last_rounds_multiplier',
          'distill.long_rounds_max_steps', 'distill.learning_rate',
          'distill.batch_size', 'distill.grad_clip', 'distill.loss_weighting')


def _is_power_of_two(n):
  return n >= 1 and (n & (n - 1)) == 0


def halves_to(start, end):
  """Whether `start` is `end` times a power of two (each round halves)."""
  return start % end == 0 and _is_power_of_two(start // end)


def check(config):
  """The section's values; with the stage in config.stages, the run's."""
  d = config.distill
  k = config.train.steps_per_dispatch
  teacher_stage.check_dispatch('distill.steps_per_round', d.steps_per_round,
                               k)
  teacher_stage.check_dispatch(
      'distill.steps_per_round * distill.last_rounds_multiplier',
      d.steps_per_round * d.last_rounds_multiplier, k)
  require(d.steps_per_round * d.last_rounds_multiplier <=
          field_checks.INT32_MAX,
          'distill.last_rounds_multiplier', d.last_rounds_multiplier,
          f'the last rounds would run distill.steps_per_round='
          f'{d.steps_per_round} times it, over {field_checks.INT32_MAX} '
          'updates (int32)')
  require(halves_to(d.start_num_steps, d.end_num_steps),
          'distill.start_num_steps', d.start_num_steps,
          f'must be distill.end_num_steps={d.end_num_steps} times a power of '
          'two (each round halves the steps)')
  require(d.loss_weighting is None or
          d.loss_weighting in diffusion.LOSS_WEIGHTINGS,
          'distill.loss_weighting', d.loss_weighting,
          f'use one of {diffusion.LOSS_WEIGHTINGS}, or leave it unset for '
          'model.loss_weighting')
  require(d.teacher_checkpoint is None or (
      isinstance(d.teacher_checkpoint, str) and d.teacher_checkpoint),
          'distill.teacher_checkpoint', d.teacher_checkpoint,
          'give a path, or leave it unset for the teacher in --workdir')
  if NAME in config.stages:
    require(config.model.mean_type != 'eps', 'model.mean_type',
            config.model.mean_type,
            "eps is unstable for distillation (x_hat = (z - sigma eps)/alpha "
            "as alpha -> 0); use 'x', 'v' or 'both'")


check_files = base.no_files

def teacher_need(config):
  """The teacher; in a guided run, the guide stage's student (takes w)."""
  if dataset_info.has_null_class(config):
    return teacher_lib.Need(maker=guide_stage.NAME, guided=True,
                            takes_w=True)
  return teacher_lib.Need(
      maker=teacher_stage.NAME,
      hint=f" and put '{guide_stage.NAME}' before '{NAME}' in config.stages, "
           'to distill it with guidance (configs/digits_guided.py does)')


def resolve_teacher(config, workdir):
  return teacher_lib.resolve(config, workdir, teacher_need(config))


def check_sources(config, workdir, teacher, students_coming):
  """A distilled teacher's own step count is where the rounds start."""
  del workdir, students_coming
  if teacher is not None and teacher.num_sample_steps:
    d = config.distill
    n = teacher.num_sample_steps
    require(halves_to(n, d.end_num_steps),
            'distill.end_num_steps', d.end_num_steps,
            f'{teacher.description} samples in {n} steps, where distillation '
            f'starts: use {n} divided by a power of two')


def student_dir(workdir, num_student_steps):
  return layout.student_dir(workdir, NAME, num_student_steps)


def resume_dirs(config, workdir):
  """The rounds started in `workdir` (base.student_resume_dirs)."""
  del config
  return base.student_resume_dirs(workdir, NAME, 'round %d')


def directories(workdir):
  return base.student_dirs(workdir, NAME)


def round_plan(start_num_steps, end_num_steps, steps_per_round,
               last_rounds_multiplier=1, long_rounds_max_steps=2):
  """[(student_num_steps, num_updates)] from start/2 down to end.

  The rounds whose students sample in at most `long_rounds_max_steps` steps
  run `last_rounds_multiplier` times longer (the paper doubled the rounds
  ending at 2 and 1 steps: the default).
  """
  plan, n = [], start_num_steps
  while n > end_num_steps:
    n //= 2
    mult = last_rounds_multiplier if n <= long_rounds_max_steps else 1
    plan.append((n, steps_per_round * mult))
  return plan


def config_round_plan(config, teacher_num_steps=None):
  """round_plan of config.distill, from the teacher's own step count if any."""
  d = config.distill
  return round_plan(teacher_num_steps or d.start_num_steps, d.end_num_steps,
                    d.steps_per_round, d.last_rounds_multiplier,
                    d.long_rounds_max_steps)


phase_plan = config_round_plan


def student_steps(plan):
  """The step counts of the students of a round plan."""
  return [n for n, _ in plan]


def _distill_objective(params, batch, rng, teacher_params, num_student_steps,
                       **kwargs):
  return losses.distill_loss(params, teacher_params, batch, rng,
                             num_student_steps=num_student_steps, **kwargs)


def loss_weighting(config):
  """The rounds' weighting: distill.loss_weighting, else the teacher's."""
  return config.distill.loss_weighting or config.model.loss_weighting


def distill_loss_fn(config, model):
  """Algorithm 2's loss, `(params, batch, rng, teacher_params, n)`; for a
  student that takes w, over config.guidance's range of w."""
  g = config.guidance
  return functools.partial(
      _distill_objective, model_fn=inference.make_model_fn(model),
      mean_type=config.model.mean_type,
      weighting=loss_weighting(config),
      logsnr_fn=schedules.get_logsnr_fn(config.schedule),
      w_range=((g.w_min, g.w_max) if model.guidance_embedding else None))


class Rounds:
  """What every round of one run shares: the student's model, its loss, its
  sampler, and one compiled step per round length (built on first use).
  With `takes_guidance` the students take w (stage 2 of guided
  distillation)."""

  def __init__(self, config, workdir, plan, takes_guidance=False):
    self.config = models.student_config(config, takes_guidance)
    self.workdir = workdir
    self.plan = plan
    self.model = models.create_model(self.config)
    self.loss_fn = distill_loss_fn(self.config, self.model)
    self.sampler = layout.make_sampler(self.config, self.model, None)
    self._steps = {}

  def step(self, num_updates):
    """Fresh Adam, learning rate decayed linearly to 0 over the round."""
    if num_updates not in self._steps:
      d = self.config.distill
      learning_rate_fn = optax.linear_schedule(d.learning_rate, 0.,
                                               num_updates)
      self._steps[num_updates] = trainer.make_step(
          self.loss_fn,
          trainer.make_optimizer(learning_rate_fn, grad_clip=d.grad_clip),
          learning_rate_fn, ema_decay=0.,
          skip_nonfinite=self.config.train.skip_nonfinite,
          steps_per_dispatch=self.config.train.steps_per_dispatch)
    return self._steps[num_updates]

  def stage(self, index, teacher_params) -> trainer.Stage:
    """Round `index` of the plan: a student for n steps from its teacher."""
    config = self.config
    n, num_updates = self.plan[index]
    before = sum(u for _, u in self.plan[:index])
    return trainer.Stage(
        name=f'distill to {n} steps',
        directory=student_dir(self.workdir, n),
        num_steps=num_updates,
        step=self.step(num_updates),
        init_params=teacher_params,
        rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), n),
        make_iterator=input_pipeline.iterator_factory(
            config, config.distill.batch_size, config.seed + n),
        meta=layout.model_meta(config, stage=NAME, num_sample_steps=n,
                               stage_num_steps=num_updates),
        sampler=self.sampler,
        grid_num_steps=n,
        periodic=teacher_stage.periodic(config, num_updates),
        extra=(teacher_params, np.int32(n)),
        hparams=teacher_stage.hparams(config),
        progress=trainer.Progress(
            done_before=before, total=sum(u for _, u in self.plan),
            label=f'round {index + 1} of {len(self.plan)}'),
        workdir=self.workdir)


def build_rounds(config, workdir, teacher) -> Rounds:
  """The rounds that distill the resolved `teacher`: from its own step
  count if it has one, its students taking w if it does."""
  d = config.distill
  if teacher.num_sample_steps and teacher.num_sample_steps != d.start_num_steps:
    log.info('teacher was trained for %d sampling steps: distilling from '
             'there, not from distill.start_num_steps=%d',
             teacher.num_sample_steps, d.start_num_steps)
  return Rounds(config, workdir,
                config_round_plan(config, teacher.num_sample_steps),
                takes_guidance=teacher.takes_guidance)


def distill(config, workdir, teacher=None, step_hook=None):
  """Runs every round; returns the final student's parameters (host arrays).

  `teacher` is the resolved teacher (preflight's); None resolves it now,
  e.g. after this run's teacher stage trained it.
  """
  teacher = teacher or resolve_teacher(config, workdir)
  params = teacher_lib.load(teacher)
  rounds = build_rounds(config, workdir, teacher)
  for index in range(len(rounds.plan)):
    stage = rounds.stage(index, params)
    stage.step_hook = step_hook
    state = trainer.run_stage(stage)
    # With EMA decay 0 the EMA equals the parameters; use it like a teacher's.
    params = state.ema_params
  return params


def run(config, workdir, teacher):
  distill(config, workdir, teacher)


def flops_line(config, plan, batch):
  """(name, updates, batch, FLOP per update, detail, unit) of the rounds."""
  d = config.distill
  rounds_plan = plan.phases[NAME]
  rounds = Rounds(config, '', rounds_plan,
                  takes_guidance=dataset_info.has_null_class(config))
  student_params = models.abstract_params(rounds.model, rounds.config)
  flops = rounds.step(rounds_plan[0][1]).flops(
      student_params, batch(config, d.batch_size), student_params,
      np.int32(1))
  detail = [f'round {i + 1}: {2 * n} -> {n} sampling steps, {u:,} updates'
            for i, (n, u) in enumerate(rounds_plan)]
  return (NAME, sum(u for _, u in rounds_plan), d.batch_size, flops, detail,
          'step')
