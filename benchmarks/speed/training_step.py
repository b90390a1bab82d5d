"""Section `step`: the CIFAR-10 U-Net's training steps against the matmul.

Each row is the teacher or the first distillation round's step of the
paper's CIFAR-10 U-Net at --cifar_batch on one device, in one dtype
(config.model.dtype), timed in turn with the reference matmul of the same
dtype; its figure is step FLOP/s / matmul FLOP/s, the median of the
repeat-by-repeat ratios. The accelerator rows (batch 128, float32 and
bfloat16 against an 8192^2 matmul) are listed as not measured on a CPU.
"""

from benchmarks.speed import build
from benchmarks.speed import matmul as matmul_lib
from benchmarks.speed import report
from benchmarks.speed import timing as timing_lib

GOAL = 0.5
ROWS = (('cifar10_teacher', 'cifar_teacher', 'teacher'),
        ('cifar10_distill', 'cifar_distill', 'distill'))
ACCELERATOR_BATCH = 128
ACCELERATOR_MATMUL = 8192


def build_row(ctx, which: str, kind: str, dtype: str) -> build.CompiledStep:
  """The compiled teacher step, or the first round's distillation step."""
  config = build.variant(getattr(ctx.opts, which), steps_per_dispatch=1,
                         dtype=dtype)
  if kind == 'teacher':
    stage = build.teacher_stage(config)
  else:
    rounds = build.distill_rounds(config)
    stage = rounds.stage(0, ctx.teacher_params(config))
  return build.compile_stage(stage, config, ctx.opts.cifar_batch,
                             name=f'{which}_{kind}_{dtype}')


def measure_against_matmul(cs: build.CompiledStep, mm: matmul_lib.Matmul,
                           timing: timing_lib.Timing) -> dict:
  """`cs` timed in turn with `mm`: its summary and FLOP/s ratio."""
  with timing_lib.maybe_trace(timing.profile_dir, cs.name):
    t = timing_lib.time_interleaved({'matmul': mm.call, 'step': cs.run},
                                    timing)
  out = build.summary(cs, t['step'])
  if cs.flops_per_call:
    out.update(matmul_lib.against(mm, t['matmul'], cs.flops_per_call,
                                  t['step']))
  return out


def not_measured(ctx) -> list:
  """The accelerator rows, on a CPU: named, with why they are missing."""
  if ctx.platform != 'cpu':
    return []
  return [{'row': f'{name} step, batch {ACCELERATOR_BATCH}, {dtype}, vs '
                  f'{dtype} {ACCELERATOR_MATMUL}^2 matmul',
           'why': 'accelerator row; this run had no accelerator (platform '
                  'cpu)'}
          for dtype in ('float32', 'bfloat16') for name, _, _ in ROWS]


def section(ctx) -> dict:
  entries = {}
  for dtype in ctx.dtypes:
    mm = ctx.matmul(dtype)
    for name, which, kind in ROWS:
      cs = build_row(ctx, which, kind, dtype)
      entries[f'{name}_{dtype}'] = dict(
          measure_against_matmul(cs, mm, ctx.opts.timing), dtype=dtype)
      del cs  # The CIFAR-10 state is large: free it before the next row.
  f32 = [e.get('ratio') for k, e in entries.items() if k.endswith('float32')]
  value = min(f32) if f32 and None not in f32 else None
  return report.entry(
      value, GOAL, None if value is None else value >= GOAL, 'ratio',
      'FLOP/s of the training step / FLOP/s of the reference matmul of the '
      'same dtype, timed in turn in this run (ratio = median of the '
      'repeat-by-repeat ratios). The step is the teacher step of '
      'teacher_stage.teacher_stage or the first round\'s of '
      'distill.Rounds, pmapped over ONE device with the whole batch on it, '
      'state donated, on a random batch already on the device. FLOPs: '
      'trainer.Step.flops (lowered HLO of one step). value = the smaller '
      'float32 ratio of the two CIFAR-10 rows.',
      cifar_batch=ctx.opts.cifar_batch, entries=entries,
      not_measured=not_measured(ctx))
