"""Section `dispatch`: the digits teacher step at k steps per dispatch.

train.steps_per_dispatch = k runs k steps per call, a `lax.scan` over k
batches (trainer.make_step; unrolled on CPU, trainer.scan_unroll). Goal: no
k > 1 slower than k = 1. The steps at every k and the reference matmul are
timed in turn; each row gives images/s, step FLOP/s / matmul FLOP/s, and
images/s / the k = 1 images/s, each the median of repeat-by-repeat ratios.
"""

from benchmarks.speed import build
from benchmarks.speed import matmul as matmul_lib
from benchmarks.speed import report
from benchmarks.speed import timing as timing_lib

GOAL = 1.0


def _row(cs, mm, t, name, base) -> dict:
  out = build.summary(cs, t[name])
  if cs.flops_per_call:
    out.update(matmul_lib.against(mm, t['matmul'], cs.flops_per_call,
                                  t[name]))
  # (k B / t_k[r]) / (B / t_1[r]) = k t_1[r] / t_k[r]
  vs = timing_lib.ratio_summary(t[base], t[name], cs.steps_per_dispatch)
  out['images_per_s_vs_k1'] = vs['ratio']
  out['images_per_s_vs_k1_repeats'] = vs['ratio_repeats']
  return out


def section(ctx) -> dict:
  ks = sorted(set(ctx.opts.dispatch_k) | {1})
  mm = ctx.matmul('float32')
  steps = {f'k={k}': ctx.digits_step(k) for k in ks}
  calls = {'matmul': mm.call}
  calls.update({name: cs.run for name, cs in steps.items()})
  with timing_lib.maybe_trace(ctx.opts.timing.profile_dir, 'dispatch'):
    t = timing_lib.time_interleaved(calls, ctx.opts.timing)
  rows = {name: _row(cs, mm, t, name, 'k=1') for name, cs in steps.items()}
  worst = min((r['images_per_s_vs_k1'] for r in rows.values()
               if r['steps_per_dispatch'] > 1), default=None)
  return report.entry(
      worst, GOAL, None if worst is None else worst >= GOAL, 'ratio',
      'configs/digits.py teacher step at train.batch_size on one device '
      'with train.steps_per_dispatch = k (k > 1: one call runs k steps, a '
      'lax.scan, unrolled on CPU), timed in turn with the float32 reference '
      'matmul. Per row: images/s; FLOP/s / matmul FLOP/s and images/s / '
      'the k = 1 images/s, each the median of the repeat-by-repeat ratios. '
      'value = the smallest images/s ratio of a k > 1 to k = 1; goal: '
      '>= 1 (no k > 1 slower).',
      rows=rows, batch_size=ctx.opts.digits.train.batch_size)
