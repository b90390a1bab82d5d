"""Section `pipeline`: input_pipeline's images/s over the teacher step's.

The digits iterator (input_pipeline.create_train_iterator at
train.batch_size, after filling its cache) and the digits teacher step are
timed in turn; the figure is the median of the repeat-by-repeat ratios of
their images/s.
"""

import time

import numpy as np

from diffusion_distill import input_pipeline

from benchmarks.speed import report
from benchmarks.speed import timing as timing_lib

GOAL = 10.


def start(config, batch_size, warmup_batches):
  """(iterator, images per batch, start-up seconds), its cache filled."""
  t0 = time.perf_counter()
  it = input_pipeline.create_train_iterator(config, batch_size=batch_size,
                                            seed=config.seed)
  first = next(it)
  startup_s = time.perf_counter() - t0
  for _ in range(warmup_batches):
    next(it)
  return it, int(np.prod(first['image'].shape[:2])), startup_s


def section(ctx) -> dict:
  opts = ctx.opts
  config = opts.digits
  it, images, startup_s = start(config, config.train.batch_size,
                                opts.pipeline_warmup_batches)
  step = ctx.digits_step(1)
  t = timing_lib.time_interleaved(
      {'pipeline': lambda: next(it), 'teacher_step': step.run}, opts.timing)
  tp, ts = t['pipeline'], t['teacher_step']
  # (images / tp[r]) / (step images / ts[r])
  r = timing_lib.ratio_summary(ts, tp, images / step.images_per_call)
  return report.entry(
      r['ratio'], GOAL, r['ratio'] >= GOAL, 'ratio',
      'images/s delivered by input_pipeline.create_train_iterator (digits, '
      'global batch = train.batch_size, host NumPy batches, after '
      'warmup_batches) / images/s of the digits teacher training step, timed '
      'in turn (median of the repeat-by-repeat ratios).',
      batch_size=images, startup_s=startup_s,
      warmup_batches=opts.pipeline_warmup_batches, time=tp,
      images_per_s=images / tp['median_s'],
      teacher_step_images_per_s=step.images_per_call / ts['median_s'],
      teacher_step_time=ts, ratio_repeats=r['ratio_repeats'],
      ratio_best=r['ratio_best'])
