"""Checkpoints: Orbax CheckpointManager for our stages, and the paper's release format.

A stage's checkpoint holds two items: `state` (the TrainState) and `meta`
(JSON: num_sample_steps and what the stage is). The trainer hands over host
NumPy arrays, the same on every process; they are saved as global jax.Arrays
replicated over one device per process, so that Orbax coordinates the write
across processes (it cannot save process-local arrays from 2+ processes) and
the first replica alone writes the data.
Orbax writes to a temporary directory and renames it when complete, so a
kill during a save never leaves a checkpoint that looks finished.
"""

import errno
import logging as pylogging
import os
import re
import sys
import time
from typing import Any
import warnings

from absl import logging
import flax.serialization
import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(Exception):
  """A checkpoint is missing or unusable; the message says which and why."""


def _manager(directory, max_to_keep=2, read_only=False):
  options = ocp.CheckpointManagerOptions(
      create=not read_only,
      read_only=read_only,
      preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
      # Saves run synchronously: the loop is CPU/host-bound anyway and a
      # synchronous save makes "a checkpoint exists" a simple fact at return.
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      epath.Path(directory), item_names=('state', 'meta'), options=options)


class Checkpointer:
  """Saves and restores one stage's TrainState under `directory`.

  Restoring without a step takes the latest USABLE checkpoint: one whose
  files are truncated or garbled, or that lacks an item, is skipped with a
  warning for the one before it (Orbax keeps the latest `max_to_keep`). In a
  writable directory the skipped step is then renamed to `<step>.corrupt`:
  Orbax lists only all-digit names, so the stage can save that step again,
  and nothing the user has is deleted. `latest_step()` then names the step
  that was restored.
  """

  def __init__(self, directory, max_to_keep=2, read_only=False):
    self.directory = os.fspath(directory)
    self._read_only = read_only
    self._mngr = _manager(directory, max_to_keep, read_only)
    # Steps found unusable by a read-only checkpointer, which cannot move
    # them aside.
    self._unusable = set()

  def latest_step(self):
    steps = self.all_steps()
    return max(steps) if steps else None

  def all_steps(self):
    return [s for s in self._mngr.all_steps() if s not in self._unusable]

  def save(self, step: int, state: Any, meta: dict):
    """Writes `state` and `meta` as checkpoint `step`, or raises CheckpointError.

    A write that fails (a full disk, a quota, an I/O error) raises one line
    naming the directory and the fix; the checkpoints saved before stay as
    they were and usable, and the failed step's temporary files are removed.
    """
    step = int(step)
    state = _to_global(jax.device_get(state))
    _drop_closed_loop_noise()  # What tensorstore reports after a failed write.
    previous = self.latest_step()
    # Before the save: its failed writes' tasks may be collected (and
    # reported) at any time after the first failure, inside Orbax too.
    _FailedWriteEchoes.install(self.directory)
    try:
      with _OrbaxErrorsHeld():
        self._mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(meta)),
            force=True)
        self._mngr.wait_until_finished()
    except ocp.checkpoint_manager.StepAlreadyExistsError:
      raise  # A caller's mistake, not a failed write: nothing to clean up.
    except (OSError, ValueError, RuntimeError) as e:
      # Tensorstore reports write failures as ValueError, Orbax's own writes
      # as OSError, its background threads' as RuntimeError.
      # The writes that never started are reported when collected.
      warnings.filterwarnings('ignore', message=r"coroutine '.*' was never "
                              'awaited', category=RuntimeWarning)
      self._discard_failed_save(step)
      kept = (f'the checkpoint at step {previous} is intact'
              if previous is not None else 'no earlier checkpoint exists')
      raise CheckpointError(
          f'cannot save the checkpoint at step {step} in {self.directory}: '
          f'{_write_failure(e)}; free space on that disk (or check that it '
          f'is writable and healthy) and run the same command again; {kept} '
          f'({_one_line(e, 200)})') from e

  def _discard_failed_save(self, step):
    """After a failed save: its temporary directory goes, the step list is reread."""
    if jax.process_index() == 0:
      for tmp in epath.Path(self.directory).glob(f'{step}{_TMP_SUFFIX}*'):
        # Tensorstore may still finish writes that were under way when the
        # first one failed: remove until the directory stays gone.
        error = 'it keeps reappearing'
        for attempt in range(10):
          try:
            tmp.rmtree()
          except OSError as e:
            error = _one_line(e)
          time.sleep(0.05 * (attempt + 1))
          if not tmp.exists():
            break
        else:
          logging.warning('cannot remove %s left by a failed save: %s', tmp,
                          error)
    try:
      self._mngr.reload()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('cannot reread the checkpoints in %s: %s',
                      self.directory, _one_line(e))

  def restore_meta(self, step=None):
    _, out = self._restore(step, ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return dict(out['meta'])

  def restore(self, template: Any, step=None):
    """(state, meta, step) in `template`'s structure.

    At `step`, or by default the latest usable step: the one returned, older
    than latest_step() was before the call when that checkpoint is unusable.
    """
    step, out = self._restore(step, ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract_global(template)),
        meta=ocp.args.JsonRestore()))
    return _to_host(out['state']), dict(out['meta']), step

  def restore_params(self, params_template: Any, which='ema_params', step=None):
    """Restores only one parameter tree of the state (no optimizer template needed).

    `params_template` may hold arrays or jax.ShapeDtypeStructs.
    """
    abstract = _abstract_global(params_template)
    _, out = self._restore(step, ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={which: abstract},
            restore_args={which: jax.tree.map(
                lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract)},
            partial_restore=True),
        meta=ocp.args.JsonRestore()))
    return _to_host(out['state'][which]), dict(out['meta'])

  def _restore(self, step, args):
    """(step, restored items) at `step`, or at the latest usable one."""
    _drop_closed_loop_noise()
    if step is not None:
      try:
        return step, self._mngr.restore(step, args=args)
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(
            f'checkpoint at step {step} in {self.directory} cannot be '
            f'restored: {_one_line(e)}') from e
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f'no checkpoint in {self.directory}')
    failed = []
    for s in steps:
      try:
        out = self._mngr.restore(s, args=args)
      except Exception as e:  # pylint: disable=broad-except
        # Anything can come out of a garbled file (tensorstore, JSON, msgpack
        # errors). Only a restore of an older step shows that the newer
        # files, not e.g. the template, were at fault.
        failed.append((s, _one_line(e)))
        continue
      for bad, why in failed:
        self._set_aside(bad, why, s)
      if failed and not self._read_only:
        self._mngr.reload()
      return s, out
    # Nothing is renamed here: the user decides what to do with the files.
    raise CheckpointError(
        f'no usable checkpoint in {self.directory} ('
        + '; '.join(f'step {s}: {why}' for s, why in failed)
        + '); nothing was overwritten or deleted: repair or move this '
        'directory aside to start the stage afresh')

  def _set_aside(self, step, why, restored_step):
    """Skips `step` from now on; renames it to `<step>.corrupt` if writable."""
    if self._read_only:
      self._unusable.add(step)
      where = 'left in place (read-only)'
    else:
      src = epath.Path(self.directory) / str(step)
      dst = src.parent / f'{step}.corrupt'
      n = 1
      while dst.exists():
        n += 1
        dst = src.parent / f'{step}.corrupt{n}'
      if jax.process_index() == 0:
        try:
          src.rename(dst)
        except OSError as e:
          raise CheckpointError(
              f'checkpoint at step {step} in {self.directory} is unusable '
              f'({why}) and cannot be moved aside to {dst.name}: {e}') from e
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices(f'set aside step {step}')
      where = f'moved to {dst}'
    logging.warning('checkpoint at step %d in %s is unusable (%s): restored '
                    'step %d instead; the unusable one is %s', step,
                    self.directory, why, restored_step, where)

  def close(self):
    self._mngr.close()


_TMP_SUFFIX = '.orbax-checkpoint-tmp'  # Orbax's name for an unfinished step.


def _write_failure(error):
  """What went wrong in a failed write, e.g. 'No space left on device (errno 28)'."""
  code, e, seen = None, error, 0
  while e is not None and code is None and seen < 10:
    seen += 1
    code = getattr(e, 'errno', None) if isinstance(e, OSError) else None
    if code is None:
      # Tensorstore puts the errno in its message: [os_error_code='28'].
      m = re.search(r"os_error_code='?(\d+)", str(e))
      code = int(m.group(1)) if m else None
    e = e.__cause__ or e.__context__
  if code is None:
    return 'the write failed'
  what = {errno.ENOSPC: 'the disk is full',
          getattr(errno, 'EDQUOT', -1): 'the disk quota is exceeded',
          errno.EFBIG: 'a file size limit was hit'}.get(code, 'the write failed')
  return f'{what} ({os.strerror(code)}, errno {code})'


class _OrbaxErrorsHeld:
  """Holds back what Orbax logs at ERROR during a save, tracebacks included.

  A failed save then shows as our one-line CheckpointError alone; if the save
  succeeds after all, the held records are logged as they came.
  """

  def __init__(self):
    self.held = []

  def filter(self, record):
    if record.levelno >= pylogging.ERROR and '/orbax/' in record.pathname:
      self.held.append(record)
      return False
    return True

  def __enter__(self):
    pylogging.getLogger('absl').addFilter(self)
    return self

  def __exit__(self, exc_type, *unused):
    pylogging.getLogger('absl').removeFilter(self)
    if exc_type is None:
      for record in self.held:
        pylogging.getLogger('absl').handle(record)


class _FailedWriteEchoes(pylogging.Filter):
  """Drops asyncio's late reports of failed checkpoint writes.

  When one of Orbax's parallel writes fails, the others' exceptions are
  never awaited; asyncio logs each, with a traceback, whenever the task is
  garbage-collected (often at exit, after our one-line CheckpointError).
  Only those "exception was never retrieved" records that name a directory
  this process saves checkpoints in are dropped: the save that failed has
  already said so in one line. Any other asyncio error still shows.
  """

  _instance = None

  def __init__(self):
    super().__init__()
    self.directories = set()

  @classmethod
  def install(cls, directory):
    if cls._instance is None:
      cls._instance = cls()
      pylogging.getLogger('asyncio').addFilter(cls._instance)
    cls._instance.directories.add(os.fspath(directory))

  def filter(self, record):
    if 'exception was never retrieved' not in str(record.msg):
      return True
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    return not any(d in text for d in self.directories)


def _replicated():
  """Replicated over the first device of every process: one copy per host."""
  first = {}
  for d in jax.devices():
    first.setdefault(d.process_index, d)
  mesh = jax.sharding.Mesh(np.array([first[p] for p in sorted(first)]),
                           ('processes',))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _to_global(host_tree):
  """Host arrays, equal on every process -> replicated global jax.Arrays."""
  sharding = _replicated()
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      host_tree)


def _abstract_global(template):
  """ShapeDtypeStructs of `template` with the replicated sharding."""
  sharding = _replicated()
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      np.shape(x), x.dtype if hasattr(x, 'dtype') else np.result_type(x),
      sharding=sharding), template)


def _to_host(tree):
  """This process's copy of replicated global arrays, as NumPy."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _drop_closed_loop_noise():
  """Keeps a failed restore to the one line we log or raise.

  When one read of a garbled checkpoint fails, Orbax closes its event loop
  while tensorstore still completes the other reads; each then reports
  "RuntimeError: Event loop is closed" with a traceback through
  sys.unraisablehook, dozens per restore. Only those are dropped.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop_noise', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (unraisable.object is None and isinstance(error, RuntimeError)
            and str(error) == 'Event loop is closed'):
      previous(unraisable)

  hook.drops_closed_loop_noise = True
  sys.unraisablehook = hook


def _one_line(error, limit=300):
  """`Type: message` on one line, cut to `limit` characters."""
  text = ' '.join(f'{type(error).__name__}: {error}'.split())
  return text if len(text) <= limit else text[:limit - 3] + '...'


def load_paper_checkpoint(path):
  """Reads a checkpoint released with the paper: Flax msgpack of a train state.

  Returns (ema_params, num_sample_steps or None). msgpack_restore decodes
  plain data only; nothing in the file is executed or unpickled.
  """
  path = epath.Path(path)
  try:
    raw = path.read_bytes()
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'cannot read teacher checkpoint {path}: {e}') from e
  try:
    tree = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'{path} is not a Flax msgpack checkpoint ({type(e).__name__}: {e})'
    ) from e
  if not isinstance(tree, dict) or 'ema_params' not in tree:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise CheckpointError(
        f'{path} has no ema_params (found {keys}); expected the paper\'s '
        'train state with step, optimizer, ema_params, num_sample_steps')
  num_steps = tree.get('num_sample_steps')
  if num_steps is not None:
    num_steps = int(np.asarray(num_steps))
  return tree['ema_params'], num_steps


def stage_checkpoint_dir(path):
  """The Orbax directory of a stage, given a workdir, a stage dir or itself.

  Accepts WORKDIR (uses its teacher), WORKDIR/teacher, a round's directory,
  or the `checkpoints` directory itself. Returns None when none is there.
  """
  path = epath.Path(path)
  for candidate in (path / 'teacher' / 'checkpoints', path / 'checkpoints',
                    path):
    try:
      if candidate.is_dir() and any(
          p.name.isdigit() for p in candidate.iterdir()):
        return candidate
    except OSError:
      continue
  return None


def flat_shapes(tree):
  """{'a/b/c': shape} of a nested dict of arrays."""
  flat = flax.traverse_util.flatten_dict(tree, sep='/')
  return {k: tuple(np.shape(v)) for k, v in flat.items()}


def check_same_tree(expected, actual, what):
  """Raises CheckpointError naming the first parameter that differs."""
  want, got = flat_shapes(expected), flat_shapes(actual)
  for name in sorted(set(want) | set(got)):
    if name not in got:
      raise CheckpointError(f'{what} lacks parameter {name} {want[name]}: it '
                            'is of another architecture than config.model')
    if name not in want:
      raise CheckpointError(f'{what} has parameter {name} {got[name]} that '
                            'config.model does not: another architecture')
    if want[name] != got[name]:
      raise CheckpointError(
          f'{what}: parameter {name} has shape {got[name]} but config.model '
          f'gives {want[name]}: another architecture')


def write_atomically(path, data):
  """Writes str or bytes so that `path` is either absent, old or complete."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w' if isinstance(data, str) else 'wb') as f:
    f.write(data)
  tf.io.gfile.rename(tmp, path, overwrite=True)
