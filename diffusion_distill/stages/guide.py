"""Stage 1 of guided distillation (docs/method.md, section 7) as a Stage.

A student that takes the guidance strength w learns, in one network
evaluation, what the guided teacher computes in two: x_hat_w = (1 + w)
x_hat(z, c) - w x_hat(z, null), for w ~ U[w_min, w_max] and t ~ U[0, 1]. It
starts as the teacher (its w-embedding's last layer at zero, so it first
predicts the teacher's conditional x_hat) and trains with a fresh Adam and
no dropout; its learning rate decays linearly to 0 or stays constant
(guidance.learning_rate_schedule), its parameters have an EMA of decay
guidance.ema_decay (0: none) and its w-embedding may be scaled up from 0
over guidance.w_warmup_steps. Its EMA parameters are the teacher of the
rounds that follow. Its section is `guidance`, its directory WORKDIR/guide.
"""

import functools

import jax
import optax

from diffusion_distill import dataset_info
from diffusion_distill import field_checks
from diffusion_distill import inference
from diffusion_distill import input_pipeline
from diffusion_distill import layout
from diffusion_distill import losses
from diffusion_distill import models
from diffusion_distill import schedules
from diffusion_distill import teacher as teacher_lib
from diffusion_distill.stages import teacher as teacher_stage
from diffusion_distill import trainer
from diffusion_distill.field_checks import require
from diffusion_distill.stages import base

NAME = 'guide'
SECTION = 'guidance'
LOCAL_BATCH = False
MAKES_STUDENTS = False

# The stage's keys and data order, apart from the teacher's (0) and the
# rounds' (their step counts): a value no round folds in.
_STREAM = 2**30


def _objective(params, batch, rng, teacher_params, **kwargs):
  return losses.guidance_loss(params, teacher_params, batch, rng, **kwargs)


def guidance_loss_fn(config, model, teacher_model):
  """Stage 1's loss `(params, batch, rng, teacher_params)` for `config`."""
  g = config.guidance
  return functools.partial(
      _objective, model_fn=inference.make_model_fn(model),
      teacher_model_fn=inference.make_model_fn(teacher_model),
      mean_type=config.model.mean_type,
      weighting=config.model.loss_weighting,
      logsnr_fn=schedules.get_logsnr_fn(config.schedule),
      w_range=(g.w_min, g.w_max), null_label=dataset_info.null_label(config),
      w_warmup_steps=g.w_warmup_steps)


# guidance.learning_rate_schedule -> the learning rate over stage 1's updates.
SCHEDULES = {
    'linear': lambda g: optax.linear_schedule(g.learning_rate, 0.,
                                              g.num_steps),
    'constant': lambda g: optax.constant_schedule(g.learning_rate),
}

RANGES = {
    'guidance.label_dropout': (
        lambda v: field_checks.is_number(v) and 0 <= v < 1,
        'use a value in [0, 1) (0: no guidance)'),
    'guidance.w_min': (field_checks.non_negative, 'must be 0 or positive'),
    'guidance.w_max': (field_checks.non_negative, 'must be 0 or positive'),
    'guidance.num_steps': (field_checks.count(1), field_checks.COUNT),
    'guidance.learning_rate': (field_checks.rate, field_checks.RATE),
    'guidance.batch_size': (field_checks.count(1), field_checks.COUNT),
    'guidance.ema_decay': (lambda v: field_checks.is_number(v) and 0 <= v < 1,
                           'use a value in [0, 1) (0: no EMA)'),
    'guidance.w_warmup_steps': (field_checks.count(0),
                                field_checks.COUNT_OR_0 + ' (0: no warm-up)'),
}
# What the started stage trained with (config_checks.resume_changes). Its
# learning rate may decay to 0 over guidance.num_steps, as a round's over
# its updates, so that is fixed too.
FROZEN = ('distill.teacher_checkpoint', 'guidance.w_min', 'guidance.w_max',
          'guidance.num_steps', 'guidance.learning_rate',
          'guidance.learning_rate_schedule', 'guidance.batch_size',
          'guidance.ema_decay', 'guidance.w_warmup_steps',
          'distill.grad_clip')


def check(config):
  """Guidance needs labels and label dropout; w is sampled where learned."""
  g = config.guidance
  stages = tuple(config.stages)
  m = config.model
  require(m.guidance_embedding is False, 'model.guidance_embedding',
          m.guidance_embedding,
          "the guided stages give their students the w input themselves "
          f"('{NAME}' and the rounds after it, with guidance.label_dropout "
          '> 0): leave it False')
  if g.label_dropout:
    require(config.dataset.class_conditional, 'guidance.label_dropout',
            g.label_dropout,
            'classifier-free guidance needs a class-conditional model: set '
            '--config.dataset.class_conditional=True on a data set with '
            'labels, or --config.guidance.label_dropout=0')
  require(NAME not in stages or g.label_dropout > 0, 'stages', stages,
          f"stage '{NAME}' distills a guided teacher: set "
          '--config.guidance.label_dropout (e.g. 0.1) for the teacher')
  require(g.w_min <= g.w_max, 'guidance.w_min', g.w_min,
          f'must not exceed guidance.w_max={g.w_max}')
  require(g.num_steps % config.train.steps_per_dispatch == 0,
          'guidance.num_steps', g.num_steps,
          f'must be a multiple of train.steps_per_dispatch='
          f'{config.train.steps_per_dispatch}')
  ws = tuple(config.eval.guidance)
  require(ws and all(field_checks.is_number(w) for w in ws), 'eval.guidance',
          ws, 'give guidance strengths, e.g. (0.0, 1.0)')
  if any(ws) and not g.label_dropout:
    raise field_checks.ConfigError(
        f'config.eval.guidance={ws} is invalid: guidance needs a model '
        'trained with label dropout (config.guidance.label_dropout > 0); '
        'use (0.0,)')
  if g.label_dropout:
    require(all(g.w_min <= w <= g.w_max for w in ws), 'eval.guidance', ws,
            f'the students learn w in [{g.w_min}, {g.w_max}] '
            '(config.guidance.w_min, w_max): use w in that range')


check_files = base.no_files

def teacher_need(config):
  """The guided teacher (its null class trained)."""
  del config
  return teacher_lib.Need(maker=teacher_stage.NAME, guided=True)


def check_sources(config, workdir, teacher, students_coming):
  del config, workdir, teacher, students_coming


phase_plan = base.no_plan
student_steps = base.no_students


def directory(workdir):
  return layout.stage_dir(workdir, NAME)


def resume_dirs(config, workdir):
  """[(name, checkpoint dir, None)]: its length is the checkpoint's."""
  del config
  return [(NAME, layout.checkpoint_dir(directory(workdir)), None)]


def directories(workdir):
  return [directory(workdir)]


def make_guide_step(config, model, teacher_model) -> trainer.Step:
  g = config.guidance
  learning_rate_fn = SCHEDULES[g.learning_rate_schedule](g)
  return trainer.make_step(
      guidance_loss_fn(config, model, teacher_model),
      trainer.make_optimizer(learning_rate_fn,
                             grad_clip=config.distill.grad_clip),
      learning_rate_fn, ema_decay=g.ema_decay,
      skip_nonfinite=config.train.skip_nonfinite,
      steps_per_dispatch=config.train.steps_per_dispatch,
      loss_reads_step=bool(g.w_warmup_steps))


def guide_stage(config, workdir, teacher) -> trainer.Stage:
  """The stage: the resolved guided `teacher` (of teacher_need)."""
  student = models.student_config(config, takes_guidance=True)
  model = models.create_model(student)
  teacher_model = models.create_model(teacher.config)
  teacher_params = teacher_lib.load(teacher)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _STREAM)
  rng_init, rng_train = jax.random.split(key)
  # The teacher's weights, and fresh ones for the w-embedding alone.
  init = dict(models.init_params(model, student, rng_init), **teacher_params)
  g = config.guidance
  return trainer.Stage(
      name=NAME,
      directory=directory(workdir),
      num_steps=g.num_steps,
      step=make_guide_step(student, model, teacher_model),
      init_params=init,
      rng=rng_train,
      make_iterator=input_pipeline.iterator_factory(config, g.batch_size,
                                                    config.seed + _STREAM),
      meta=layout.model_meta(student, stage=NAME, num_sample_steps=None,
                             stage_num_steps=g.num_steps),
      sampler=layout.make_sampler(student, model, None),
      grid_num_steps=config.train.grid_sample_steps,
      periodic=teacher_stage.periodic(config, config.train.sample_every_steps),
      extra=(teacher_params,),
      hparams=teacher_stage.hparams(config),
      workdir=workdir)


def flops_line(config, plan, batch):
  """(name, steps, batch, FLOP per step, detail, unit) for preflight's plan."""
  del plan
  g = config.guidance
  model = models.create_model(config)
  student = models.student_config(config, takes_guidance=True)
  student_model = models.create_model(student)
  step = make_guide_step(student, student_model, model)
  return (NAME, g.num_steps, g.batch_size, step.flops(
      models.abstract_params(student_model, student),
      batch(config, g.batch_size), models.abstract_params(model, config)),
          [], 'step')


def run(config, workdir, teacher):
  trainer.run_stage(guide_stage(config, workdir, teacher))
