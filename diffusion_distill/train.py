"""Stages that main.py runs: the teacher, distillation, evaluation.

`train_and_evaluate(config, workdir)` runs `config.stages` in order. Each
stage writes under its own directory of the workdir:

  WORKDIR/config.json
  WORKDIR/teacher/{checkpoints,samples}/ + TensorBoard events
  WORKDIR/distill/student_NNNNN/...   one per round; NNNNN = student's steps
  WORKDIR/eval/results.{csv,json}, quality_vs_steps.png
"""

import functools
import os

import jax
import tensorflow as tf

from diffusion_distill import checkpoints
from diffusion_distill import input_pipeline
from diffusion_distill import inference
from diffusion_distill import losses
from diffusion_distill import models
from diffusion_distill import schedules
from diffusion_distill import trainer
from diffusion_distill import validation



def teacher_stage(config, workdir) -> trainer.Stage:
  """The teacher's training (Algorithm 1, continuous time) as a Stage."""
  t = config.train
  model = models.create_model(config)
  rng_init, rng_train = jax.random.split(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
  params = inference.init_params(model, config, rng_init)
  learning_rate_fn = trainer.warmup_constant_schedule(t.learning_rate,
                                                      t.warmup_steps)
  loss_fn = functools.partial(
      losses.teacher_loss, model_fn=inference.make_model_fn(model),
      mean_type=config.model.mean_type,
      weighting=config.model.loss_weighting,
      logsnr_fn=schedules.get_logsnr_fn(config.schedule))
  return trainer.Stage(
      name='teacher',
      workdir=os.path.join(workdir, 'teacher'),
      num_steps=t.num_steps,
      loss_fn=loss_fn,
      optimizer=trainer.make_optimizer(
          learning_rate_fn, weight_decay=t.weight_decay, grad_clip=t.grad_clip),
      learning_rate_fn=learning_rate_fn,
      ema_decay=t.ema_decay,
      init_params=params,
      rng=rng_train,
      make_iterator=functools.partial(
          _train_iterator, config, t.batch_size, config.seed),
      meta=inference.model_meta(config, stage='teacher', num_sample_steps=None,
                                stage_num_steps=t.num_steps),
      sampler=inference.make_sampler(config, model, None),
      grid_num_steps=t.grid_sample_steps,
      **trainer_periodic_kwargs(config, sample_every=t.sample_every_steps))


def trainer_periodic_kwargs(config, sample_every):
  t = config.train
  return dict(log_every_steps=t.log_every_steps,
              checkpoint_every_steps=t.checkpoint_every_steps,
              sample_every_steps=sample_every,
              num_grid_samples=t.num_grid_samples,
              skip_nonfinite=t.skip_nonfinite,
              max_nonfinite_in_a_row=t.max_nonfinite_in_a_row)


def _train_iterator(config, batch_size, seed, start_step):
  return input_pipeline.create_train_iterator(
      config, batch_size=batch_size, start_step=start_step, seed=seed)


def train_and_evaluate(config, workdir):
  """Runs the stages of `config.stages` in order; each resumes where it stopped."""
  from diffusion_distill import distill  # pylint: disable=g-import-not-at-top
  from diffusion_distill import evaluate  # pylint: disable=g-import-not-at-top
  validation.validate_config(config)
  validation.validate_workdir(workdir)
  if 'eval' in config.stages:
    evaluate.make_metric(config)  # Missing Inception weights stop us here.
  input_pipeline.check_data_available(config)
  # The teacher and the models to evaluate: missing, unreadable or of
  # another data set or architecture stops here, before any work.
  validation.validate_sources(config, workdir)
  if jax.process_index() == 0:
    tf.io.gfile.makedirs(workdir)
    checkpoints.write_atomically(os.path.join(workdir, 'config.json'),
                                 config.to_json_best_effort(indent=2))
  for stage in config.stages:
    if stage == 'teacher':
      trainer.run_stage(teacher_stage(config, workdir))
    elif stage == 'distill':
      distill.distill(config, workdir)
    elif stage == 'eval':
      evaluate.evaluate(config, workdir)
