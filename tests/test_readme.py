"""The README's commands are the ones CI runs, and the figures its first
screen quotes come from the result files it names."""

import json
import os
import re

from benchmarks import readme_commands

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
  with open(os.path.join(REPO, *path)) as f:
    return f.read()


def test_ci_runs_the_readme_test_commands():
  commands = readme_commands.readme_test_commands(_read('README.md'))
  assert len(commands) == 2
  assert commands[0].startswith('python3 -m venv .venv') and (
      commands[0].endswith('python -m pytest -q'))
  assert commands[1] == 'python -m pytest -q -m slow'
  ci = [l for l in _read('.ci', 'run').splitlines()
        if l and not l.startswith(('#', 'set ', 'cd '))]
  assert ci == commands


def test_pytest_summary_is_the_last_summary_line():
  out = ('..\n= 3 failed, 2 passed in 1.00s =\nrerun\n'
         '================ 410 passed, 1 skipped in 401.20s (0:06:41) =====\n')
  assert readme_commands.pytest_summary(out) == (
      '410 passed, 1 skipped in 401.20s (0:06:41)')
  assert readme_commands.pytest_summary('error: no tests') is None


def test_first_screen_figures_name_their_files():
  """The quickstart's minutes on the README's first screen are those of
  benchmarks/results/quickstart_digits.json, and the test commands' name
  the file that timed them (benchmarks/readme_commands.py, run on a clone
  of the commit before the one that quotes it)."""
  top = _read('README.md').split('## The quickstart')[0]
  quick = json.loads(_read('benchmarks', 'results', 'quickstart_digits.json'))
  minutes = [int(m) for m in re.findall(r'\((\d+) minutes', top)]
  runs = json.loads(_read('benchmarks', 'results',
                          'readme_commands.json'))['runs']
  quickstart = round(quick['run']['headline']['run_seconds'] / 60)
  # The commands' comments, then the quickstart's time again below them.
  assert minutes == [quickstart] + [round(r['seconds'] / 60)
                                    for r in runs] + [quickstart]
  assert 'quickstart_digits.json' in top and 'readme_commands.json' in top
