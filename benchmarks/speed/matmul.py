"""Section `matmul`: the reference matmul every FLOP/s is divided by."""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from benchmarks.speed import report
from benchmarks.speed import timing as timing_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass
class Matmul:
  """A compiled [size, size] @ [size, size] on one device, ready to call."""
  size: int
  dtype: str
  flops: float
  flops_source: str
  call: Callable[[], Any]


def build(size: int, dtype: str = 'float32', device=None) -> Matmul:
  """jax.jit(jnp.matmul) of two random `dtype` [size, size] arrays."""
  device = device or jax.local_devices()[0]
  shape = (size, size)
  a, b = (jax.device_put(jax.random.normal(jax.random.PRNGKey(i), shape,
                                           DTYPES[dtype]), device)
          for i in (0, 1))
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  flops, source = timing_lib.cost_flops(compiled.cost_analysis()), 'compiled'
  if not flops:
    flops, source = 2. * size**3, 'analytic 2 n^3'
  return Matmul(size=size, dtype=dtype, flops=flops, flops_source=source,
                call=lambda: compiled(a, b))


def summary(mm: Matmul, t: dict) -> dict:
  """FLOP/s of `mm` from its time_interleaved result `t`."""
  return {'size': mm.size, 'dtype': mm.dtype, 'flops_per_call': mm.flops,
          'flops_source': mm.flops_source,
          'flops_per_s': mm.flops / t['median_s'],
          'flops_per_s_best': mm.flops / t['min_s'], 'time': t,
          'matmul_precision': str(jax.config.jax_default_matmul_precision)}


def against(mm: Matmul, mm_t: dict, flops_per_call: float, t: dict) -> dict:
  """A call's FLOP/s / the matmul's, from repeats timed in turn with it.

  ratio = median over repeats r of (flops / t[r]) / (mm.flops / mm_t[r]).
  """
  out = timing_lib.ratio_summary(mm_t, t, flops_per_call / mm.flops)
  out['matmul'] = summary(mm, mm_t)
  return out


def section(ctx) -> dict:
  """The matmul of each dtype of this run, timed on its own."""
  rows = {}
  for dtype in ctx.dtypes:
    mm = ctx.matmul(dtype)
    rows[dtype] = summary(mm, timing_lib.time_calls(mm.call, ctx.opts.timing))
  f32 = rows.get('float32') or next(iter(rows.values()))
  return report.entry(
      f32['flops_per_s'], None, None, 'FLOP/s',
      f'jax.jit(jnp.matmul) of two [{ctx.opts.matmul_size}]^2 arrays of each '
      'dtype on one device, block_until_ready; FLOPs from XLA cost analysis '
      '(2 n^3 where it has none); value = float32 FLOPs / median time. '
      'matmul_precision None = the backend default (TF32 tensor cores for '
      'float32 on NVIDIA Hopper). Each step row times its own matmul in turn '
      'with the step; this one is context.', rows=rows)
