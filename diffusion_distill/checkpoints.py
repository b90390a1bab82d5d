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

import dataclasses
import errno
import logging
import os
import resource
import shutil
import tempfile
from typing import Any

import flax.serialization
import flax.traverse_util
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


log = logging.getLogger(__name__)


class CheckpointError(Exception):
  """A checkpoint is missing or unusable; the message says which and why."""


def _manager(directory, max_to_keep=2, read_only=False):
  """An Orbax CheckpointManager; a reader creates and cleans up nothing.

  Readers are not Orbax `read_only` managers, which log a warning each time
  one is opened: Checkpointer never asks a reader to save or delete.
  """
  options = ocp.CheckpointManagerOptions(
      create=not read_only,
      preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
      # A save that was killed or failed leaves a temporary directory; the
      # next writer of this directory removes it.
      cleanup_tmp_directories=not read_only,
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
    self._max_to_keep = max_to_keep
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

    A save that cannot fit (the disk's free space, or the file size limit of
    `ulimit -f`, below the state's size) is refused before anything is
    written. A write that fails anyway (a quota, an I/O error) raises one
    line naming the directory and the fix, after Orbax's own report of the
    error; the checkpoints saved before stay as they were and usable, and
    the failed step's temporary directory is removed by the next manager of
    the directory (Orbax's cleanup_tmp_directories).
    """
    step = int(step)
    state = jax.device_get(state)
    previous = self.latest_step()
    kept = (f'the checkpoint at step {previous} is intact'
            if previous is not None else 'no earlier checkpoint exists')
    fail = lambda why: CheckpointError(
        f'cannot save the checkpoint at step {step} in {self.directory}: '
        f'{why}; free space on that disk (or check that it is writable and '
        f'healthy) and run the same command again; {kept}')
    short = _lack_of_room(self.directory, state)
    if short:
      raise fail(short)
    try:
      self._mngr.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(_to_global(_fields(state))),
              meta=ocp.args.JsonSave(meta)),
          force=True)
      self._mngr.wait_until_finished()
    except ocp.checkpoint_manager.StepAlreadyExistsError:
      raise  # A caller's mistake, not a failed write: nothing to clean up.
    except (OSError, ValueError, RuntimeError) as e:
      # Tensorstore reports write failures as ValueError, Orbax's own writes
      # as OSError, its background threads' as RuntimeError.
      self._reopen()
      raise fail(f'{_write_failure(e)} ({_one_line(e, 240, keep_end=True)})'
                 ) from e

  def _reopen(self):
    """A new manager after a failed save: it removes the step's temporary
    directory (cleanup_tmp_directories) and rereads the steps on disk."""
    try:
      self._mngr.close()
    except Exception as e:  # pylint: disable=broad-except
      log.warning('closing the checkpoints in %s after a failed save: %s',
                  self.directory, _one_line(e))
    self._mngr = _manager(self.directory, self._max_to_keep)

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
        state=ocp.args.StandardRestore(_abstract_global(_fields(template))),
        meta=ocp.args.JsonRestore()))
    state = _to_host(out['state'])
    if dataclasses.is_dataclass(template):
      state = template.replace(**state)
    return state, dict(out['meta']), step

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
        multihost_utils.sync_global_devices(f'set aside step {step}')
      where = f'moved to {dst}'
    log.warning('checkpoint at step %d in %s is unusable (%s): restored '
                    'step %d instead; the unusable one is %s', step,
                    self.directory, why, restored_step, where)

  def close(self):
    self._mngr.close()


def _failure(code):
  """'the disk is full (No space left on device, errno 28)' for an errno."""
  what = {errno.ENOSPC: 'the disk is full',
          getattr(errno, 'EDQUOT', -1): 'the disk quota is exceeded',
          errno.EFBIG: 'a file size limit was hit'}.get(code, 'the write failed')
  return f'{what} ({os.strerror(code)}, errno {code})'


def _lack_of_room(directory, state):
  """Why `state` cannot be saved under `directory`, or None if it may fit.

  Its uncompressed size bounds what Orbax writes (float parameters hardly
  compress). Remote paths (gs://) are left to the write itself.
  """
  if '://' in os.fspath(directory):
    return None
  need = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
  limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
  if limit != resource.RLIM_INFINITY and limit < need:
    return (f'{_failure(errno.EFBIG)}: the state is {need} bytes and '
            f'`ulimit -f` allows files of {limit} bytes')
  free = shutil.disk_usage(directory).free
  if free < need:
    return (f'{_failure(errno.ENOSPC)}: the state is {need} bytes and '
            f'{free} bytes are free')
  return None


def _write_failure(error):
  """What went wrong in a failed write: the errno of an OSError in the chain
  (Orbax's own writes raise them), else 'the write failed'."""
  e = error
  while e is not None:
    if isinstance(e, OSError) and e.errno:
      return _failure(e.errno)
    e = e.__cause__ or e.__context__
  return 'the write failed'


def _replicated():
  """Replicated over the first device of every process: one copy per host."""
  first = {}
  for d in jax.devices():
    first.setdefault(d.process_index, d)
  mesh = jax.sharding.Mesh(np.array([first[p] for p in sorted(first)]),
                           ('processes',))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _fields(state):
  """A train state as saved: its fields by name, without those that are
  None (a state without a target network is saved as before it could have
  one, so older checkpoints restore into it). Other trees as they are."""
  if not dataclasses.is_dataclass(state):
    return state
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
          if getattr(state, f.name) is not None}


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


def _one_line(error, limit=300, keep_end=False):
  """`Type: message` on one line, cut to `limit` characters: at the end, or
  in the middle with `keep_end` (where a chained I/O error names its cause)."""
  text = ' '.join(f'{type(error).__name__}: {error}'.split())
  if len(text) <= limit:
    return text
  if keep_end:
    head = limit // 3
    return text[:head] + ' ... ' + text[-(limit - head - 5):]
  return text[:limit - 3] + '...'


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


def unwritable(directory):
  """Why `directory` cannot be created and written here, or None.

  Creates nothing that stays (what os.access cannot tell, read-only mounts,
  ACLs, root squash, is tried with a temporary file in the nearest existing
  parent). Remote paths (gs://...) are left to the first write.
  """
  if '://' in directory:
    return None
  existing = os.path.abspath(directory)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return f'{existing} is not a directory'
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    return f'{existing} is not writable ({e.strerror or e})'
  return None


def write_atomically(path, data):
  """Writes str or bytes so that `path` is either absent, old or complete."""
  path = epath.Path(path)
  tmp = path.parent / (path.name + '.tmp')
  if isinstance(data, str):
    tmp.write_text(data)
  else:
    tmp.write_bytes(data)
  tmp.replace(path)
