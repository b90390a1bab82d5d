"""The workdir layout: every path main.py writes, and the models found there.

  WORKDIR/config.json                      the config of the last run
  WORKDIR/STAGE/                           a stage's directory (stage_dir),
                                           STAGE its name in config.stages:
  WORKDIR/teacher/                         TensorBoard events
  WORKDIR/teacher/checkpoints/STEP/        Orbax: state + meta
  WORKDIR/teacher/samples/step_*.png       sample grids
  WORKDIR/guide/...                        guided runs: the student that
                                           takes w (stage 1), the same inside
  WORKDIR/STAGE/student_NNNNN/...          a distillation stage's students
                                           (distill: one per round;
                                           consistency: one per phase), the
                                           same inside; NNNNN = its steps
  WORKDIR/eval/results.{csv,json}, quality_vs_steps.png, reference_*.npz
  WORKDIR/timing.json                      each stage's time, rate, memory
                                           and the machine (timing.py)
  WORKDIR/generated/METHOD_STEPSsteps[_wW]/ sample.py's images

The stages (stages/) name their directories through stage_dir and
student_dir; this module knows the rest of these names, and that a workdir
given as a teacher means its teacher stage's directory (TEACHER). A model
is loaded from its checkpoint alone: the checkpoint's meta records the
config sections that build it.
"""

import json
import os

from etils import epath
import ml_collections

from diffusion_distill import checkpoints
from diffusion_distill import dataset_info
from diffusion_distill import inference
from diffusion_distill import models

CONFIG_FILE = 'config.json'
TIMING_FILE = 'timing.json'
# The directory of a workdir's teacher (stages/teacher.py's NAME): a workdir
# named as a teacher (distill.teacher_checkpoint, sample.py) means its model.
TEACHER = 'teacher'


def config_path(workdir):
  return os.path.join(workdir, CONFIG_FILE)


def timing_path(workdir):
  return os.path.join(workdir, TIMING_FILE)


def stage_dir(workdir, stage):
  """The directory of the stage named `stage` in config.stages."""
  return os.path.join(workdir, stage)


def teacher_dir(workdir):
  return stage_dir(workdir, TEACHER)


_ROUND = 'student_'


def student_dir(workdir, stage, num_student_steps):
  """The directory of `stage`'s student for `num_student_steps` steps."""
  return os.path.join(stage_dir(workdir, stage),
                      f'{_ROUND}{num_student_steps:05d}')


def _student_paths(workdir, stage=None):
  """[(num_sample_steps, path)] of the student directories of `stage` (any
  stage's if None): WORKDIR/STAGE/student_NNNNN."""
  root = epath.Path(workdir)
  if stage is not None:
    parents = [root / stage]
  else:
    parents = sorted(root.iterdir()) if root.is_dir() else []
  out = []
  for parent in parents:
    if not parent.is_dir():
      continue
    for path in parent.iterdir():
      steps = path.name.removeprefix(_ROUND)
      if path.name.startswith(_ROUND) and steps.isdigit() and path.is_dir():
        out.append((int(steps), path))
  return out


def round_checkpoint_dirs(workdir, stage):
  """[(num_sample_steps, checkpoint dir)] of `stage`'s students (every
  stage's with None) with a checkpoint directory
  in `workdir`, finished or not, most steps first."""
  return sorted(((n, checkpoint_dir(os.fspath(path)))
                 for n, path in _student_paths(workdir, stage)
                 if (path / 'checkpoints').is_dir()), reverse=True)


def checkpoint_dir(stage_dir):
  return os.path.join(stage_dir, 'checkpoints')


def sample_grid_path(stage_dir, step):
  return os.path.join(stage_dir, 'samples', f'step_{step:08d}.png')


def generated_dir(workdir, method, num_steps, guidance=None):
  suffix = f'_w{guidance:g}' if guidance else ''
  return os.path.join(workdir, 'generated',
                      f'{method}_{num_steps}steps{suffix}')


def saved_config(workdir):
  """The config.json of an earlier run in `workdir` as a dict, or None."""
  path = epath.Path(config_path(workdir))
  if not path.exists():
    return None
  return json.loads(path.read_text())


def write_config(workdir, config):
  """Creates the workdir and writes config.json (once every check passed)."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  checkpoints.write_atomically(config_path(workdir),
                               config.to_json_best_effort(indent=2))


def stage_checkpoint_dir(path):
  """The Orbax directory of a stage, given a workdir, a stage dir or itself.

  Accepts WORKDIR (uses its teacher), WORKDIR/teacher, a round's directory,
  or the `checkpoints` directory itself. Returns None when none is there.
  """
  path = epath.Path(path)
  for candidate in (epath.Path(checkpoint_dir(teacher_dir(path))),
                    epath.Path(checkpoint_dir(path)), path):
    try:
      if candidate.is_dir() and any(
          p.name.isdigit() for p in candidate.iterdir()):
        return candidate
    except OSError:
      continue
  return None


def started_stages(workdir, stages):
  """The names of `stages` with a checkpoint in `workdir`: in their own
  directory, or in a student's (a stage of students is named by their
  directory's parent)."""
  started = {name for name in stages if stage_checkpoint_dir(
      checkpoint_dir(stage_dir(workdir, name))) is not None}
  for _, path in _student_paths(workdir):
    if stage_checkpoint_dir(path) is not None:
      started.add(path.parent.name)
  return started


def model_meta(config, *, stage, num_sample_steps, stage_num_steps):
  """What a checkpoint records so that it can be loaded on its own."""
  meta = {
      'stage': stage,
      'num_sample_steps': num_sample_steps,
      'stage_num_steps': int(stage_num_steps),
      'model': config.model.to_dict(),
      'dataset': {'name': config.dataset.name,
                  'class_conditional': bool(config.dataset.class_conditional),
                  **{f: config.dataset[f] for f in dataset_info.FOLDER_FIELDS
                     if config.dataset.get(f) is not None}},
      'schedule': config.schedule.to_dict(),
  }
  if dataset_info.has_null_class(config):
    g = config.guidance
    # null_class_trained: the teacher's loss applied the label dropout (a
    # guided stage refuses a teacher that did not, so every guided
    # checkpoint written since descends from one that did).
    meta['guidance'] = {'label_dropout': float(g.label_dropout),
                        'w_min': float(g.w_min), 'w_max': float(g.w_max),
                        'null_class_trained': True}
  return meta


def config_from_meta(meta):
  """The config sections (model, dataset, schedule, guidance) a checkpoint
  recorded; guidance only for guided runs' checkpoints. A guided checkpoint
  written before label dropout reached the teacher's loss records no
  guidance.null_class_trained: it gets False
  (dataset_info.null_class_untrained)."""
  config = ml_collections.ConfigDict({k: meta[k] for k in
                                      ('model', 'dataset', 'schedule',
                                       'guidance') if k in meta})
  if 'guidance' in config and 'null_class_trained' not in config.guidance:
    config.guidance.null_class_trained = False
  return config


def finished_students(workdir):
  """[(num_sample_steps, checkpoint_dir)] of every finished student (of the
  rounds or another distillation stage), most steps first."""
  out = []
  for _, round_path in _student_paths(workdir):
    d = epath.Path(checkpoint_dir(round_path))
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


def load_model(checkpoint_directory, step=None):
  """(config, model, ema_params, meta) of a stage's checkpoint directory."""
  ckpt = checkpoints.Checkpointer(checkpoint_directory, read_only=True)
  meta = ckpt.restore_meta(step)
  config = config_from_meta(meta)
  model = models.create_model(config)
  # Its meta, not restore_meta's: this restore may have skipped an unusable
  # latest checkpoint.
  params, meta = ckpt.restore_params(models.abstract_params(model, config),
                                     'ema_params', step)
  ckpt.close()
  return config, model, params, meta


def make_sampler(config, model, params, num_steps=None, clip_x=True):
  """A Sampler for `model` with `params`, shaped by `config`'s data set."""
  info = dataset_info.of(config)
  guidance = config.get('guidance')
  return inference.Sampler(
      model, params, mean_type=config.model.mean_type,
      image_shape=info.image_shape,
      num_classes=info.num_classes if config.dataset.class_conditional else 1,
      null_label=dataset_info.null_label(config),
      null_class_untrained=dataset_info.null_class_untrained(config),
      guidance_range=((guidance.w_min, guidance.w_max)
                      if model.guidance_embedding else None),
      schedule=config.schedule, num_steps=num_steps, clip_x=clip_x,
      config=config)


def latest_model_dir(workdir):
  """The final student's checkpoints if any round finished, else the teacher's."""
  students = finished_students(workdir)
  if students:
    return students[-1][1]
  return stage_checkpoint_dir(workdir)


class StepCountError(ValueError):
  """No model of a workdir samples in the number of steps asked for."""


def select_model_dir(workdir, num_steps=None):
  """(checkpoint_dir, note) of the model of `workdir` to sample in `num_steps`.

  Without `num_steps`: the latest model (load_sampler's). With it: the
  student distilled for exactly `num_steps` steps, else the continuous-time
  teacher, which samples in any number of steps (`note` then says why it was
  chosen). A student is never run at another step count than its own: that
  raises StepCountError, one line listing the counts there are.
  Reads checkpoint metadata only.
  """
  if num_steps is None:
    return latest_model_dir(workdir), None
  students = finished_students(workdir)
  for n, d in students:
    if n == num_steps:
      return d, None
  counts = ', '.join(str(n) for n, _ in students)
  teacher = stage_checkpoint_dir(workdir)
  teacher = teacher and os.fspath(teacher)
  if teacher is not None:
    own = checkpoints.Checkpointer(teacher, read_only=True).restore_meta().get(
        'num_sample_steps')
    if own is None:
      return teacher, (
          f'no student in {workdir} was distilled for {num_steps} steps '
          f'(students: {counts})' if students else None)
    if own == num_steps:
      return teacher, None
    counts = counts or str(own)
  if not counts:
    return None, None  # No model at all: load_sampler's error.
  raise StepCountError(
      f'--num_steps={num_steps} does not fit {workdir}: its models were '
      f'distilled for {counts} sampling steps and a distilled model samples '
      'only in its own count; use one of those, or leave --num_steps out')


def load_sampler(workdir, clip_x=True, num_steps=None):
  """A Sampler for the model of a workdir that samples in `num_steps`.

  By default the latest model (the final student if any round finished,
  else the teacher); see select_model_dir.
  """
  ckpt_dir, _ = select_model_dir(workdir, num_steps)
  if ckpt_dir is None:
    raise checkpoints.CheckpointError(
        f'no model checkpoint under {workdir}: train one with main.py first')
  config, model, params, meta = load_model(ckpt_dir)
  return make_sampler(config, model, params,
                      num_steps=meta.get('num_sample_steps'), clip_x=clip_x)
