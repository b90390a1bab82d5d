"""Fault injection: main.py killed (SIGKILL) anywhere, and a full disk.

A killed run, run again with the same command, must end with the same
parameters, bit for bit, as a run that was never stopped; a checkpoint that
cannot be written (full disk) must leave the previous one usable and stop
with one clear line.

The runs are subprocesses of tests/fault_runner.py, which is main.py plus a
SIGKILL at the point named by $DD_FAULT. They share a JAX compilation cache
(per test session) so that only the uninterrupted reference run compiles.
"""

import errno
import logging
import os
import random
import resource
import signal
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest

from diffusion_distill import checkpoints
from diffusion_distill.stages import distill
from diffusion_distill.stages import teacher as teacher_stage
from diffusion_distill.train_state import TrainState
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, 'tests', 'fault_runner.py')

# Teacher: 6 steps, checkpoints every 2 (4 and 6 kept). Distillation from 4
# sampling steps: rounds to 2 and to 1 step, 4 updates each, checkpoints
# every 2. No teacher sample grids (the rounds draw one at their end).
OVERRIDES = {'train.sample_every_steps': 0, 'distill.start_num_steps': 4}
FLAGS = ['--config=tests/tiny.py', "--config.stages=('teacher','distill')",
         '--config.train.sample_every_steps=0',
         '--config.distill.start_num_steps=4']
TEACHER = os.path.join('teacher', 'checkpoints')
ROUND_2 = os.path.join('distill', 'student_00002', 'checkpoints')
ROUND_1 = os.path.join('distill', 'student_00001', 'checkpoints')
STAGES = (TEACHER, ROUND_2, ROUND_1)
TIMEOUT = 420


def _config(data_dir):
  config = tiny.tiny_config(data_dir, **OVERRIDES)
  config.stages = ('teacher', 'distill')
  return config


@pytest.fixture(scope='module')
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('jax_cache'))


def _run(workdir, data_dir, jax_cache, fault=''):
  """main.py through the fault runner; returns the CompletedProcess."""
  env = dict(os.environ)  # XLA_FLAGS: the 4 devices of tests/conftest.py.
  env.update(DD_FAULT=fault, TF_CPP_MIN_LOG_LEVEL='2',
             JAX_COMPILATION_CACHE_DIR=jax_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return subprocess.run(
      [sys.executable, RUNNER, *FLAGS, f'--config.dataset.data_dir={data_dir}',
       f'--workdir={workdir}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT,
      check=False)


def _tail(result):
  return f'rc={result.returncode}\n' + result.stderr[-4000:]


@pytest.fixture(scope='module')
def templates(digits_dir, tmp_path_factory):
  """{stage checkpoint dir: abstract TrainState} to restore into.

  The stages main.py runs, built under eval_shape: nothing is computed.
  """
  config = _config(digits_dir)
  workdir = str(tmp_path_factory.mktemp('templates'))

  def states():
    teacher = teacher_stage.teacher_stage(config, workdir)
    out = {TEACHER: teacher}
    rounds = distill.Rounds(config, workdir, distill.config_round_plan(config))
    for index, rel in enumerate((ROUND_2, ROUND_1)):
      out[rel] = rounds.stage(index, teacher.init_params)
    return {rel: TrainState.create(s.init_params, s.step.optimizer, s.rng)
            for rel, s in out.items()}

  return jax.eval_shape(states)


def _restore_all(workdir, templates, partly_deleted_ok=False):
  """{(stage dir, step): (state, meta)} of every checkpoint, read-only.

  With `partly_deleted_ok`, a checkpoint older than its stage's latest that
  does not restore is left out: Orbax deletes old checkpoints with rmtree,
  so a SIGKILL at a random time may land in the middle of one.
  """
  out = {}
  for rel, template in templates.items():
    directory = os.path.join(workdir, rel)
    if not os.path.isdir(directory):
      continue
    ckpt = checkpoints.Checkpointer(directory, read_only=True)
    steps = ckpt.all_steps()
    for step in steps:
      try:
        state, meta, _ = ckpt.restore(template, step=step)
      except checkpoints.CheckpointError:
        if partly_deleted_ok and step < max(steps):
          print(f'{rel}/{step} does not restore: left out')
          continue
        raise
      out[(rel, step)] = (state, meta)
    ckpt.close()
  return out


def _assert_same(got, want, what):
  """Same checkpoints, same meta, every leaf bitwise equal."""
  assert sorted(got) == sorted(want), (what, sorted(got), sorted(want))
  for key in sorted(want):
    (state, meta), (ref_state, ref_meta) = got[key], want[key]
    assert meta == ref_meta, (what, key)
    leaves, treedef = jax.tree.flatten(state)
    ref_leaves, ref_treedef = jax.tree.flatten(ref_state)
    assert treedef == ref_treedef, (what, key)
    for i, (a, b) in enumerate(zip(leaves, ref_leaves)):
      assert a.dtype == b.dtype and np.array_equal(a, b), (
          f'{what}: {key} leaf {i} of {treedef} differs from the '
          'uninterrupted run')


def _steps(workdir, rel):
  directory = os.path.join(workdir, rel)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _leftovers(workdir):
  """Orbax temporary directories anywhere under `workdir`."""
  return sorted(os.path.relpath(os.path.join(d, n), workdir)
                for d, dirs, _ in os.walk(workdir) for n in dirs
                if '.orbax-checkpoint-tmp' in n)


@pytest.fixture(scope='module')
def reference(digits_dir, jax_cache, templates, tmp_path_factory):
  """One uninterrupted run, shared: its workdir and every checkpoint."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  result = _run(workdir, digits_dir, jax_cache)
  assert result.returncode == 0, _tail(result)
  assert _steps(workdir, TEACHER) == [4, 6]
  assert _steps(workdir, ROUND_2) == [2, 4]
  assert _steps(workdir, ROUND_1) == [2, 4]
  return workdir, _restore_all(workdir, templates)


def _killed(result, where):
  assert result.returncode == -signal.SIGKILL, _tail(result)
  assert f'fault_runner: SIGKILL {where}' in result.stderr, _tail(result)


@pytest.mark.slow
def test_killed_anywhere_then_rerun_ends_bitwise_equal(
    digits_dir, jax_cache, templates, reference, tmp_path):
  """One workdir, killed 4 times in a row, then run to its end.

  Each rerun is the same command; each resumes from what the kill left and
  the next kill lands further on. Whatever was committed before a kill must
  already equal the reference bitwise.
  """
  _, want = reference
  workdir = str(tmp_path / 'wd')

  def check_committed(what, partly_deleted_ok=False):
    """Every checkpoint the reference also has equals it; returns them all."""
    got = _restore_all(workdir, templates, partly_deleted_ok)
    common = [k for k in got if k in want]
    _assert_same({k: got[k] for k in common}, {k: want[k] for k in common},
                 what)
    return got

  def report(what, result):
    """For `pytest -s`: what the fault did, where the run resumed and was."""
    lines = result.stderr.splitlines()
    resumed = [l.split('] ', 1)[-1] for l in lines
               if 'resuming from step' in l]
    logged = [l.split('] ', 1)[-1] for l in lines
              if l.startswith(('I1', 'W1')) and 'trainer.py' in l]
    print(f'{what}: rc={result.returncode}; '
          f'{"; ".join(resumed) or "started afresh"}; last trainer log: '
          f'{logged[-1] if logged else None}')

  # (a) In the middle of training: after teacher step 3 (checkpoint 2 made).
  result = _run(workdir, digits_dir, jax_cache, 'step:teacher:3')
  report('(a) kill after teacher step 3', result)
  _killed(result, 'after step 3 of teacher')
  assert _steps(workdir, TEACHER) == [2]

  # (b) In the middle of writing checkpoint 4: its files are written, Orbax's
  # atomic rename is not done. The rerun resumes from 2, not from that.
  result = _run(workdir, digits_dir, jax_cache,
                'save:' + os.path.join(TEACHER, '4'))
  report('(b) kill while saving teacher checkpoint 4', result)
  _killed(result, 'before the rename')
  assert 'teacher: resuming from step 2' in result.stderr, _tail(result)
  assert _steps(workdir, TEACHER) == [2]
  assert _leftovers(workdir) == [os.path.join(TEACHER,
                                              '4.orbax-checkpoint-tmp')]

  # (c) Between the two distillation rounds: the first round has finished.
  result = _run(workdir, digits_dir, jax_cache, 'between:distill to 2 steps')
  report('(c) kill between the rounds', result)
  _killed(result, 'after distill to 2 steps returned')
  assert 'teacher: resuming from step 2' in result.stderr, _tail(result)
  assert _steps(workdir, TEACHER) == [4, 6]
  assert _steps(workdir, ROUND_2) == [2, 4]
  assert _steps(workdir, ROUND_1) == []
  assert _leftovers(workdir) == []
  assert len(check_committed('after the kill between rounds')) == 4

  # (d) At a random time, counted from the start of the first stage (the
  # imports take longer than the work left: the last round, a few seconds).
  # Seeded, but where it lands depends on the machine.
  delay = random.Random(20220201).uniform(0.5, 4.)
  result = _run(workdir, digits_dir, jax_cache, f'timer:{delay:.2f}')
  report(f'(d) kill after {delay:.2f} s', result)
  assert result.returncode in (0, -signal.SIGKILL), _tail(result)
  assert 'Traceback' not in result.stderr, _tail(result)
  if result.returncode:
    _killed(result, f'after {delay:.2f} s')
  got = check_committed(f'after the kill at {delay:.2f} s',
                        partly_deleted_ok=True)
  print(f'    checkpoints then: {sorted(got)}')

  # Run to the end: everything equals the uninterrupted run, bit for bit.
  result = _run(workdir, digits_dir, jax_cache)
  report('(e) rerun to the end', result)
  assert result.returncode == 0, _tail(result)
  assert 'Traceback' not in result.stderr, _tail(result)
  assert 'teacher: resuming from step 6' in result.stderr, _tail(result)
  assert 'distill to 2 steps: resuming from step 4' in result.stderr
  assert _leftovers(workdir) == []
  got = _restore_all(workdir, templates, partly_deleted_ok=True)
  assert set(want) <= set(got), (sorted(got), sorted(want))
  _assert_same({k: got[k] for k in want}, want, 'after the last rerun')


# A full disk. RLIMIT_FSIZE makes every write past the limit fail with EFBIG,
# as a full disk fails with ENOSPC; Python already ignores SIGXFSZ.


class _FileSizeLimit:

  def __init__(self, limit):
    self.limit = limit

  def __enter__(self):
    self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

  def __exit__(self, *exc):
    resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)
    signal.signal(signal.SIGXFSZ, self.handler)


class _Errors(logging.Handler):
  """What the root logger gets at ERROR while attached (absl's records too)."""

  def __init__(self):
    super().__init__(logging.ERROR)
    self.records = []

  def emit(self, record):
    self.records.append(record)

  def __enter__(self):
    logging.getLogger().addHandler(self)
    return self

  def __exit__(self, *exc):
    logging.getLogger().removeHandler(self)


def _two_states():
  first = {'w': np.arange(256, dtype=np.float32), 'step': np.int32(1)}
  second = {'w': np.random.default_rng(0).standard_normal(
      500_000).astype(np.float32), 'step': np.int32(2)}
  return first, second


def _assert_step_1_intact_and_2_saved_later(directory, ckpt, first, second):
  """Step 1 is still the latest and restores as saved; with room again, the
  same checkpointer saves step 2, and no temporary directory is left."""
  assert ckpt.latest_step() == 1
  reader = checkpoints.Checkpointer(directory, read_only=True)
  state, meta, step = reader.restore(first)
  assert step == 1 and meta == {'n': 1}
  assert all(np.array_equal(state[k], first[k]) for k in first)
  ckpt.save(2, second, {'n': 2})
  assert ckpt.all_steps() == [1, 2]
  assert sorted(os.listdir(directory)) == ['1', '2']
  state, meta, step = checkpoints.Checkpointer(
      directory, read_only=True).restore(second)
  assert step == 2 and meta == {'n': 2}
  assert np.array_equal(state['w'], second['w'])
  ckpt.close()


def test_save_that_cannot_fit_is_refused_before_writing(tmp_path):
  """A file size limit below the state's size: one line, nothing written,
  nothing logged (Orbax is not asked to write)."""
  directory = str(tmp_path / 'checkpoints')
  ckpt = checkpoints.Checkpointer(directory)
  first, second = _two_states()
  ckpt.save(1, first, {'n': 1})

  with _Errors() as errors, _FileSizeLimit(200_000):
    with pytest.raises(checkpoints.CheckpointError) as e:
      ckpt.save(2, second, {'n': 2})
  message = str(e.value)
  assert '\n' not in message, message
  assert f'at step 2 in {directory}:' in message, message
  assert 'File too large' in message and 'free space' in message, message
  assert 'the checkpoint at step 1 is intact' in message, message
  assert not errors.records, [r.getMessage() for r in errors.records]
  assert sorted(os.listdir(directory)) == ['1']
  _assert_step_1_intact_and_2_saved_later(directory, ckpt, first, second)


def test_write_that_fails_is_one_line_and_its_files_are_removed(tmp_path):
  """A write that fails although the state seemed to fit (a quota, say):
  Orbax reports it, the save raises one line, the previous step stays the
  latest, and the next writer removes the failed step's temporary files."""
  directory = str(tmp_path / 'checkpoints')
  ckpt = checkpoints.Checkpointer(directory)
  first, second = _two_states()
  ckpt.save(1, first, {'n': 1})

  with mock.patch.object(checkpoints, '_lack_of_room', lambda *a: None):
    with _FileSizeLimit(200_000):
      with pytest.raises(checkpoints.CheckpointError) as e:
        ckpt.save(2, second, {'n': 2})
  message = str(e.value)
  assert '\n' not in message, message
  assert message.startswith(
      f'cannot save the checkpoint at step 2 in {directory}: the write '
      'failed'), message
  assert 'File too large' in message and 'free space' in message, message
  assert 'the checkpoint at step 1 is intact' in message, message
  _assert_step_1_intact_and_2_saved_later(directory, ckpt, first, second)


@pytest.mark.parametrize('error,words', [
    (OSError(errno.ENOSPC, 'No space left on device'),
     'the disk is full (No space left on device, errno 28)'),
    (OSError(errno.EDQUOT, 'Disk quota exceeded'), 'quota'),
    (RuntimeError('something else'), 'the write failed'),
])
def test_write_failure_names_the_cause(error, words):
  assert words in checkpoints._write_failure(error)  # pylint: disable=protected-access
  chained = ValueError('wrapped')
  chained.__cause__ = error
  assert words in checkpoints._write_failure(chained)  # pylint: disable=protected-access


@pytest.mark.slow
def test_main_on_a_full_disk_exits_1_with_one_line(digits_dir, jax_cache,
                                                   reference, tmp_path):
  """The teacher's first checkpoint (about 2 MB) cannot be written.

  The runner sets RLIMIT_FSIZE to 300 kB in the subprocess itself.
  """
  del reference  # Only for its compilation cache.
  workdir = str(tmp_path / 'wd')

  result = _run(workdir, digits_dir, jax_cache, 'fsize:300000')
  assert result.returncode == 1, _tail(result)
  assert 'Traceback' not in result.stderr, _tail(result)
  lines = result.stderr.strip().splitlines()
  assert [l for l in lines if l.startswith('error:')] == lines[-1:], _tail(
      result)
  ckpt_dir = os.path.join(workdir, TEACHER)
  assert lines[-1].startswith(
      f'error: cannot save the checkpoint at step 2 in {ckpt_dir}: '), lines[-1]
  assert 'free space' in lines[-1] and 'File too large' in lines[-1]
  assert os.listdir(ckpt_dir) == []
