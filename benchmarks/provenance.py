"""What made a result file: the commit, the date, the machine, the command.

Every JSON under benchmarks/results/ that a script here writes carries this
record, so that a figure quoted in README.md or BENCHMARKS.md leads back to
the code and the machine that measured it.
"""

import os
import platform
import shlex
import subprocess
import sys

from benchmarks.speed import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str:
  """HEAD of the repository, with '+changes' when the code differs from it
  (result files under benchmarks/results/ do not count)."""
  def git(*args):
    return subprocess.run(['git', *args], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
  try:
    head = git('rev-parse', 'HEAD')
    dirty = git('status', '--porcelain', '--untracked-files=no', '--', '.',
                ':!benchmarks/results')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return head + ('+changes' if dirty else '')


def record(made_with: str) -> dict:
  """{commit, date, machine, command, made_with}: `made_with` says how the
  measured data came about (e.g. the main.py runs of a workdir); `command`
  is this script's own command line."""
  return {'commit': commit(), 'date': machine.now(),
          'machine': f'{machine.cpu_model()}, {machine.cpu_cores()} cores, '
                     f'{platform.machine()}',
          'command': ' '.join(shlex.quote(a) for a in
                              ['python', '-m', _module()] + sys.argv[1:]),
          'made_with': made_with}


def _module():
  main = sys.modules.get('__main__')
  spec = getattr(main, '__spec__', None)
  return spec.name if spec is not None else os.path.basename(sys.argv[0])
