"""Runs main.py once per point of a grid of --config overrides.

  python launch/sweep.py --launcher=tpu_vm --name_prefix=lr \
      --workdir_root=gs://BUCKET/sweeps/lr \
      --grid='config.distill.learning_rate=1e-4,2e-4' \
      --grid='config.distill.steps_per_round=1000,2000' \
      --zone=us-central2-b --accelerator=v4-32 [--dry-run] \
      -- --config=configs/cifar10_distill.py

gives 4 jobs. A point's name comes from its overrides (here
learning-rate-1e-4-steps-per-round-1000); its job is PREFIX-POINT and its
workdir WORKDIR_ROOT/POINT. Flags before -- that sweep.py does not know go to
the launcher (launch/tpu_vm.sh or launch/gcp_batch.sh); --launcher=local runs
`python main.py` here, one point after another. Before anything starts
(--dry-run included), every point is checked: by its launcher's --dry-run,
which runs `main.py --check_local` here, or for --launcher=local by
`main.py --check_local` itself (with $DD_LOCAL_PYTHON, else this Python); a
rejected point stops the sweep with exit code 2. Jobs start one after
another; the first failure stops the sweep. --dry-run prints the commands
instead.
"""

import argparse
import ast
import concurrent.futures
import hashlib
import itertools
import os
import re
import shlex
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = {
    'tpu_vm': os.path.join(REPO_ROOT, 'launch', 'tpu_vm.sh'),
    'gcp_batch': os.path.join(REPO_ROOT, 'launch', 'gcp_batch.sh'),
    'local': None,
}
# TPU VM and Batch job names: [a-z]([-a-z0-9]*[a-z0-9])?, at most 63.
MAX_NAME = 63
MAX_PREFIX = 40
_KEY = re.compile(r'config(\.[A-Za-z_][A-Za-z0-9_]*)+')


class UsageError(Exception):
  """Bad command line: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise UsageError(message)


def split_values(text):
  """Splits on commas outside brackets and quotes: '(1,2),3' -> 2 values."""
  values, current, depth, quote = [], '', 0, None
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in '\'"':
      quote = char
    elif char in '([{':
      depth += 1
    elif char in ')]}':
      depth -= 1
    elif char == ',' and depth == 0:
      values.append(current)
      current = ''
      continue
    current += char
  values.append(current)
  return values


def parse_grid(spec):
  """'config.a.b=1,2' (or 'a.b=1,2') -> ('config.a.b', ['1', '2'])."""
  key, sep, values = spec.partition('=')
  key = key.strip()
  if not key.startswith('config.'):
    key = 'config.' + key
  if not sep or not _KEY.fullmatch(key):
    raise UsageError(f'bad --grid={spec!r}: expected config.KEY=V1,V2,...')
  values = split_values(values)
  if any(not v for v in values):
    raise UsageError(f'bad --grid={spec!r}: empty value')
  canonical = [_canonical(v) for v in values]
  for i, value in enumerate(canonical):
    if value in canonical[:i]:
      first = values[canonical.index(value)]
      raise UsageError(f'bad --grid={spec!r}: {first} and {values[i]} are the '
                       'same value, so the same point twice')
  return key, values


def _canonical(value):
  """What a value sets, so that 2e-4 and 0.0002 (or 1 and 1.0, or true and
  True) are one point: a Python literal where it reads as one, else the
  string without quotes."""
  text = value.strip()
  if text.lower() in ('true', 'false'):
    return text.lower() == 'true'
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return text.strip('\'"')


def sanitize(text):
  """Lowercase [a-z0-9-]: runs of anything else become one '-'."""
  return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')


def _value_label(value):
  value = value.strip().strip('\'"')
  if value.startswith('-'):
    value = 'm' + value[1:]
  return sanitize(value.replace('.', 'p'))


def point_names(keys, points, prefix):
  """A unique name per point, such that PREFIX-NAME is a valid job name."""
  labels = []
  for key in keys:
    last = key.rsplit('.', 1)[1]
    shared = sum(k.rsplit('.', 1)[1] == last for k in keys) > 1
    labels.append(sanitize(key[len('config.'):] if shared else last))
  limit = MAX_NAME - len(prefix) - 1
  names = []
  for point in points:
    name = '-'.join(f'{label}-{_value_label(v)}'
                    for label, v in zip(labels, point))
    names.append(name)
  for i, (name, point) in enumerate(zip(names, points)):
    if len(name) > limit or names.count(name) > 1 or not name:
      digest = hashlib.sha1(repr(point).encode()).hexdigest()[:8]
      names[i] = '-'.join(filter(None, [name[:limit - 9].strip('-'), digest]))
  if len(set(names)) != len(names):
    raise UsageError('could not give the grid points distinct names')
  return names


def _flag_name(arg):
  return arg.split('=', 1)[0] if arg.startswith('-') else None


def parse_args(argv):
  """Returns (flags, launcher_args, main_args)."""
  if '--' in argv:
    cut = argv.index('--')
    own, main_args = argv[:cut], argv[cut + 1:]
  else:
    own, main_args = argv, []
  parser = _Parser(
      prog='launch/sweep.py', allow_abbrev=False, description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      usage='%(prog)s --launcher=L --name_prefix=P --workdir_root=DIR '
      '--grid=config.KEY=V1,V2 [--grid=...] [--dry-run] [LAUNCHER FLAGS] '
      '-- MAIN_ARGS')
  parser.add_argument('--launcher', required=True, choices=sorted(LAUNCHERS))
  parser.add_argument('--name_prefix', required=True)
  parser.add_argument('--workdir_root', required=True)
  parser.add_argument('--grid', action='append', required=True)
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run',
                      action='store_true')
  flags, launcher_args = parser.parse_known_args(own)

  for arg in launcher_args:
    if flags.launcher == 'local':
      raise UsageError(f'unknown argument: {arg} (main.py arguments go after '
                       '--)')
    if not arg.startswith('--'):
      raise UsageError(f'unexpected argument: {arg} (launcher flags take the '
                       'form --flag=value)')
    if _flag_name(arg) in ('--name', '--dry-run', '--dry_run'):
      raise UsageError(f'{_flag_name(arg)} is set by sweep.py')
  if not re.fullmatch(r'[a-z][a-z0-9-]*', flags.name_prefix) or len(
      flags.name_prefix) > MAX_PREFIX:
    raise UsageError(f'bad --name_prefix={flags.name_prefix}: lowercase '
                     f'letters, digits and -, starting with a letter, at most '
                     f'{MAX_PREFIX}')
  if flags.launcher != 'local' and not re.match(r'gs://.', flags.workdir_root):
    raise UsageError(f'--workdir_root must be a gs:// path for '
                     f'--launcher={flags.launcher}, got: {flags.workdir_root}')
  if not main_args:
    raise UsageError('main.py arguments are required after --, e.g. '
                     '-- --config=configs/cifar10_distill.py')
  return flags, launcher_args, main_args


def build_jobs(flags, launcher_args, main_args):
  """Returns a list of (name, overrides, command), one per grid point."""
  grid = [parse_grid(spec) for spec in flags.grid]
  keys = [key for key, _ in grid]
  if len(set(keys)) != len(keys):
    raise UsageError('a key appears in more than one --grid')
  for arg in main_args:
    name = _flag_name(arg)
    if name in ('--workdir', '-workdir'):
      raise UsageError('--workdir is set by sweep.py (from --workdir_root)')
    if name and name.lstrip('-') in keys:
      raise UsageError(f'{name} is both in --grid and after --')
  points = list(itertools.product(*(values for _, values in grid)))
  names = point_names(keys, points, flags.name_prefix)
  root = flags.workdir_root.rstrip('/')
  script = LAUNCHERS[flags.launcher]
  jobs = []
  for name, point in zip(names, points):
    overrides = [f'--{key}={value}' for key, value in zip(keys, point)]
    main = main_args + [f'--workdir={root}/{name}'] + overrides
    if script is None:
      command = [sys.executable, _display_path(os.path.join(REPO_ROOT,
                                                            'main.py'))] + main
    else:
      command = (['bash', _display_path(script),
                  f'--name={flags.name_prefix}-{name}'] + launcher_args +
                 ['--'] + main)
    jobs.append((name, overrides, command))
  return jobs


def _display_path(path):
  """Relative to the current directory when below it, else absolute."""
  rel = os.path.relpath(path)
  return path if rel.startswith('..') else rel


def _check_commands(flags, jobs):
  """Per point, what checks it without creating anything."""
  if flags.launcher == 'local':
    python = os.environ.get('DD_LOCAL_PYTHON') or sys.executable
    return [[python] + command[1:] + ['--check_local']
            for _, _, command in jobs]
  return [command[:2] + ['--dry-run'] + command[2:] for _, _, command in jobs]


def _preflight(flags, jobs):
  """Checks every point at once (each check traces the model: seconds);
  the first rejected point, in grid order, stops the sweep."""
  commands = _check_commands(flags, jobs)
  workers = max(1, min(len(commands), os.cpu_count() or 1, 8))

  def run(command):
    return subprocess.run(command, capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL)

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    results = list(pool.map(run, commands))
  who = ('main.py --check_local' if flags.launcher == 'local' else
         jobs[0][2][1])
  for (name, _, _), result in zip(jobs, results):
    if result.returncode != 0:
      lines = result.stderr.strip().splitlines() or ['(no message)']
      errors = [l for l in lines if l.startswith('error: ')]
      line = (errors or lines)[-1]
      raise UsageError(f'{who} rejects point {name}: '
                       f'{line.removeprefix("error: ")}')


def main(argv):
  try:
    flags, launcher_args, main_args = parse_args(argv)
    jobs = build_jobs(flags, launcher_args, main_args)
    _preflight(flags, jobs)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if flags.dry_run:
    for i, (_, overrides, command) in enumerate(jobs, 1):
      print(f'# {i}/{len(jobs)}: {" ".join(overrides)}')
      print(shlex.join(command))
    return 0
  for i, (name, _, command) in enumerate(jobs, 1):
    print(f'== {i}/{len(jobs)} {name}: {shlex.join(command)}', file=sys.stderr,
          flush=True)
    code = subprocess.run(command, check=False).returncode
    if code != 0:
      rest = [n for n, _, _ in jobs[i:]]
      print(f'error: job {i}/{len(jobs)} ({name}) failed with exit code '
            f'{code}; stopping' +
            (f', not started: {", ".join(rest)}' if rest else ''),
            file=sys.stderr)
      return 1
  done = 'finished' if flags.launcher == 'local' else 'launched'
  print(f'all {len(jobs)} jobs {done}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
