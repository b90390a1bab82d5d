"""Checks of a config's values: one place for each, before anything runs.

Every check raises ConfigError, one line naming the field, its value and the
fix. Nothing here needs devices, data or files: those checks (the batch
over the devices, the data set on disk, checkpoints, Inception weights) are
preflight's, on the machine that runs the work. Each stage's section
(stages/) is checked by its own module, so this module imports the stages:
what only parses flags (cli, sample.py) uses field_checks.
"""

import json
import math
import os

from diffusion_distill import dataset_info
from diffusion_distill import diffusion
from diffusion_distill import field_checks
from diffusion_distill import models
from diffusion_distill import schedules
from diffusion_distill import stages as stages_lib
from diffusion_distill.models import unet



def stage_order():
  """The stages config.stages may name, in the order they run (stages/)."""
  return tuple(stages_lib.REGISTRY)


ConfigError = field_checks.ConfigError
require = field_checks.require
_is_int = field_checks.is_int
_is_number = field_checks.is_number
check_known_fields = field_checks.check_known_fields
# Beyond these the cosine schedule's exp(-logsnr / 2), in float32, leaves
# the normal range (it overflows at -177 and underflows at 104).
LOGSNR_LIMIT = 100.
# One 3x3 convolution this wide holds 9 x 16384**2 = 2.4e9 parameters.
MAX_WIDTH = 2**14
# Each block adds two 3x3 convolutions at every level (the paper uses 3).
MAX_RES_BLOCKS = 100
# tf.data holds that many batches in host memory ahead of the step.
MAX_PREFETCH = 1000


_count = field_checks.count
_COUNT = field_checks.COUNT

# field -> (test, fix) of the fields of no stage's section (each stage's are
# its RANGES). Fields with a choice of names are in _CHOICES, fields that
# depend on each other in the _check_* functions below and the stages'.
_RANGES = {
    'seed': (lambda v: _is_int(v) and 0 <= v < 2**31,
             'use an integer in [0, 2**31)'),
    'dataset.shuffle_buffer': (_count(1), _COUNT),
    'dataset.prefetch': (lambda v: _is_int(v) and 1 <= v <= MAX_PREFETCH,
                         f'use 1 to {MAX_PREFETCH} batches (each is held in '
                         'host memory; a few suffice)'),
    'model.emb_ch': (lambda v: _is_int(v) and 1 <= v <= MAX_WIDTH,
                     f'use a positive width up to {MAX_WIDTH}'),
    'model.num_res_blocks': (lambda v: _is_int(v) and
                             1 <= v <= MAX_RES_BLOCKS,
                             f'use 1 to {MAX_RES_BLOCKS} blocks per level '
                             '(the paper uses 3)'),
    'model.dropout': (lambda v: _is_number(v) and 0 <= v < 1,
                      'use a value in [0, 1)'),
}

_CHOICES = {
    'dataset.name': dataset_info.NAMES,
    'model.mean_type': diffusion.MEAN_TYPES,
    'model.loss_weighting': diffusion.LOSS_WEIGHTINGS,
    'model.dtype': tuple(models.DTYPES),
    'schedule.name': tuple(schedules.SCHEDULES),
    # guide_stage.SCHEDULES
    'guidance.learning_rate_schedule': ('linear', 'constant'),
}


def _get(config, field):
  section, _, name = field.rpartition('.')
  return (config[section] if section else config)[name]


def check_config(config, schema=None):
  """Raises ConfigError for the first wrong field of `config`.

  With `schema` (configs/base.py's config), a field that it lacks is an
  error too, with the closest known name: a misspelt field set in a config
  file would otherwise be ignored.
  """
  if schema is not None:
    check_known_fields(config, schema)
  _check_stages(config)
  for field, choices in _CHOICES.items():
    value = _get(config, field)
    require(value in choices, field, value, f'use one of {choices}')
  ranges = dict(_RANGES)
  for stage in stages_lib.REGISTRY.values():
    ranges.update(stage.RANGES)
  for field, (test, fix) in ranges.items():
    value = _get(config, field)
    require(test(value), field, value, fix)
  _check_dataset(config)
  _check_model(config)
  _check_schedule(config)
  for stage in stages_lib.REGISTRY.values():
    stage.check(config)


def _check_stages(config):
  stages, order = tuple(config.stages), stage_order()
  require(stages, 'stages', stages, f'name at least one of {order}')
  for s in stages:
    require(s in order, 'stages', stages,
            f'each stage must be one of {order}')
  require(len(set(stages)) == len(stages) and list(stages) == sorted(
      stages, key=order.index), 'stages', stages,
          f'name each stage once, in the order {order}')


# An image folder's images are resized to at most this side.
MAX_IMAGE_SIZE = 4096


def _check_image_folder(d):
  folder = d.name == dataset_info.IMAGE_FOLDER
  for field in dataset_info.FOLDER_FIELDS:
    require(folder or d.get(field) is None, f'dataset.{field}', d.get(field),
            f"it describes a folder of images "
            f"(--config.dataset.name={dataset_info.IMAGE_FOLDER}); "
            f"{d.name!r} has its own: leave it unset")
  if not folder:
    return
  require(isinstance(d.path, str) and d.path, 'dataset.path', d.path,
          'give the folder of images: --config.dataset.path=DIR (one '
          'sub-folder of images per class, or the images alone)')
  require(_is_int(d.image_size) and 1 <= d.image_size <= MAX_IMAGE_SIZE,
          'dataset.image_size', d.image_size,
          f'give the side the images are cropped and resized to, e.g. '
          f'--config.dataset.image_size=64 (at most {MAX_IMAGE_SIZE})')
  require(d.channels is None or (_is_int(d.channels) and d.channels in (1, 3)),
          'dataset.channels', d.channels,
          "use 1 (grayscale) or 3 (RGB), or leave it unset for the images'")
  require(d.num_classes is None or _count(1)(d.num_classes),
          'dataset.num_classes', d.num_classes,
          'leave it unset: it is the number of class sub-folders (' + _COUNT +
          ')')


def _check_dataset(config):
  d = config.dataset
  _check_image_folder(d)
  info = dataset_info.of(config)
  folder_unread = d.name == dataset_info.IMAGE_FOLDER and d.num_classes is None
  require(not d.class_conditional or folder_unread or info.num_classes > 1,
          'dataset.class_conditional', d.class_conditional,
          f'{d.name!r} has no labels: set '
          '--config.dataset.class_conditional=False')
  require(not d.random_flip or info.allows_flip, 'dataset.random_flip',
          d.random_flip,
          f'{d.name!r} images must not be mirrored (a mirrored digit is '
          'not a digit): set --config.dataset.random_flip=False')
  require(d.data_dir is None or (isinstance(d.data_dir, str) and d.data_dir),
          'dataset.data_dir', d.data_dir,
          'give a directory, or leave it unset for TFDS_DATA_DIR')


def _widths_fail(ch, ch_mult, num_res_blocks):
  return [w for w in unet.group_norm_widths(ch, ch_mult, num_res_blocks)
          if unet.num_groups(w) is None]


def _nearest_working_ch(ch, ch_mult, num_res_blocks):
  """The closest ch below and above `ch` whose widths GroupNorm divides."""
  works = lambda c: c >= 4 and c % 2 == 0 and not _widths_fail(
      c, ch_mult, num_res_blocks)
  below = next((c for c in range(ch - 1, 3, -1) if works(c)), None)
  above = next(c for c in range(ch + 1, 32 * ch + 33) if works(c))
  return [c for c in (below, above) if c is not None]


def _check_model(config):
  m = config.model
  info = dataset_info.of(config)
  require(_is_int(m.ch) and m.ch >= 4 and m.ch % 2 == 0, 'model.ch', m.ch,
          'use an even width of at least 4 (the time embedding has ch '
          'features)')
  mult = tuple(m.ch_mult)
  require(mult and all(_is_int(k) and k > 0 for k in mult), 'model.ch_mult',
          mult, 'give one positive integer per resolution level, e.g. (1, 2)')
  widest = m.ch * max(mult)
  field, value = (('model.ch', m.ch) if m.ch > MAX_WIDTH else
                  ('model.ch_mult', mult))
  require(widest <= MAX_WIDTH, field, value,
          f'the widest level would have model.ch x {max(mult)} = {widest} '
          f'channels: use widths up to {MAX_WIDTH} (one 3x3 convolution that '
          'wide holds 2.4e9 parameters)')
  levels = len(mult)
  require(info.image_size % 2**(levels - 1) == 0, 'model.ch_mult', mult,
          f'{levels} levels halve {info.image_size}x{info.image_size} '
          f'images {levels - 1} times: use at most '
          f'{int(math.log2(info.image_size & -info.image_size)) + 1} levels')
  bad = _widths_fail(m.ch, mult, m.num_res_blocks)
  require(not bad, 'model.ch', m.ch,
          f'GroupNorm\'s 32 groups cannot divide the U-Net width '
          f'{bad[0] if bad else 0} (from ch x ch_mult={mult} and the skip '
          'concatenations); the nearest ch that work are ' + ' and '.join(
              map(str, _nearest_working_ch(m.ch, mult, m.num_res_blocks))))
  _check_attention(m, info, mult)


def _check_attention(m, info, mult):
  sizes = [info.image_size // 2**i for i in range(len(mult))]
  for r in m.attn_resolutions:
    require(r in sizes, 'model.attn_resolutions', tuple(m.attn_resolutions),
            f'the U-Net has no resolution {r} for {info.image_size}x'
            f'{info.image_size} images: use some of {tuple(sizes)}')
  # The middle always attends, at the lowest resolution.
  widths = {m.ch * mult[-1]} | {
      m.ch * k for k, r in zip(mult, sizes) if r in m.attn_resolutions}
  if m.head_dim is not None:
    require(_is_int(m.head_dim) and m.head_dim > 0 and all(
        w % m.head_dim == 0 for w in widths), 'model.head_dim', m.head_dim,
            f'must divide the channels where the U-Net attends '
            f'{tuple(sorted(widths))}')
  else:
    require(_is_int(m.num_heads) and m.num_heads > 0 and all(
        w % m.num_heads == 0 for w in widths), 'model.num_heads',
            m.num_heads, f'must divide the channels where the U-Net attends '
            f'{tuple(sorted(widths))} (or set model.head_dim)')


def _check_schedule(config):
  s = config.schedule
  for field in ('logsnr_min', 'logsnr_max'):
    require(_is_number(s[field]) and abs(s[field]) <= LOGSNR_LIMIT,
            f'schedule.{field}', s[field],
            f'use a number in [-{LOGSNR_LIMIT:g}, {LOGSNR_LIMIT:g}] (the '
            'cosine schedule computes exp(-logsnr / 2) in float32; the paper '
            'uses -20 and 20)')
  require(s.logsnr_min < s.logsnr_max, 'schedule.logsnr_min', s.logsnr_min,
          f'must be below schedule.logsnr_max={s.logsnr_max} (the paper uses '
          '-20 and 20)')


def check_batch_divides(config, num_devices, num_local_devices=None):
  """The batches of the stages that run must divide over the devices (the
  evaluation's over the local ones, unless `num_local_devices` is None)."""
  for name in config.stages:
    stage = stages_lib.REGISTRY[name]
    field = f'{stage.SECTION}.batch_size'
    n = config[stage.SECTION].batch_size
    if not stage.LOCAL_BATCH:
      require(n % num_devices == 0, field, n,
              f'must divide over the {num_devices} devices: use a multiple '
              f'of {num_devices}')
    elif num_local_devices is not None:
      require(n % num_local_devices == 0, field, n,
              f'must divide over the {num_local_devices} local devices')


def _is_under(path, workdir):
  if '://' in path or '://' in workdir:
    return path.rstrip('/').startswith(workdir.rstrip('/'))
  path, workdir = os.path.abspath(path), os.path.abspath(workdir)
  return path == workdir or path.startswith(workdir + os.sep)


def check_teacher_choice(config, workdir):
  """A teacher trained in this run is the one distillation and eval use."""
  stages = tuple(config.stages)
  path = config.distill.teacher_checkpoint
  if not path or _is_under(path, workdir):
    return
  needs = {name: stages_lib.REGISTRY[name].teacher_need(config)
           for name in stages}
  trainers = [name for name, need in needs.items() if need is None]
  if trainers and any(need is not None for need in needs.values()):
    raise ConfigError(
        f'config.distill.teacher_checkpoint={path!r} is invalid with '
        f'config.stages={stages}: the teacher trained in --workdir={workdir} '
        f'would be ignored; drop {trainers[0]!r} from config.stages or unset '
        'distill.teacher_checkpoint')


# What a stage that has started has trained with: a re-run in its workdir
# may not change it (the run would no longer be the one that was stopped).
# Every other field may change, e.g. train.num_steps (to train longer; not
# past train.decay_steps, which is frozen),
# distill.end_num_steps (to distill further), the intervals, model.dtype
# (checkpoints are float32 whatever the compute dtype) and config.eval.
# Every stage's own are its FROZEN (stages/).
_FROZEN_ONCE_ANY_STARTED = ('seed', 'dataset.name', 'dataset.class_conditional',
                            'dataset.random_flip', 'dataset.shuffle_buffer',
                            'model.*', 'schedule.*')
_MAY_ALWAYS_CHANGE = ('model.dtype',)
# Fields added since workdirs were first written, with the value that a
# config.json without them trained with.
_BEFORE_THE_FIELD = {'train.decay_steps': 0, 'guidance.ema_decay': 0.,
                     'guidance.learning_rate_schedule': 'linear',
                     'guidance.w_warmup_steps': 0,
                     'distill.loss_weighting': None}


def flat(tree, prefix=''):
  """{'section.field': value} of a nested dict (a config's to_dict())."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def _frozen(field, started):
  if field in _MAY_ALWAYS_CHANGE:
    return False
  patterns = list(_FROZEN_ONCE_ANY_STARTED) if started else []
  for name, stage in stages_lib.REGISTRY.items():
    if name in started:
      patterns += stage.FROZEN
  return any(field == p or (p.endswith('.*') and field.startswith(p[:-1]))
             for p in patterns)


def resume_changes(saved, config, workdir, started):
  """[(field, old, new)] of the fields that differ from the `saved` config
  (the workdir's config.json) and may change; raises ConfigError, naming
  each, if any of the others differ. `started`: the stages with checkpoints.
  """
  old = {**_BEFORE_THE_FIELD, **flat(saved)}
  new = flat(json.loads(config.to_json_best_effort()))
  changed = [(f, old[f], new[f]) for f in sorted(new)
             if f in old and old[f] != new[f]]
  frozen = [c for c in changed if _frozen(c[0], started)]
  if frozen:
    raise ConfigError(
        f'--workdir={workdir} holds a run that trained with other values of '
        + ', '.join(f'config.{f} ({o!r} -> {n!r})' for f, o, n in frozen)
        + ': resuming would mix two runs; use a new --workdir, or set them '
        'back: ' + ' '.join(
            f'--config.{f}={json.dumps(o)}'.replace(' ', '')
            for f, o, _ in frozen))
  return changed
