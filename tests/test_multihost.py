"""Two processes x 2 CPU devices (gloo) against one process x 4 devices.

The two-process run trains the tiny teacher and one distillation round
through main.py. It is stopped twice: by SIGTERM to process 1 only during
the teacher (both processes save the same step and exit 0), and by SIGKILL
to both during the round. A third launch resumes and finishes. Its
parameters must equal those of an uninterrupted in-process run on 4 devices
that reads the data as the two processes do (each its own split).

The sums over devices run through gloo in one case and through XLA's CPU
all-reduce in the other, which may add in another order, so "equal" means:
- the networks' outputs on a fixed input agree within OUTPUT_TOLERANCE
  (seen: 4.8e-7 apart, outputs up to 1.7);
- every weight (not bias) agrees within WEIGHT_TOLERANCE (seen: < 1e-6).
Biases are left out: a bias that a normalization (or attention's softmax, for
the key bias) cancels gets a zero gradient in exact arithmetic, so rounding
noise alone moves it, and Adam scales that noise up to steps of the learning
rate (seen: such biases 1e-4 apart, while the outputs agree).
"""

import functools
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffusion_distill import checkpoints
from diffusion_distill import dataset_info
from diffusion_distill import input_pipeline
from diffusion_distill import layout
from diffusion_distill import models
from diffusion_distill import train
from diffusion_distill.stages import distill
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_TOLERANCE = dict(rtol=0, atol=1e-5)
WEIGHT_TOLERANCE = dict(rtol=1e-3, atol=1e-5)
TEACHER_STEPS, ROUND_STEPS = 40, 30
OVERRIDES = {'train.num_steps': TEACHER_STEPS, 'train.log_every_steps': 10,
             'train.checkpoint_every_steps': 10, 'train.sample_every_steps': 0,
             'distill.start_num_steps': 2, 'distill.steps_per_round': ROUND_STEPS}


def _flags():
  flags = ["--config.stages=('teacher','distill')"]
  for key, value in OVERRIDES.items():
    flags.append(f'--config.{key}={value}')
  return flags


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(workdir, data_dir):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  port = _free_port()
  procs = []
  for i in range(2):
    log = open(os.path.join(os.path.dirname(workdir), f'p{i}.log'), 'a')  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(
        [sys.executable, 'main.py', '--config=tests/tiny.py',
         f'--config.dataset.data_dir={data_dir}', f'--workdir={workdir}',
         *_flags(), f'--coordinator_address=127.0.0.1:{port}',
         '--num_processes=2', f'--process_id={i}'],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    log.close()
  return procs


def _wait(procs, timeout=300):
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(max(1., deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  return [p.returncode for p in procs]


def _when_exists(path, procs, timeout=300):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert all(p.poll() is None for p in procs), 'a process ended early'
    assert time.time() < deadline, f'{path} never appeared'
    time.sleep(0.02)


def _steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def _two_process_batches(config, batch_size, seed, start_step):
  """What processes 0 and 1 read, side by side on the device axis."""
  parts = [input_pipeline.create_train_iterator(
      config, batch_size=batch_size, start_step=start_step, seed=seed,
      process_index=i, process_count=2, local_device_count=2)
           for i in range(2)]
  for batches in zip(*parts):
    yield {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _final_params(workdir):
  teacher = checkpoints.Checkpointer(
      os.path.join(workdir, 'teacher', 'checkpoints'), read_only=True)
  assert teacher.latest_step() == TEACHER_STEPS
  student = checkpoints.Checkpointer(
      os.path.join(distill.student_dir(workdir, 1), 'checkpoints'),
      read_only=True)
  assert student.latest_step() == ROUND_STEPS
  template = teacher_template()
  out = {'teacher': teacher.restore_params(template, 'params')[0],
         'teacher_ema': teacher.restore_params(template)[0],
         'student': student.restore_params(template, 'params')[0]}
  teacher.close()
  student.close()
  return out


def _network():
  """params -> the U-Net's output on a fixed input (noise levels -10..10)."""
  config = tiny.tiny_config(None)
  model = models.create_model(config)
  info = dataset_info.get(config.dataset.name)
  rng = np.random.default_rng(0)
  x = rng.standard_normal(
      (16, info.image_size, info.image_size, info.channels)).astype(np.float32)
  logsnr = np.linspace(-10, 10, 16).astype(np.float32)
  labels = (np.arange(16) % info.num_classes).astype(np.int32)
  fn = jax.jit(lambda p: model.apply({'params': p}, x, logsnr, labels,
                                     train=False))
  return lambda params: np.asarray(fn(params))


def teacher_template():
  config = tiny.tiny_config(None)
  return models.abstract_params(models.create_model(config), config)


@pytest.fixture(scope='module')
def reference(digits_dir, tmp_path_factory, monkeypatch_module):
  assert jax.device_count() == 4
  workdir = str(tmp_path_factory.mktemp('one_process') / 'w')
  monkeypatch_module.setattr(
      input_pipeline, 'iterator_factory',
      lambda config, batch_size, seed: functools.partial(
          _two_process_batches, config, batch_size, seed))
  config = tiny.tiny_config(digits_dir, **OVERRIDES)
  config.stages = ('teacher', 'distill')
  train.train_and_evaluate(config, workdir)
  monkeypatch_module.undo()
  return _final_params(workdir)


@pytest.fixture(scope='module')
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as mp:
    yield mp


@pytest.mark.slow
def test_two_processes_survive_sigterm_and_kill_and_equal_one(
    reference, digits_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  teacher_ckpts = os.path.join(workdir, 'teacher', 'checkpoints')
  round_ckpts = os.path.join(distill.student_dir(workdir, 1), 'checkpoints')

  # 1. SIGTERM to process 1 alone, once the first checkpoint is written:
  # both processes save the same step and exit 0.
  procs = _launch(workdir, digits_dir)
  writers = {procs[0].pid}
  _when_exists(os.path.join(teacher_ckpts, '10'), procs)
  procs[1].terminate()
  assert _wait(procs) == [0, 0]
  logs = [open(tmp_path / f'p{i}.log').read() for i in range(2)]
  assert all('preempted: teacher: stopped after step' in log for log in logs)
  saved = _steps(teacher_ckpts)
  assert 10 <= saved[-1] < TEACHER_STEPS, saved
  assert not os.path.exists(round_ckpts)

  # 2. Resume; SIGKILL both during the distillation round.
  procs = _launch(workdir, digits_dir)
  writers.add(procs[0].pid)
  _when_exists(os.path.join(round_ckpts, '10'), procs)
  for p in procs:
    p.kill()
  assert _wait(procs) == [-9, -9]
  assert _steps(round_ckpts)[-1] < ROUND_STEPS

  # 3. Resume to the end.
  procs = _launch(workdir, digits_dir)
  writers.add(procs[0].pid)
  assert _wait(procs) == [0, 0]
  logs = [open(tmp_path / f'p{i}.log').read() for i in range(2)]
  assert 'student_00001' in logs[0] or 'resuming from step' in logs[0]

  got = _final_params(workdir)
  apply_fn = _network()
  for name, tree in reference.items():
    np.testing.assert_allclose(apply_fn(got[name]), apply_fn(tree),
                               **OUTPUT_TOLERANCE, err_msg=name)
    paths = jax.tree_util.tree_leaves_with_path(tree)
    assert len(paths) == len(jax.tree.leaves(got[name]))
    for (path, r), g in zip(paths, jax.tree.leaves(got[name])):
      if path[-1].key != 'bias':
        np.testing.assert_allclose(
            g, r, **WEIGHT_TOLERANCE,
            err_msg=f'{name} {jax.tree_util.keystr(path)}')
  # Only process 0 writes TensorBoard logs (their names hold the pid).
  for stage_dir in (os.path.join(workdir, 'teacher'),
                    distill.student_dir(workdir, 1)):
    events = [n for n in os.listdir(stage_dir) if n.startswith('events.out')]
    assert events
    assert {int(n.split('.')[-3]) for n in events} <= writers, events
