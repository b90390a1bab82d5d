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
rounds that follow.
"""

import functools

import jax
import optax

from diffusion_distill import dataset_info
from diffusion_distill import inference
from diffusion_distill import input_pipeline
from diffusion_distill import layout
from diffusion_distill import losses
from diffusion_distill import models
from diffusion_distill import schedules
from diffusion_distill import teacher as teacher_lib
from diffusion_distill import teacher_stage
from diffusion_distill import trainer

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
  """The stage: the resolved guided `teacher` (teacher.resolve(..., 'guide'))."""
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
      name='guide',
      directory=layout.guide_dir(workdir),
      num_steps=g.num_steps,
      step=make_guide_step(student, model, teacher_model),
      init_params=init,
      rng=rng_train,
      make_iterator=input_pipeline.iterator_factory(config, g.batch_size,
                                                    config.seed + _STREAM),
      meta=layout.model_meta(student, stage='guide', num_sample_steps=None,
                             stage_num_steps=g.num_steps),
      sampler=layout.make_sampler(student, model, None),
      grid_num_steps=config.train.grid_sample_steps,
      periodic=teacher_stage.periodic(config, config.train.sample_every_steps),
      extra=(teacher_params,),
      hparams=teacher_stage.hparams(config),
      workdir=workdir)
