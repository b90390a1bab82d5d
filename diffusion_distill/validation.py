"""Config checks that run before any work: each error is one line with the fix."""

import os
import tempfile

from etils import epath
import jax

from diffusion_distill import diffusion

KNOWN_STAGES = ('teacher', 'distill', 'eval')
MODEL_DTYPES = ('float32', 'bfloat16')  # models.create_model's


class ConfigError(ValueError):
  """A config value is wrong; the message names the field, value and fix."""


def _require(cond, field, value, fix):
  if not cond:
    raise ConfigError(f'config.{field}={value!r} is invalid: {fix}')


def _is_power_of_two(n):
  return n >= 1 and (n & (n - 1)) == 0


def validate_config(config, num_devices=None):
  """Raises ConfigError for the first wrong field of `config`."""
  from diffusion_distill.input_pipeline import dataset_info  # pylint: disable=g-import-not-at-top
  num_devices = num_devices or jax.device_count()
  stages = tuple(config.stages)
  for s in stages:
    _require(s in KNOWN_STAGES, 'stages', stages,
             f'each stage must be one of {KNOWN_STAGES}')
  from diffusion_distill.input_pipeline import _DATASETS  # pylint: disable=g-import-not-at-top,protected-access
  _require(config.dataset.name in _DATASETS, 'dataset.name',
           config.dataset.name, f'use one of {tuple(_DATASETS)}')
  info = dataset_info(config.dataset.name)
  _require(not config.dataset.class_conditional or info.num_classes > 1,
           'dataset.class_conditional', config.dataset.class_conditional,
           f'{config.dataset.name!r} has no labels: set '
           '--config.dataset.class_conditional=False')
  m = config.model
  _require(m.mean_type in diffusion.MEAN_TYPES, 'model.mean_type', m.mean_type,
           f'use one of {diffusion.MEAN_TYPES}')
  _require(m.dtype in MODEL_DTYPES, 'model.dtype', m.dtype,
           f'use one of {MODEL_DTYPES}')
  _require(config.schedule.get('name', 'cosine') == 'cosine', 'schedule.name',
           config.schedule.get('name'), "only 'cosine' is implemented")
  _require(m.loss_weighting in diffusion.LOSS_WEIGHTINGS,
           'model.loss_weighting', m.loss_weighting,
           f'use one of {diffusion.LOSS_WEIGHTINGS}')
  _require(0. <= m.dropout < 1., 'model.dropout', m.dropout,
           'use a value in [0, 1)')
  if 'teacher' in stages:
    t = config.train
    for field in ('batch_size', 'num_steps'):
      _require(t[field] > 0, f'train.{field}', t[field], 'must be positive')
    _require(t.learning_rate > 0, 'train.learning_rate', t.learning_rate,
             'must be positive')
    _require(t.warmup_steps >= 0, 'train.warmup_steps', t.warmup_steps,
             'must be 0 (no warm-up) or positive')
    _require(0. <= t.ema_decay < 1., 'train.ema_decay', t.ema_decay,
             'use a value in [0, 1)')
    _require(t.batch_size % num_devices == 0, 'train.batch_size',
             t.batch_size,
             f'must divide over the {num_devices} devices: use a multiple '
             f'of {num_devices}')
  if 'eval' in stages:
    _validate_eval(config, num_devices // jax.process_count())
  if 'distill' in stages:
    d = config.distill
    _require(m.mean_type != 'eps', 'model.mean_type', m.mean_type,
             "eps is unstable for distillation (x_hat = (z - sigma eps)/alpha "
             "as alpha -> 0); use 'x', 'v' or 'both'")
    for field in ('batch_size', 'steps_per_round', 'start_num_steps',
                  'end_num_steps', 'last_rounds_multiplier',
                  'long_rounds_max_steps'):
      _require(d[field] > 0, f'distill.{field}', d[field], 'must be positive')
    _require(d.learning_rate > 0, 'distill.learning_rate', d.learning_rate,
             'must be positive')
    ratio = d.start_num_steps // d.end_num_steps
    _require(
        d.start_num_steps % d.end_num_steps == 0 and _is_power_of_two(ratio),
        'distill.start_num_steps', d.start_num_steps,
        f'must be distill.end_num_steps={d.end_num_steps} times a power of '
        'two (each round halves the steps)')
    _require(d.batch_size % num_devices == 0, 'distill.batch_size',
             d.batch_size,
             f'must divide over the {num_devices} devices: use a multiple '
             f'of {num_devices}')


def validate_workdir(workdir):
  """Raises ConfigError unless `workdir` is or can become a writable dir.

  Creates nothing that stays: the workdir itself is made later, once every
  other check has passed. Remote paths (gs://...) are left to the first write.
  """
  if '://' in workdir:
    return
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'--workdir={workdir} cannot be used: {existing} is not '
                      'a directory; choose another --workdir')
  try:
    # What os.access cannot tell: read-only mounts, ACLs, root squash.
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} cannot be used: {existing} is not '
                      f'writable ({e.strerror or e}); choose another '
                      '--workdir') from None


def _validate_eval(config, local_devices):
  from diffusion_distill import inference  # pylint: disable=g-import-not-at-top
  e = config.eval
  for field in ('num_samples', 'batch_size', 'num_seeds'):
    _require(e[field] > 0, f'eval.{field}', e[field], 'must be positive')
  _require(e.num_samples >= 2, 'eval.num_samples', e.num_samples,
           'a Frechet distance needs at least 2 samples')
  _require(e.batch_size % local_devices == 0, 'eval.batch_size', e.batch_size,
           f'must divide over the {local_devices} local devices')
  for field in ('teacher_samplers', 'student_samplers'):
    for s in e[field]:
      _require(s in inference.SAMPLERS, f'eval.{field}', tuple(e[field]),
               f'each sampler must be one of {inference.SAMPLERS}')
  for n in e.sample_steps:
    _require(int(n) > 0, 'eval.sample_steps', tuple(e.sample_steps),
             'step counts must be positive')
  _require(0. <= e.ancestral_noise_interp <= 1., 'eval.ancestral_noise_interp',
           e.ancestral_noise_interp, 'use a value in [0, 1]')


# What a teacher checkpoint may be, for the messages below.
_TEACHER_FORMS = ('give the workdir of a trained teacher, its checkpoints '
                  'directory or a checkpoint file released with the paper')
# config.model fields that shape the parameter tree.
_ARCH_FIELDS = ('ch', 'emb_ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions',
                'num_heads', 'head_dim', 'resblock_resample', 'mean_type')
_CLASS_EMB = 'class_emb/kernel'  # [num_classes, emb_ch]; absent if 1 class


def teacher_description(config, workdir):
  """How messages name the teacher: the config field, or the workdir."""
  path = config.distill.teacher_checkpoint
  if path:
    return f'config.distill.teacher_checkpoint={path!r}'
  return f'the teacher in --workdir={workdir}'


def missing_teacher_error(config, workdir):
  """CheckpointError for a teacher path that holds no checkpoint of ours."""
  from diffusion_distill import checkpoints  # pylint: disable=g-import-not-at-top
  path = config.distill.teacher_checkpoint
  if not path:
    return checkpoints.CheckpointError(
        f'no teacher checkpoint in --workdir={workdir}: '
        f'config.distill.teacher_checkpoint is unset and config.stages='
        f'{tuple(config.stages)} trains no teacher; add \'teacher\' to '
        'config.stages or set --config.distill.teacher_checkpoint=PATH')
  what = teacher_description(config, workdir)
  if '://' not in path and not os.path.exists(path):
    return checkpoints.CheckpointError(f'{what} does not exist: '
                                       f'{_TEACHER_FORMS}')
  try:
    empty = os.path.isdir(path) and not os.listdir(path)
  except OSError as e:
    return checkpoints.CheckpointError(
        f'{what} cannot be read ({e.strerror or e}): {_TEACHER_FORMS}')
  where = ('it is an empty directory' if empty else
           'it has no teacher/checkpoints, checkpoints or numbered step '
           'directory')
  return checkpoints.CheckpointError(f'{what} holds no checkpoint ({where}): '
                                     f'{_TEACHER_FORMS}')


def unreadable_teacher_error(config, workdir, error):
  from diffusion_distill import checkpoints  # pylint: disable=g-import-not-at-top
  why = ' '.join(str(error).split())
  why = why if len(why) <= 400 else why[:397] + '...'
  return checkpoints.CheckpointError(
      f'{teacher_description(config, workdir)} cannot be read: {why}; '
      f'{_TEACHER_FORMS}')


def check_teacher_meta(meta, config, what):
  """Raises CheckpointError if a teacher of ours was trained otherwise.

  `meta` is what the teacher's checkpoint recorded (inference.model_meta):
  its data set and parameterization must be those of `config`.
  """
  from diffusion_distill import checkpoints  # pylint: disable=g-import-not-at-top
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


def check_teacher_tree(expected, actual, config, what, saved_model=None):
  """Raises CheckpointError naming the first parameter whose shape differs.

  A different class count is named as such (the fix is in config.dataset);
  with the teacher's own `saved_model` config (a teacher of ours), the
  message says which config.model fields to change.
  """
  from diffusion_distill import checkpoints  # pylint: disable=g-import-not-at-top
  from diffusion_distill import input_pipeline  # pylint: disable=g-import-not-at-top
  want = checkpoints.flat_shapes(expected).get(_CLASS_EMB)
  got = checkpoints.flat_shapes(actual).get(_CLASS_EMB)
  want_n, got_n = (want or (1,))[0], (got or (1,))[0]
  if want_n != got_n:
    teacher = (f'class-conditional with {got_n} classes (parameter '
               f'{_CLASS_EMB} {got})' if got_n > 1 else
               f'unconditional (no parameter {_CLASS_EMB})')
    if got_n == 1:
      fix = 'set --config.dataset.class_conditional=False'
    else:
      names = [n for n, i in input_pipeline._DATASETS.items()  # pylint: disable=protected-access
               if i.num_classes == got_n]
      fix = ('set --config.dataset.class_conditional=True'
             if config.dataset.class_conditional is False and
             config.dataset.name in names else
             f'set --config.dataset.name to a data set of {got_n} classes '
             f'({", ".join(names) or "none is known"}) with '
             '--config.dataset.class_conditional=True')
    raise checkpoints.CheckpointError(
        f'{what} is {teacher} but config.dataset.name='
        f'{config.dataset.name!r} with config.dataset.class_conditional='
        f'{bool(config.dataset.class_conditional)} gives {want_n} '
        f'class{"es" if want_n > 1 else ""}: {fix}')
  try:
    checkpoints.check_same_tree(expected, actual, what)
  except checkpoints.CheckpointError as e:
    fields = []
    if saved_model is not None:
      for f in _ARCH_FIELDS:
        ours, theirs = config.model.get(f), saved_model.get(f)
        if isinstance(ours, (list, tuple)) or isinstance(theirs, (list, tuple)):
          ours, theirs = tuple(ours or ()), tuple(theirs or ())
        if f in saved_model and ours != theirs:
          fields.append((f, theirs))
    if fields:
      fix = 'the teacher has ' + ', '.join(
          f'model.{f}={v!r}' for f, v in fields) + ': set ' + ' '.join(
              f'--config.model.{f}={v!r}'.replace(' ', '') for f, v in fields)
    else:
      fix = ('set config.model (' + ', '.join(_ARCH_FIELDS) + ") to the "
             "teacher's")
    raise checkpoints.CheckpointError(f'{e}; {fix}') from None


def _is_under(path, workdir):
  if '://' in path or '://' in workdir:
    return path.rstrip('/').startswith(workdir.rstrip('/'))
  path, workdir = os.path.abspath(path), os.path.abspath(workdir)
  return path == workdir or path.startswith(workdir + os.sep)


def validate_sources(config, workdir):
  """Raises unless every model that the stages read is there and fits `config`.

  Distillation's teacher is loaded as distill.load_teacher loads it when the
  stage starts (the same checks, before any work): missing, unreadable, of
  another data set, class count, parameterization or architecture. For
  evaluation: the teacher it sweeps and the finished students, which must
  exist and be of config's data set. Raises ConfigError or CheckpointError,
  one line each.
  """
  from diffusion_distill import checkpoints  # pylint: disable=g-import-not-at-top
  from diffusion_distill import distill  # pylint: disable=g-import-not-at-top
  stages = tuple(config.stages)
  d = config.distill
  path = d.teacher_checkpoint
  if path and 'teacher' in stages and (
      'distill' in stages or 'eval' in stages) and not _is_under(path, workdir):
    raise ConfigError(
        f'config.distill.teacher_checkpoint={path!r} is invalid with '
        f'config.stages={stages}: the teacher trained in --workdir={workdir} '
        'would be ignored; drop \'teacher\' from config.stages or unset '
        'distill.teacher_checkpoint')
  if 'distill' in stages and (path or 'teacher' not in stages):
    _, teacher_steps = distill.load_teacher(config, workdir)
    if teacher_steps:
      ratio = teacher_steps // d.end_num_steps
      _require(
          teacher_steps % d.end_num_steps == 0 and _is_power_of_two(ratio),
          'distill.end_num_steps', d.end_num_steps,
          f'{teacher_description(config, workdir)} samples in '
          f'{teacher_steps} steps, where distillation starts: use '
          f'{teacher_steps} divided by a power of two')
  if 'eval' not in stages or 'teacher' in stages:
    return
  # Evaluation alone, or after distillation: what will it find?
  what = teacher_description(config, workdir)
  is_file = bool(path) and epath.Path(path).is_file()
  if is_file:
    if 'distill' not in stages:
      distill.load_teacher(config, workdir)  # What evaluation loads.
    teacher_dir = None
  else:
    teacher_dir = checkpoints.stage_checkpoint_dir(path or workdir)
    if teacher_dir is None and path:
      raise missing_teacher_error(config, workdir)
  if teacher_dir is not None:
    try:
      meta = checkpoints.Checkpointer(teacher_dir,
                                      read_only=True).restore_meta()
    except checkpoints.CheckpointError as e:
      raise unreadable_teacher_error(config, workdir, e) from None
    name = meta.get('dataset', {}).get('name', config.dataset.name)
    if name != config.dataset.name:
      raise checkpoints.CheckpointError(
          f'{what} was trained with dataset.name={name!r} but '
          f'config.dataset.name={config.dataset.name!r}, whose metric and '
          f'reference images evaluation uses: set --config.dataset.name={name}')
    own = meta.get('num_sample_steps')
    steps = tuple(int(n) for n in config.eval.sample_steps)
    if meta.get('stage') == 'distill' and any(n != own for n in steps):
      raise ConfigError(
          f'config.eval.sample_steps={steps} is invalid: {what} is a student '
          f'distilled for {own} sampling steps (not a teacher to sweep over '
          f'step counts): set --config.eval.sample_steps="({own},)" or point '
          'distill.teacher_checkpoint to an undistilled teacher')
  if 'distill' in stages:
    return
  students = distill.finished_students(workdir)
  for n, student_dir in students:
    meta = checkpoints.Checkpointer(student_dir, read_only=True).restore_meta()
    name = meta.get('dataset', {}).get('name', config.dataset.name)
    if name != config.dataset.name:
      raise checkpoints.CheckpointError(
          f'the student distilled for {n} steps in {student_dir} was trained '
          f'with dataset.name={name!r} but config.dataset.name='
          f'{config.dataset.name!r}, whose metric and reference images '
          f'evaluation uses: set --config.dataset.name={name}')
  if teacher_dir is None and not is_file and not students:
    raise checkpoints.CheckpointError(
        f'nothing to evaluate: --workdir={workdir} has no teacher checkpoint '
        'and no finished student, and config.distill.teacher_checkpoint is '
        'unset; add \'teacher\' or \'distill\' to config.stages, or set '
        '--config.distill.teacher_checkpoint=PATH')
