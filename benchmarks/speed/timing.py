"""How every time of the speed benchmark is taken.

A time is measured in repeats: warm-up calls, one calibration call that
decides how many back-to-back calls a repeat makes (so that it lasts about
`min_repeat_s`), then `repeats` timed repeats, each blocking once at the end
as the training loop does. Calls that are compared are timed together:
repeat r of every call runs before repeat r + 1 of any, so a shared machine
that slows down or speeds up during the measurement affects them alike, and
a ratio is the median of the repeat-by-repeat ratios.
"""

import contextlib
import dataclasses
import math
import os
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import jax


@dataclasses.dataclass
class Timing:
  """Warm-up calls, then `repeats` timed repeats of about `min_repeat_s`."""
  repeats: int = 5
  min_repeat_s: float = 1.0
  warmup: int = 2
  profile_dir: Optional[str] = None


def _calls_per_repeat(call: Callable[[], Any], timing: Timing) -> int:
  """Warms `call` up, then sizes a repeat from one timed call."""
  for _ in range(timing.warmup):
    jax.block_until_ready(call())
  t0 = time.perf_counter()
  jax.block_until_ready(call())
  elapsed = max(time.perf_counter() - t0, 1e-9)
  return max(1, math.ceil(timing.min_repeat_s / elapsed))


def _one_repeat(call: Callable[[], Any], k: int) -> float:
  """Seconds per call over k back-to-back calls, blocking once at the end."""
  t0 = time.perf_counter()
  out = None
  for _ in range(k):
    out = call()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / k


def time_interleaved(calls: dict, timing: Timing) -> dict:
  """Seconds per call of each of `calls`, their timed repeats taken in turn.

  Returns {name: {median_s, min_s, repeats_s, calls_per_repeat, repeats}};
  repeats_s[r] of every name comes from the same round r.
  """
  k = {name: _calls_per_repeat(call, timing) for name, call in calls.items()}
  per_call = {name: [] for name in calls}
  for _ in range(max(1, timing.repeats)):
    for name, call in calls.items():
      per_call[name].append(_one_repeat(call, k[name]))
  return {name: {'median_s': statistics.median(t), 'min_s': min(t),
                 'repeats_s': t, 'calls_per_repeat': k[name],
                 'repeats': len(t)}
          for name, t in per_call.items()}


def time_calls(call: Callable[[], Any], timing: Timing) -> dict:
  """Seconds per `call()`: time_interleaved with one call."""
  return time_interleaved({'call': call}, timing)['call']


def repeat_ratios(num_s: Sequence[float], den_s: Sequence[float],
                  scale: float = 1.) -> list:
  """scale x num_s[r] / den_s[r] for each repeat r (same-round times)."""
  if len(num_s) != len(den_s):
    raise ValueError(f'{len(num_s)} repeats against {len(den_s)}')
  return [scale * a / b for a, b in zip(num_s, den_s)]


def median_ratio(num_s: Sequence[float], den_s: Sequence[float],
                 scale: float = 1.) -> float:
  """The median of the repeat-by-repeat ratios (not a ratio of medians)."""
  return statistics.median(repeat_ratios(num_s, den_s, scale))


def ratio_summary(num: dict, den: dict, scale: float = 1.) -> dict:
  """{ratio, ratio_repeats, ratio_best} of two time_interleaved results.

  ratio = median over repeats r of scale x num[r] / den[r]; ratio_best
  compares the two fastest repeats.
  """
  ratios = repeat_ratios(num['repeats_s'], den['repeats_s'], scale)
  return {'ratio': statistics.median(ratios), 'ratio_repeats': ratios,
          'ratio_best': scale * num['min_s'] / den['min_s']}


@contextlib.contextmanager
def maybe_trace(profile_dir: Optional[str], name: str):
  """jax.profiler.trace(profile_dir/name) if profile_dir, else nothing."""
  if not profile_dir:
    yield
    return
  with jax.profiler.trace(os.path.join(profile_dir, name)):
    yield


def cost_flops(cost) -> Optional[float]:
  """'flops' of an XLA cost analysis (a dict or a list of per-device dicts).

  A count <= 0 is no count: XLA:GPU's compiled analysis reports negative
  counts for some programs.
  """
  if cost is None:
    return None
  if isinstance(cost, dict):
    cost = [cost]
  flops = [c.get('flops') for c in cost if c and c.get('flops') is not None]
  flops = [f for f in flops if f > 0]
  return float(flops[0]) if flops else None
