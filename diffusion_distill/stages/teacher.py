"""The teacher's training (Algorithm 1, continuous time) as a stage.

Its config section is `train` (whose intervals and steps_per_dispatch every
stage's loop uses too); it trains from the data, in WORKDIR/teacher. The
registry (stages/__init__.py) lists it with the other stages.
"""

import functools

import jax

from diffusion_distill import checkpoints
from diffusion_distill import dataset_info
from diffusion_distill import field_checks
from diffusion_distill import inference
from diffusion_distill import input_pipeline
from diffusion_distill import losses
from diffusion_distill import models
from diffusion_distill import schedules
from diffusion_distill import trainer
from diffusion_distill import layout
from diffusion_distill.field_checks import require
from diffusion_distill.stages import base

NAME = layout.TEACHER
SECTION = 'train'
LOCAL_BATCH = False
MAKES_STUDENTS = False

RANGES = {
    'train.batch_size': (field_checks.count(1), field_checks.COUNT),
    'train.num_steps': (field_checks.count(1), field_checks.COUNT),
    'train.learning_rate': (field_checks.rate, field_checks.RATE),
    'train.warmup_steps': (field_checks.count(0), field_checks.COUNT_OR_0),
    'train.decay_steps': (field_checks.count(0), field_checks.COUNT_OR_0),
    'train.weight_decay': (
        lambda v: field_checks.is_number(v) and 0 <= v <= 1,
        'use a value in [0, 1] (each update multiplies a parameter by 1 - '
        'learning_rate x weight_decay)'),
    'train.ema_decay': (lambda v: field_checks.is_number(v) and 0 <= v < 1,
                        'use a value in [0, 1)'),
    'train.grad_clip': (field_checks.non_negative,
                        'must be 0 (no clipping) or positive'),
    'train.max_nonfinite_in_a_row': (field_checks.count(0),
                                     field_checks.COUNT_OR_0 +
                                     ' (0: never stop)'),
    'train.log_every_steps': (field_checks.count(1), field_checks.COUNT),
    'train.checkpoint_every_steps': (
        field_checks.count(1),
        field_checks.COUNT + ' (the last step is always saved too)'),
    'train.sample_every_steps': (field_checks.count(0),
                                 field_checks.COUNT_OR_0 +
                                 ' (0: no sample grids)'),
    'train.num_grid_samples': (field_checks.count(1), field_checks.COUNT),
    'train.grid_sample_steps': (field_checks.count(1), field_checks.COUNT),
}
# What the started stage trained with (config_checks.resume_changes).
FROZEN = ('train.batch_size', 'train.learning_rate', 'train.warmup_steps',
          'train.decay_steps', 'train.weight_decay', 'train.ema_decay',
          'train.grad_clip', 'guidance.label_dropout')


def _check_decay(t):
  require(not t.decay_steps or t.decay_steps > t.warmup_steps,
          'train.decay_steps', t.decay_steps,
          f'the decay starts after train.warmup_steps={t.warmup_steps}: use '
          'a larger value (e.g. train.num_steps), or 0 for no decay')
  require(not t.decay_steps or t.decay_steps >= t.num_steps,
          'train.decay_steps', t.decay_steps,
          f'the learning rate would be 0 for the last '
          f'{t.num_steps - t.decay_steps} of train.num_steps={t.num_steps}, '
          'which would change nothing: set it to train.num_steps (a teacher '
          'that has started needs a new --workdir), or 0 for no decay')


def check_dispatch(field, n, k):
  """A step count the loop stops at must be a multiple of k."""
  require(n % k == 0, field, n,
          f'must be a multiple of train.steps_per_dispatch={k} (logging, '
          'checkpoints and the end of a stage fall between dispatches of '
          f'{k} steps): use {max(k, n - n % k)} or {n - n % k + k}')


def check(config):
  """The section's values, and the loop's intervals every stage uses."""
  t = config.train
  _check_decay(t)
  k = t.steps_per_dispatch
  require(field_checks.is_int(k) and k > 0, 'train.steps_per_dispatch', k,
          'must be a positive integer')
  for field in ('num_steps', 'log_every_steps', 'checkpoint_every_steps',
                'sample_every_steps'):
    check_dispatch(f'train.{field}', t[field], k)


check_files = base.no_files

def teacher_need(config):
  """None: the teacher trains from the data."""
  del config


def check_sources(config, workdir, teacher, students_coming):
  """A guided teacher of the workdir whose checkpoints never trained its
  null class is neither resumed nor used: it is retrained."""
  del teacher, students_coming
  if not dataset_info.has_null_class(config):
    return
  directory = layout.stage_checkpoint_dir(layout.stage_dir(workdir, NAME))
  if directory is None:
    return
  meta = checkpoints.Checkpointer(directory, read_only=True).restore_meta()
  if dataset_info.null_class_untrained(layout.config_from_meta(meta)):
    raise checkpoints.CheckpointError(
        f'the guided teacher in {directory} cannot be resumed or guided: '
        + dataset_info.UNTRAINED_NULL_CLASS)


phase_plan = base.no_plan
student_steps = base.no_students


def resume_dirs(config, workdir):
  """[(name, checkpoint dir, its number of steps)]: this config's length."""
  return [(NAME, layout.checkpoint_dir(layout.stage_dir(workdir, NAME)),
           config.train.num_steps)]


def directories(workdir):
  """The stage's directories, whose sample grids the run's summary names."""
  return [layout.stage_dir(workdir, NAME)]


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
      name=NAME,
      directory=layout.stage_dir(workdir, NAME),
      num_steps=t.num_steps,
      step=step,
      init_params=models.init_params(model, config, rng_init),
      rng=rng_train,
      make_iterator=input_pipeline.iterator_factory(config, t.batch_size,
                                                    config.seed),
      meta=layout.model_meta(config, stage=NAME, num_sample_steps=None,
                             stage_num_steps=t.num_steps),
      sampler=layout.make_sampler(config, model, None),
      grid_num_steps=t.grid_sample_steps,
      periodic=periodic(config, t.sample_every_steps),
      hparams=hparams(config),
      workdir=workdir)


def flops_line(config, plan, batch):
  """(name, steps, batch, FLOP per step, detail, unit) for preflight's plan."""
  del plan
  t = config.train
  model = models.create_model(config)
  step = make_teacher_step(config, model)
  return (NAME, t.num_steps, t.batch_size,
          step.flops(models.abstract_params(model, config),
                     batch(config, t.batch_size)), [], 'step')


def run(config, workdir, teacher):
  del teacher
  trainer.run_stage(teacher_stage(config, workdir))
