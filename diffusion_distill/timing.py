"""A run's timing.json (layout.timing_path): what each stage cost, and on
what machine.

  {"machine": {cpu, cpu_cores, platform, device_kind, device_count, jax,
               jaxlib, commit, ...},
   "stages": {"teacher": {"seconds": ..., "from_step": 0, "steps": ...,
              "steps_per_second": ..., "first_step_seconds": ...,
              "peak_host_memory_mib": ..., "peak_device_memory_mib": ...,
              "finished": ...},
              "distill to 32 steps": {...}, "eval": {...},
              "run": {"seconds": ..., "stages": [...], ...}}}

"run" is the whole of train.train_and_evaluate in the session that last
ran it: its stages and their start-up (compilation, data) together.

A stage is recorded when it finishes, by the session that finished it: a
stage resumed at step s records the steps from s ("from_step") and that
session's seconds. "first_step_seconds" includes the compilation; peak host
memory is the process's peak so far. Only process 0 writes; the file is
replaced whole, so it is never half-written.
"""

import functools
import json
import resource
import sys

from etils import epath
import jax

from diffusion_distill import checkpoints
from diffusion_distill import machine


def peak_host_memory_mib():
  """The process's peak resident memory so far, in MiB."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports KiB, macOS bytes.
  return round(peak / (2**20 if sys.platform == 'darwin' else 2**10), 1)


def peak_device_memory_mib():
  """The first local device's peak memory in use, in MiB, where its runtime
  reports it (GPU, TPU); None on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else round(peak / 2**20, 1)


@functools.lru_cache(maxsize=None)
def run_machine():
  """machine.summary() of this process, taken once: train.train_and_evaluate
  takes it first, so that a commit made while a run is under way does not
  relabel the run."""
  return machine.summary()


def read(path):
  """The timing.json at `path`, or {} when there is none (or it is corrupt:
  it is only a record, and is then started again)."""
  try:
    found = json.loads(epath.Path(path).read_text())
  except (OSError, ValueError):
    return {}
  return found if isinstance(found, dict) else {}


def record(path, stage, seconds, **measured):
  """Sets `stage`'s entry of the timing.json at `path` (process 0 only):
  the wall `seconds` of the session that finished it, what `measured` names
  (steps, steps_per_second, samples drawn...), the peak memory, the time."""
  if jax.process_index() != 0:
    return
  found = read(path)
  stages = found.get('stages', {})
  stages[stage] = dict(
      seconds=round(seconds, 1), **measured,
      peak_host_memory_mib=peak_host_memory_mib(),
      peak_device_memory_mib=peak_device_memory_mib(),
      finished=machine.now())
  out = {'machine': run_machine(), 'stages': stages}
  checkpoints.write_atomically(path, json.dumps(out, indent=1) + '\n')


def summary_lines(path):
  """One line per stage recorded at `path`: its name, wall time and rate."""
  lines = []
  for stage, e in read(path).get('stages', {}).items():
    rate = (f', {e["steps_per_second"]:.2f} steps/s'
            if 'steps_per_second' in e else '')
    lines.append(f'{stage}: {e["seconds"]:.1f} s{rate}')
  return lines
