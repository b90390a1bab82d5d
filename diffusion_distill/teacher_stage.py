"""The teacher's training (Algorithm 1, continuous time) as a trainer.Stage."""

import functools

import jax

from diffusion_distill import dataset_info
from diffusion_distill import inference
from diffusion_distill import input_pipeline
from diffusion_distill import losses
from diffusion_distill import models
from diffusion_distill import schedules
from diffusion_distill import trainer
from diffusion_distill import layout


def periodic(config, sample_every_steps):
  """The trainer's logging, checkpoint and sample-grid intervals (config.train)."""
  t = config.train
  return trainer.Periodic(
      log_every_steps=t.log_every_steps,
      checkpoint_every_steps=t.checkpoint_every_steps,
      sample_every_steps=sample_every_steps,
      num_grid_samples=t.num_grid_samples,
      max_nonfinite_in_a_row=t.max_nonfinite_in_a_row)


def hparams(config):
  """The config as TensorBoard hparams: {'section.field': scalar or str}."""
  flat = {}
  for section, fields in config.to_dict().items():
    if not isinstance(fields, dict):
      fields, section = {section: fields}, ''
    for name, value in fields.items():
      key = f'{section}.{name}' if section else name
      flat[key] = (value if isinstance(value, (bool, int, float, str))
                   else str(value))
  return flat


def teacher_loss_fn(config, model):
  """Algorithm 1's loss for `config`'s parameterization, weighting, schedule;
  with a null class (guided runs), guidance.label_dropout of the labels
  replaced by it, so that the teacher learns the unconditional prediction."""
  null_label = dataset_info.null_label(config)
  return functools.partial(
      losses.teacher_loss, model_fn=inference.make_model_fn(model),
      mean_type=config.model.mean_type,
      weighting=config.model.loss_weighting,
      logsnr_fn=schedules.get_logsnr_fn(config.schedule),
      label_dropout=(0. if null_label is None else
                     float(config.guidance.label_dropout)),
      null_label=null_label)


def make_teacher_step(config, model) -> trainer.Step:
  """Adam with warm-up and weight decay, EMA: the teacher's compiled step."""
  t = config.train
  learning_rate_fn = trainer.teacher_schedule(
      t.learning_rate, t.warmup_steps, t.decay_steps)
  return trainer.make_step(
      teacher_loss_fn(config, model),
      trainer.make_optimizer(learning_rate_fn, weight_decay=t.weight_decay,
                             grad_clip=t.grad_clip),
      learning_rate_fn, ema_decay=t.ema_decay,
      skip_nonfinite=t.skip_nonfinite,
      steps_per_dispatch=t.steps_per_dispatch)


def teacher_stage(config, workdir) -> trainer.Stage:
  """The teacher's stage: fresh U-Net parameters, Adam with warm-up, EMA."""
  t = config.train
  model = models.create_model(config)
  rng_init, rng_train = jax.random.split(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
  step = make_teacher_step(config, model)
  return trainer.Stage(
      name='teacher',
      directory=layout.teacher_dir(workdir),
      num_steps=t.num_steps,
      step=step,
      init_params=models.init_params(model, config, rng_init),
      rng=rng_train,
      make_iterator=input_pipeline.iterator_factory(config, t.batch_size,
                                                    config.seed),
      meta=layout.model_meta(config, stage='teacher',
                                  num_sample_steps=None,
                                  stage_num_steps=t.num_steps),
      sampler=layout.make_sampler(config, model, None),
      grid_num_steps=t.grid_sample_steps,
      periodic=periodic(config, t.sample_every_steps),
      hparams=hparams(config),
      workdir=workdir)
