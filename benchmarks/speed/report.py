"""The results: JSON entries, the result file, and the printed table."""

import json
import os

import numpy as np


def entry(value, goal, met, units, what, **details) -> dict:
  """One section's result: its figure, goal, whether met, and details."""
  return dict(value=value, goal=goal, met=met, units=units, what=what,
              **details)


def config_dict(config) -> dict:
  """A ConfigDict as plain JSON data (for a child process)."""
  return json.loads(config.to_json_best_effort())


def jsonable(x):
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.bool_, bool)):
    return bool(x)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return float(x)
  return x


def merge(old: dict, new: dict) -> dict:
  """`new`'s sections over `old`'s: each section keeps its own `run` record
  (date, load, command); the earlier runs' meta is kept in the file."""
  sections = dict(old.get('sections', {}))
  sections.update(new['sections'])
  meta = dict(new['meta'])
  earlier = list(old.get('meta', {}).pop('earlier_runs', []))
  if old.get('meta'):
    earlier.append(old['meta'])
  meta['earlier_runs'] = earlier
  return {'meta': meta, 'sections': sections}


def read_results(path: str):
  """The results in `path`, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_results(results: dict, path: str) -> dict:
  """Writes results as JSON (NaN/Inf refused); returns them."""
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  text = json.dumps(jsonable(results), indent=2, allow_nan=False)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text + '\n')
  os.replace(tmp, path)
  return results


def fmt(x, units='') -> str:
  if x is None:
    return '-'
  if isinstance(x, bool):
    return 'yes' if x else 'NO'
  if units in ('FLOP/s', 'FLOP'):
    return f'{x / 1e9:.2f} G{units}'
  if units == 'bytes':
    return f'{x / 2**20:.0f} MiB'
  return f'{x:.3g}'
