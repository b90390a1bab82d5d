"""Checkpoints: Orbax CheckpointManager for our stages, and the paper's release format.

A stage's checkpoint holds two items: `state` (the TrainState, saved from
host NumPy arrays) and `meta` (JSON: num_sample_steps and what the stage is).
Orbax writes to a temporary directory and renames it when complete, so a
kill during a save never leaves a checkpoint that looks finished.
"""

import os
from typing import Any

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
  """Saves and restores one stage's TrainState under `directory`."""

  def __init__(self, directory, max_to_keep=2, read_only=False):
    self.directory = os.fspath(directory)
    self._mngr = _manager(directory, max_to_keep, read_only)

  def latest_step(self):
    return self._mngr.latest_step()

  def all_steps(self):
    return list(self._mngr.all_steps())

  def save(self, step: int, state: Any, meta: dict):
    state = jax.device_get(state)
    self._mngr.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(meta)),
        force=True)
    self._mngr.wait_until_finished()

  def restore_meta(self, step=None):
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory}')
    out = self._mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return dict(out['meta'])

  def restore(self, template: Any, step=None):
    """Restores (state, meta) at `step` (default latest) into `template`'s structure."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory}')
    template = jax.tree.map(np.asarray, jax.device_get(template))
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template),
        meta=ocp.args.JsonRestore()))
    return out['state'], dict(out['meta'])

  def restore_params(self, params_template: Any, which='ema_params', step=None):
    """Restores only one parameter tree of the state (no optimizer template needed)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory}')
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={which: jax.tree.map(np.asarray, params_template)},
            restore_args={which: jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                params_template)},
            partial_restore=True),
        meta=ocp.args.JsonRestore()))
    return out['state'][which], dict(out['meta'])

  def close(self):
    self._mngr.close()


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
