"""SIGTERM (TPU maintenance, Spot GPUs): save, exit 0, and resume there."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60


def _main(workdir, data_dir):
  return subprocess.Popen(
      [sys.executable, 'main.py', '--config=tests/tiny.py',
       f'--config.dataset.data_dir={data_dir}', f'--workdir={workdir}',
       f'--config.train.num_steps={STEPS}',
       '--config.train.checkpoint_every_steps=20',
       '--config.train.sample_every_steps=0'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(ckpt_dir):
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


@pytest.mark.slow
def test_sigterm_saves_exits_0_and_the_rerun_resumes_there(digits_dir,
                                                           tmp_path):
  workdir = str(tmp_path / 'w')
  ckpt_dir = os.path.join(workdir, 'teacher', 'checkpoints')
  proc = _main(workdir, digits_dir)
  deadline = time.time() + 300
  while not os.path.exists(os.path.join(ckpt_dir, '20')):
    assert proc.poll() is None, proc.communicate()
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert 'preempted: teacher: stopped after step' in err
  assert 'Traceback' not in err
  saved = _steps(ckpt_dir)[-1]
  assert 20 <= saved < STEPS
  assert f'stopped after step {saved} on SIGTERM' in err

  proc = _main(workdir, digits_dir)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert re.search(rf'teacher: resuming from step {saved}\b', err)
  assert _steps(ckpt_dir)[-1] == STEPS
