r"""How long the README's test commands take, on a fresh clone of HEAD.

  python -m benchmarks.readme_commands [--out=benchmarks/results/readme_commands.json]

Clones this repository's HEAD into a temporary directory (`git clone`, so
only committed files), then runs there, one after the other, each command
of the README's first bash block that runs pytest: the set-up line (a new
virtual environment, the pinned install, the fast tests) and the slow
tests. It records each command's wall time, exit code and pytest's summary
line, with the provenance, in --out. A command that fails is recorded too,
and the script exits 1.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_test_commands(readme_text):
  """The lines of the README's first ```bash block that run pytest."""
  block = readme_text.split('```bash\n', 1)[1].split('```', 1)[0]
  return [line.strip() for line in block.splitlines()
          if 'pytest' in line and not line.lstrip().startswith('#')]


def pytest_summary(output):
  """pytest's last summary line, e.g. '412 passed, 1 skipped in 401.2s'."""
  found = re.findall(r'^=*\s*(\d+ (?:passed|failed)[^\n]*?)\s*=*$', output,
                     re.MULTILINE)
  return found[-1] if found else None


def run_commands(commands, clone):
  """[{command, seconds, exit_code, summary}], run in turn in `clone` by
  one bash (the first command's virtual environment stays active)."""
  out = []
  # As on a fresh machine: pip downloads every package (no cache).
  env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK='1',
             PIP_NO_CACHE_DIR='1')
  env.pop('VIRTUAL_ENV', None)
  # Each command runs in the shell the earlier ones left (the README's
  # second line needs the first's activated environment).
  prefix = []
  for command in commands:
    script = ' && '.join(prefix + [command]) if prefix else command
    t0 = time.time()
    done = subprocess.run(['bash', '-c', script], cwd=clone, env=env,
                          capture_output=True, text=True, check=False)
    seconds = time.time() - t0
    text = done.stdout + done.stderr
    out.append({'command': command, 'seconds': round(seconds, 1),
                'exit_code': done.returncode,
                'summary': pytest_summary(text),
                'output_tail': text[-2000:]})
    print(f'{seconds:8.1f} s  exit {done.returncode}  {out[-1]["summary"]}'
          f'  {command}', flush=True)
    if done.returncode:
      break
    prefix = ['. .venv/bin/activate']
  return out


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('out', os.path.join(REPO, 'benchmarks', 'results',
                                          'readme_commands.json'),
                      'The JSON to write.')


def main(argv):
  del argv
  with open(os.path.join(REPO, 'README.md')) as f:
    commands = readme_test_commands(f.read())
  record = provenance.record('the README\'s test commands, run in turn on '
                             'a fresh git clone of the commit below')
  with tempfile.TemporaryDirectory(prefix='readme_commands_') as tmp:
    clone = os.path.join(tmp, 'clone')
    subprocess.run(['git', 'clone', '-q', REPO, clone], check=True)
    runs = run_commands(commands, clone)
  with open(FLAGS.out, 'w') as f:
    json.dump({'provenance': record, 'runs': runs}, f, indent=1)
    f.write('\n')
  if any(r['exit_code'] for r in runs) or len(runs) < len(commands):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
