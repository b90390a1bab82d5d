"""Running a measurement in a fresh Python process (memory; forced devices).

The parent sends a JSON payload on stdin; the child module's
`serve(fn)` prints fn(payload) as one marked JSON line on stdout.
"""

import json
import os
import subprocess
import sys
from typing import Callable, Optional

import tensorflow as tf

from benchmarks.speed import report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MARK = 'SPEED_CHILD_JSON '


def hide_gpus_from_tf():
  """tf.data only feeds the input pipeline: keep TensorFlow off accelerators
  (it is a dependency of the library, for input_pipeline)."""
  tf.config.set_visible_devices([], 'GPU')


def run(module: str, payload: dict, *, env: Optional[dict] = None,
        timeout_s: float = 3600.) -> dict:
  """`python -m module` with `payload` on stdin; returns its JSON result."""
  full_env = dict(os.environ)
  full_env['PYTHONPATH'] = REPO + os.pathsep + full_env.get('PYTHONPATH', '')
  full_env.update(env or {})
  proc = subprocess.run(
      [sys.executable, '-m', module], input=json.dumps(payload),
      capture_output=True, text=True, cwd=REPO, env=full_env,
      timeout=timeout_s, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
  if proc.returncode or not lines:
    raise RuntimeError(f'{module} subprocess failed ({proc.returncode}):\n'
                       f'{proc.stderr[-3000:]}')
  return json.loads(lines[-1][len(MARK):])


def serve(fn: Callable[[dict], dict]):
  """In the child: reads the payload, prints fn(payload) as a marked line."""
  out = fn(json.load(sys.stdin))
  print(MARK + json.dumps(report.jsonable(out)), flush=True)
