"""The teacher of distillation: found and checked cheaply, then loaded once.

`config.distill.teacher_checkpoint` names a workdir, stage or checkpoint
directory of ours, or a checkpoint file released with the paper (Flax
msgpack); unset, it is the teacher of --workdir. In a guided run (label
dropout) the guided teacher is that one, and the teacher of the guided
rounds is the student that takes w, which another stage made. What a stage
asks of its teacher is a `Need`, declared by the stage (stages/): this
module names no stage. `resolve` checks it before
any work without reading our checkpoints' arrays: the checkpoint's meta
gives its data set, parameterization and architecture, and the parameter
shapes follow from them. A paper file has no meta, so it is read once there
and kept. `load` then returns the parameters, reading them at most once.
Every failure is one line (CheckpointError) that names the field and fix.
"""

import dataclasses
import os
from typing import Any, Optional

from etils import epath
import jax
import numpy as np

from diffusion_distill import checkpoints
from diffusion_distill import dataset_info
from diffusion_distill import models
from diffusion_distill import layout

# What a teacher checkpoint may be, for the messages below.
_FORMS = ('give the workdir of a trained teacher, its checkpoints directory '
          'or a checkpoint file released with the paper')
# config.model fields that shape the parameter tree.
_ARCH_FIELDS = ('ch', 'emb_ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions',
                'num_heads', 'head_dim', 'resblock_resample', 'mean_type')
_CLASS_EMB = 'class_emb/kernel'  # [num_classes, emb_ch]; absent if 1 class


@dataclasses.dataclass
class Teacher:
  """A teacher that passed `resolve`'s checks.

  `config` holds the sections (model, dataset, schedule) that build its
  U-Net: those it was trained with, for a teacher of ours. `checkpoint_dir`
  is our Orbax directory, or None for a paper file, whose parameters
  `params` already holds. `num_sample_steps` is the number of steps it
  samples in (None: a continuous-time teacher).
  """
  description: str
  config: Any
  num_sample_steps: Optional[int]
  checkpoint_dir: Optional[str] = None
  params: Any = None
  is_student: bool = False  # A distilled student (its meta has a step count).
  takes_guidance: bool = False  # A student of guided distillation.


@dataclasses.dataclass(frozen=True)
class Need:
  """What a stage asks of its teacher (each stage's teacher_need).

  `maker`: the stage whose model it is (its name in config.stages and its
  directory in a workdir); a run that has that stage makes the teacher
  itself. `optional`: the stage runs without one (evaluation). `guided`: a
  guided model whose null class was trained. `takes_w`: the maker's student
  that takes w, searched for in the maker's directory, and this run's own
  when the run has the maker (distill.teacher_checkpoint then names the
  maker's teacher, not this). `hint`: added to the message that refuses a
  guided model to an unguided run.
  """
  maker: str
  optional: bool = False
  guided: bool = False
  takes_w: bool = False
  hint: str = ''

  def made_in(self, config):
    return self.maker in tuple(config.stages)


def _named_path(config, need):
  """distill.teacher_checkpoint where it names `need`'s teacher, else None."""
  if need.takes_w and need.made_in(config):
    return None  # The guided rounds distill this run's student that takes w.
  return config.distill.teacher_checkpoint


def description(config, workdir, need):
  """How messages name the teacher: the config field, or the workdir."""
  path = _named_path(config, need)
  if path:
    return f'config.distill.teacher_checkpoint={path!r}'
  return f'the teacher in --workdir={workdir}'


def _checkpoint_dir(path, need):
  """The Orbax directory that `path` names for `need`'s teacher, or None."""
  if need.takes_w:
    for candidate in (layout.checkpoint_dir(layout.stage_dir(path,
                                                             need.maker)),
                      layout.checkpoint_dir(path), path):
      found = layout.stage_checkpoint_dir(candidate)
      if found is not None and os.fspath(found) == os.fspath(candidate):
        return found
    return None
  return layout.stage_checkpoint_dir(path)


def exists(config, workdir, need):
  """Whether there is a teacher to resolve (a file, or a checkpoint of ours)."""
  path = _named_path(config, need)
  if path and epath.Path(path).is_file():
    return True
  return _checkpoint_dir(path or workdir, need) is not None


def _missing(config, workdir, need):
  """CheckpointError for a teacher path that holds no checkpoint of ours."""
  path = _named_path(config, need)
  if not path:
    if need.takes_w:
      return checkpoints.CheckpointError(
          f'no guided student (stage {need.maker!r}) in --workdir={workdir} '
          f'to distill: config.stages={tuple(config.stages)}; add '
          f'{need.maker!r} to config.stages or set '
          f'--config.distill.teacher_checkpoint to a {need.maker} stage')
    return checkpoints.CheckpointError(
        f'no teacher checkpoint in --workdir={workdir}: '
        f'config.distill.teacher_checkpoint is unset and config.stages='
        f'{tuple(config.stages)} trains no teacher; add {need.maker!r} to '
        'config.stages or set --config.distill.teacher_checkpoint=PATH')
  what = description(config, workdir, need)
  if '://' not in path and not os.path.exists(path):
    return checkpoints.CheckpointError(f'{what} does not exist: {_FORMS}')
  try:
    empty = os.path.isdir(path) and not os.listdir(path)
  except OSError as e:
    return checkpoints.CheckpointError(
        f'{what} cannot be read ({e.strerror or e}): {_FORMS}')
  where = ('it is an empty directory' if empty else
           'it has no teacher/checkpoints, checkpoints or numbered step '
           'directory')
  return checkpoints.CheckpointError(f'{what} holds no checkpoint ({where}): '
                                     f'{_FORMS}')


def _unreadable(what, error):
  why = ' '.join(str(error).split())
  why = why if len(why) <= 400 else why[:397] + '...'
  return checkpoints.CheckpointError(f'{what} cannot be read: {why}; {_FORMS}')


def _check_meta(meta, config, what):
  """A teacher of ours must have config's data set and parameterization."""
  saved = meta.get('dataset', {})
  for field, want in (('name', config.dataset.name),
                      ('class_conditional', bool(
                          config.dataset.class_conditional))):
    if field in saved and saved[field] != want:
      raise checkpoints.CheckpointError(
          f'{what} was trained with dataset.{field}={saved[field]!r} but '
          f'config.dataset.{field}={want!r}: set '
          f'--config.dataset.{field}={saved[field]} or give a teacher '
          f'trained with {want!r}')
  mean_type = meta.get('model', {}).get('mean_type', config.model.mean_type)
  if mean_type != config.model.mean_type:
    fix = (f'set --config.model.mean_type={mean_type}' if mean_type != 'eps'
           else "a teacher that predicts eps cannot be distilled: train one "
                "with model.mean_type 'x', 'v' or 'both'")
    raise checkpoints.CheckpointError(
        f'{what} predicts model.mean_type={mean_type!r} but '
        f'config.model.mean_type={config.model.mean_type!r}: {fix}')


def _class_count_error(config, what, want_n, got_n, got):
  teacher = (f'class-conditional with {got_n} classes (parameter '
             f'{_CLASS_EMB} {got})' if got_n > 1 else
             f'unconditional (no parameter {_CLASS_EMB})')
  if got_n == 1:
    fix = 'set --config.dataset.class_conditional=False'
  else:
    names = [n for n, i in dataset_info.DATASETS.items()
             if i.num_classes == got_n]
    fix = ('set --config.dataset.class_conditional=True'
           if config.dataset.class_conditional is False and
           config.dataset.name in names else
           f'set --config.dataset.name to a data set of {got_n} classes '
           f'({", ".join(names) or "none is known"}) with '
           '--config.dataset.class_conditional=True')
  return checkpoints.CheckpointError(
      f'{what} is {teacher} but config.dataset.name='
      f'{config.dataset.name!r} with config.dataset.class_conditional='
      f'{bool(config.dataset.class_conditional)} gives {want_n} '
      f'class{"es" if want_n > 1 else ""}: {fix}')


def _arch_fix(config, saved_model):
  """How to set config.model to the teacher's architecture."""
  fields = []
  if saved_model is not None:
    for f in _ARCH_FIELDS:
      ours, theirs = config.model.get(f), saved_model.get(f)
      if isinstance(ours, (list, tuple)) or isinstance(theirs, (list, tuple)):
        ours, theirs = tuple(ours or ()), tuple(theirs or ())
      if f in saved_model and ours != theirs:
        fields.append((f, theirs))
  if not fields:
    return ('set config.model (' + ', '.join(_ARCH_FIELDS) + ") to the "
            "teacher's")
  return 'the teacher has ' + ', '.join(
      f'model.{f}={v!r}' for f, v in fields) + ': set ' + ' '.join(
          f'--config.model.{f}={v!r}'.replace(' ', '') for f, v in fields)


def check_tree(actual, config, what, saved_model=None):
  """Raises CheckpointError naming the first parameter whose shape differs
  from config's U-Net.

  A different class count is named as such (the fix is in config.dataset);
  with the teacher's own `saved_model` config (a teacher of ours), the
  message says which config.model fields to change.
  """
  expected = models.abstract_params(models.create_model(config), config)
  want = checkpoints.flat_shapes(expected).get(_CLASS_EMB)
  got = checkpoints.flat_shapes(actual).get(_CLASS_EMB)
  want_n, got_n = (want or (1,))[0], (got or (1,))[0]
  if want_n != got_n:
    raise _class_count_error(config, what, want_n, got_n, got)
  try:
    checkpoints.check_same_tree(expected, actual, what)
  except checkpoints.CheckpointError as e:
    raise checkpoints.CheckpointError(
        f'{e}; {_arch_fix(config, saved_model)}') from None


def _resolve_file(path, config, what):
  try:
    params, num_steps = checkpoints.load_paper_checkpoint(path)
  except checkpoints.CheckpointError as e:
    raise _unreadable(what, e) from None
  check_tree(params, config, what)
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  return Teacher(what, config, num_steps, params=params)


def _check_guidance(saved_config, config, what, need):
  """A guided run's teachers: label dropout where `need` is guided, w where
  it takes w, and for those and a guided evaluation a null class that was
  trained. An
  unguided run may not take a guided run's model: its U-Net has the null
  class (and maybe w) that the unguided student would not have."""
  if not dataset_info.has_null_class(config):
    if dataset_info.has_null_class(saved_config):
      dropout = saved_config.guidance.label_dropout
      raise checkpoints.CheckpointError(
          f'{what} is a guided model (trained with label dropout {dropout:g}, '
          'so it has a null class) but config.guidance.label_dropout=0 is an '
          f'unguided run: set --config.guidance.label_dropout={dropout:g}'
          + need.hint + ', or give an unguided teacher')
    return
  if dataset_info.null_class_untrained(saved_config) and (
      need.guided or any(config.eval.guidance)):
    raise checkpoints.CheckpointError(
        f'{what} cannot be guided or distilled with guidance: '
        + dataset_info.UNTRAINED_NULL_CLASS)
  if not need.guided:
    return
  if not dataset_info.has_null_class(saved_config):
    raise checkpoints.CheckpointError(
        f'{what} was trained without label dropout, so it cannot be guided: '
        'train the teacher with --config.guidance.label_dropout=0.1 (and '
        'class_conditional=True), or set --config.guidance.label_dropout=0 '
        'for unguided distillation')
  takes_w = bool(saved_config.model.get('guidance_embedding'))
  if need.takes_w and not takes_w:
    raise checkpoints.CheckpointError(
        f'{what} is the guided teacher, not the student that takes w: its '
        f'rounds start from stage {need.maker!r}: add {need.maker!r} to '
        'config.stages')


def resolve(config, workdir, need) -> Teacher:
  """Finds the teacher a stage's `need` names and checks that it fits
  `config`, or raises.

  Missing, unreadable, of another data set, class count, parameterization
  or architecture, or (guided runs) without label dropout: each is one
  CheckpointError line. Reads a checkpoint of ours' meta only; a paper file
  is read (once) and kept in the result.
  """
  path = _named_path(config, need) or workdir
  what = description(config, workdir, need)
  if epath.Path(path).is_file():
    return _resolve_file(epath.Path(path), config, what)
  ckpt_dir = _checkpoint_dir(path, need)
  if ckpt_dir is None:
    raise _missing(config, workdir, need)
  try:
    meta = checkpoints.Checkpointer(ckpt_dir, read_only=True).restore_meta()
  except checkpoints.CheckpointError as e:
    raise _unreadable(what, e) from None
  _check_meta(meta, config, what)
  saved_config = layout.config_from_meta(meta)
  _check_guidance(saved_config, config, what, need)
  takes_w = bool(saved_config.model.get('guidance_embedding'))
  check_tree(models.abstract_params(models.create_model(saved_config),
                                    saved_config),
             models.student_config(config, True) if takes_w else config, what,
             saved_model=saved_config.model)
  return Teacher(what, saved_config, meta.get('num_sample_steps'),
                 os.fspath(ckpt_dir),
                 is_student=meta.get('num_sample_steps') is not None,
                 takes_guidance=takes_w)


def load(teacher: Teacher):
  """The teacher's EMA parameters (host arrays); a paper file's are kept."""
  if teacher.params is None:
    try:
      _, _, teacher.params, _ = layout.load_model(teacher.checkpoint_dir)
    except checkpoints.CheckpointError as e:
      raise _unreadable(teacher.description, e) from None
  return teacher.params
