"""The progressive distillation driver (PAPER.md section 4): teacher -> rounds.

Each round halves the number of sampling steps: the student starts as a copy
of its teacher, learns with a fresh Adam whose learning rate decays linearly
to zero over the round, and becomes the next round's teacher. Rounds are
stages (trainer.run_stage), so an interrupted round resumes mid-way and a
finished one is only reloaded.
"""

import functools
import os

from absl import logging
import jax
import numpy as np
import optax
from etils import epath

from diffusion_distill import checkpoints
from diffusion_distill import inference
from diffusion_distill import losses
from diffusion_distill import models
from diffusion_distill import schedules
from diffusion_distill import trainer
from diffusion_distill import train as train_lib


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


def round_dir(workdir, num_student_steps):
  return os.path.join(workdir, 'distill', f'student_{num_student_steps:05d}')


def finished_students(workdir):
  """[(num_sample_steps, checkpoint_dir)] of every finished round, most steps first."""
  out = []
  parent = epath.Path(workdir) / 'distill'
  if not parent.is_dir():
    return out
  for round_path in parent.iterdir():
    d = round_path / 'checkpoints'
    if not d.is_dir():
      continue
    ckpt = checkpoints.Checkpointer(d, read_only=True)
    if ckpt.latest_step() is not None:
      meta = ckpt.restore_meta()
      # After restore_meta, which skips an unusable latest checkpoint.
      if ckpt.latest_step() == meta['stage_num_steps']:
        out.append((meta['num_sample_steps'], os.fspath(d)))
    ckpt.close()
  return sorted(out, reverse=True)


def load_teacher(config, workdir):
  """(ema_params, num_sample_steps) of `distill.teacher_checkpoint`.

  The path is our own workdir/stage/checkpoint directory, or a file released
  with the paper (Flax msgpack). Defaults to this workdir's teacher.
  The parameter tree must be that of `config.model`; a teacher of ours must
  also have config's data set, class conditioning and mean_type. Every
  failure is a one-line CheckpointError that names the field and the fix
  (validation.validate_sources calls this before any work).
  """
  from diffusion_distill import validation  # pylint: disable=g-import-not-at-top
  path = config.distill.teacher_checkpoint or workdir
  expected = lambda: inference.abstract_params(models.create_model(config),
                                               config)
  what = validation.teacher_description(config, workdir)
  p = epath.Path(path)
  if p.is_file():
    try:
      params, num_steps = checkpoints.load_paper_checkpoint(p)
    except checkpoints.CheckpointError as e:
      raise validation.unreadable_teacher_error(config, workdir, e) from None
    validation.check_teacher_tree(expected(), params, config, what)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    return params, num_steps
  ckpt_dir = checkpoints.stage_checkpoint_dir(p)
  if ckpt_dir is None:
    raise validation.missing_teacher_error(config, workdir)
  try:
    meta = checkpoints.Checkpointer(ckpt_dir, read_only=True).restore_meta()
  except checkpoints.CheckpointError as e:
    raise validation.unreadable_teacher_error(config, workdir, e) from None
  validation.check_teacher_meta(meta, config, what)
  saved_config = inference.config_from_meta(meta)
  saved_model = models.create_model(saved_config)
  validation.check_teacher_tree(
      expected(), inference.abstract_params(saved_model, saved_config), config,
      what, saved_model=saved_config.model)
  try:
    _, _, params, meta = inference.load_model(ckpt_dir)
  except checkpoints.CheckpointError as e:
    raise validation.unreadable_teacher_error(config, workdir, e) from None
  return params, meta.get('num_sample_steps')


def _student_config(config):
  """The teacher's architecture with dropout off: rounds train without it."""
  student = config.copy_and_resolve_references()
  student.model.dropout = 0.
  return student


# The loss and the optimizer of the rounds, one object per distinct value:
# the trainer compiles one step per (loss, optimizer) pair, so rounds of the
# same length share a compiled step (the number of steps is an argument).
_OBJECTIVES = {}
_OPTIMIZERS = {}


def _round_objective(config):
  key = (config.model.to_json(), config.schedule.to_json())
  if key not in _OBJECTIVES:
    _OBJECTIVES[key] = functools.partial(
        _distill_objective,
        model_fn=inference.make_model_fn(models.create_model(config)),
        mean_type=config.model.mean_type,
        weighting=config.model.loss_weighting,
        logsnr_fn=schedules.get_logsnr_fn(config.schedule))
  return _OBJECTIVES[key]


def _round_optimizer(learning_rate, grad_clip, num_updates):
  """(learning_rate_fn, optimizer): fresh Adam, lr decayed linearly to 0."""
  key = (learning_rate, grad_clip, num_updates)
  if key not in _OPTIMIZERS:
    learning_rate_fn = optax.linear_schedule(learning_rate, 0., num_updates)
    _OPTIMIZERS[key] = (learning_rate_fn, trainer.make_optimizer(
        learning_rate_fn, grad_clip=grad_clip))
  return _OPTIMIZERS[key]


def round_stage(config, workdir, teacher_params, num_student_steps,
                num_updates) -> trainer.Stage:
  """One round: a student for `num_student_steps` steps from its teacher."""
  d = config.distill
  config = _student_config(config)
  model = models.create_model(config)
  learning_rate_fn, optimizer = _round_optimizer(d.learning_rate, d.grad_clip,
                                                 num_updates)
  return trainer.Stage(
      name=f'distill to {num_student_steps} steps',
      workdir=round_dir(workdir, num_student_steps),
      num_steps=num_updates,
      loss_fn=_round_objective(config),
      optimizer=optimizer,
      learning_rate_fn=learning_rate_fn,
      ema_decay=0.,
      init_params=teacher_params,
      rng=jax.random.fold_in(jax.random.PRNGKey(config.seed),
                             num_student_steps),
      make_iterator=functools.partial(
          train_lib._train_iterator, config, d.batch_size,  # pylint: disable=protected-access
          config.seed + num_student_steps),
      meta=inference.model_meta(config, stage='distill',
                                num_sample_steps=num_student_steps,
                                stage_num_steps=num_updates),
      sampler=inference.make_sampler(config, model, None),
      grid_num_steps=num_student_steps,
      extra=(teacher_params, np.int32(num_student_steps)),
      **train_lib.trainer_periodic_kwargs(config, sample_every=num_updates))


def _distill_objective(params, batch, rng, teacher_params, num_student_steps,
                       **kwargs):
  return losses.distill_loss(params, teacher_params, batch, rng,
                             num_student_steps=num_student_steps, **kwargs)


def distill(config, workdir, step_hook=None):
  """Runs every round; returns the final student's parameters (host arrays)."""
  d = config.distill
  params, teacher_steps = load_teacher(config, workdir)
  start = teacher_steps or d.start_num_steps
  if teacher_steps and teacher_steps != d.start_num_steps:
    logging.info('teacher was trained for %d sampling steps: distilling from '
                 'there, not from distill.start_num_steps=%d', teacher_steps,
                 d.start_num_steps)
  for n, num_updates in round_plan(start, d.end_num_steps, d.steps_per_round,
                                   d.last_rounds_multiplier,
                                   d.long_rounds_max_steps):
    stage = round_stage(config, workdir, params, n, num_updates)
    stage.step_hook = step_hook
    state = trainer.run_stage(stage)
    # With EMA decay 0 the EMA equals the parameters; use it like a teacher's.
    params = state.ema_params
  return params
