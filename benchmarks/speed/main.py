"""The whole run: sections in order, the result file, the flags."""

import dataclasses
import os
import sys
import time
import traceback
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
import jax
import jaxlib

from benchmarks import provenance
from benchmarks.speed import child
from benchmarks.speed import dispatch
from benchmarks.speed import distill_cost
from benchmarks.speed import matmul
from benchmarks.speed import memory
from benchmarks.speed import options
from benchmarks.speed import pipeline
from benchmarks.speed import profile
from benchmarks.speed import report
from benchmarks.speed import sampling
from benchmarks.speed import sharding
from benchmarks.speed import table
from benchmarks.speed import training_step
from diffusion_distill import machine

# In the order they run (and appear in the table).
SECTIONS = {
    'matmul': matmul.section,
    'step': training_step.section,
    'dispatch': dispatch.section,
    'sampling': sampling.section,
    'pipeline': pipeline.section,
    'distill_cost': distill_cost.section,
    'memory': memory.section,
    'pmap_vs_shard_map': sharding.section,
    'profile': profile.section,
}
GOALS = {'step': training_step.GOAL, 'dispatch': dispatch.GOAL,
         'sampling': sampling.GOAL,
         'pipeline': pipeline.GOAL, 'distill_cost': distill_cost.GOAL}


def run_meta(opts: options.Options, sections, load_before) -> dict:
  """What the whole run was: machine, versions, sizes, load, command."""
  return {'jax_version': jax.__version__,
          'jaxlib_version': jaxlib.__version__,
          'device': machine.device_description(),
          'machine': machine.machine_tag(), 'date': machine.now(),
          'quick': opts.quick, 'packages': machine.package_versions(),
          'timing': dataclasses.asdict(opts.timing),
          'matmul_size': opts.matmul_size, 'cifar_batch': opts.cifar_batch,
          'dtypes': list(options.Context(opts).dtypes),
          'sample_batch': opts.sample_batch,
          'dispatch_k': list(opts.dispatch_k),
          'shard_devices': opts.shard_devices,
          'load_before': load_before, 'load_after': machine.load_average(),
          'sections_asked': list(sections), 'argv': list(sys.argv)}


def run_section(ctx: options.Context, name: str, keep_going: bool) -> dict:
  """One section's entry, with its own date, load and wall time."""
  run = {'date': machine.now(), 'load_before': machine.load_average(),
         'argv': list(sys.argv)}
  t0 = time.perf_counter()
  try:
    entry = SECTIONS[name](ctx)
  except Exception:  # pylint: disable=broad-except
    if not keep_going:
      raise
    entry = report.entry(None, GOALS.get(name), None, None,
                         f'section {name} raised; see error',
                         error=traceback.format_exc())
    print(f'section {name} failed:\n{entry["error"]}', file=sys.stderr,
          flush=True)
  run.update(load_after=machine.load_average(),
             section_wall_s=time.perf_counter() - t0,
             device=machine.device_description(),
             jax_version=jax.__version__)
  entry['run'] = run
  return entry


def run_benchmark(sections: Sequence[str], opts: options.Options, *,
                  keep_going: bool = False,
                  on_section: Optional[Callable[[dict], Any]] = None) -> dict:
  """Runs `sections` (in SECTIONS order) and returns the JSON-able results.

  keep_going: a section that raises is recorded with its traceback and the
  next one runs. on_section: called with the results so far after each
  section (e.g. to write them).
  """
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise ValueError(f'unknown sections {unknown}; use {list(SECTIONS)}')
  load_before = machine.load_average()
  ctx = options.Context(opts)
  out = {}
  results = lambda: {'meta': run_meta(opts, sections, load_before),
                     'sections': dict(out)}
  for name in SECTIONS:
    if name in sections:
      out[name] = run_section(ctx, name, keep_going)
      if on_section is not None:
        on_section(results())
  return results()


def define_flags():
  """The command line (defined when run, not when imported)."""
  flags.DEFINE_list('what', list(SECTIONS),
                    f'Sections to run, comma-separated: {",".join(SECTIONS)}.')
  flags.DEFINE_integer('matmul_size', 2048, 'n of the reference [n, n] @ '
                       '[n, n] matmul (use e.g. 8192 on a GPU).')
  flags.DEFINE_integer('cifar_batch', 8, 'Batch of the CIFAR-10 steps (one '
                       'device; 128 on a GPU).')
  flags.DEFINE_list('dtypes', [], 'config.model.dtype of the step section\'s '
                    'rows, each against a matmul of the same dtype (default: '
                    'float32 on CPU, float32,bfloat16 on an accelerator).')
  flags.DEFINE_integer('repeats', 5, 'Timed repeats (median and min kept).')
  flags.DEFINE_float('min_repeat_s', 1.0, 'Each timed repeat lasts at least '
                     'about this long (calls are batched).')
  flags.DEFINE_integer('warmup', 2, 'Untimed calls before timing.')
  flags.DEFINE_integer('sample_batch', 64, 'Batch of the sampling section.')
  flags.DEFINE_list('sample_steps', ['1', '4', '16', '64'],
                    'Sampler step counts N of the sampling section.')
  flags.DEFINE_list('dispatch_k', ['1', '4', '16'], 'train.steps_per_dispatch'
                    ' values of the dispatch section.')
  flags.DEFINE_integer('shard_devices', 2, 'Devices of the pmap_vs_shard_map '
                       'section (forced host devices on a CPU).')
  flags.DEFINE_boolean('quick', False, 'Tiny models and sizes (smoke test).')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir of digits.')
  flags.DEFINE_string('machine', '', 'Machine tag for the file name '
                      '(default: from platform and device, e.g. cpu-2core).')
  flags.DEFINE_string('out', '', 'Output JSON path (default: '
                      'benchmarks/results/speed_<machine>.json).')
  flags.DEFINE_boolean('merge', False, 'Keep the sections of an existing '
                       'output file that this run does not measure.')
  flags.DEFINE_boolean('keep_going', False, 'A failing section is recorded '
                       'with its error and the next runs; the JSON is '
                       'rewritten after every section.')
  flags.DEFINE_multi_string('note', [], 'Free text kept in the JSON meta.')
  flags.DEFINE_string('profile_dir', None, 'If set, timed steps run under '
                      'jax.profiler.trace(DIR/name).')


def options_from_flags(f) -> options.Options:
  """Options of the command line; given flags win over --quick sizes."""
  opts = options.quick_options(f.data_dir) if f.quick else options.Options()
  if f.data_dir:
    opts.digits.dataset.data_dir = f.data_dir
  given = lambda name: not f.quick or f[name].present
  for name in ('repeats', 'min_repeat_s', 'warmup'):
    if given(name):
      setattr(opts.timing, name, f[name].value)
  opts.timing.profile_dir = f.profile_dir
  for name in ('matmul_size', 'cifar_batch', 'sample_batch', 'shard_devices'):
    if given(name):
      setattr(opts, name, f[name].value)
  for name in ('sample_steps', 'dispatch_k'):
    if given(name):
      setattr(opts, name, tuple(int(n) for n in f[name].value))
  opts.dtypes = tuple(f.dtypes) or None
  unknown = set(opts.dtypes or ()) - set(matmul.DTYPES)
  if unknown:
    raise app.UsageError(f'--dtypes: unknown {sorted(unknown)}')
  return opts


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  sections = [w.strip() for w in f.what if w.strip()]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise app.UsageError(f'--what: unknown sections {unknown}; use '
                         f'{",".join(SECTIONS)}')
  child.hide_gpus_from_tf()
  opts = options_from_flags(f)
  tag = f.machine or machine.machine_tag()
  path = f.out or os.path.join(child.REPO, 'benchmarks', 'results',
                               f'speed_{tag}.json')
  earlier = report.read_results(path) if f.merge else None

  def finish(results):
    results['meta']['machine'] = tag
    if f.note:
      results['meta']['notes'] = list(f.note)
    if earlier:
      results = report.merge(earlier, results)
    results['provenance'] = provenance.record(
        'the sections timed by this command; a --merge keeps the earlier '
        'sections it does not run, each with its own run record')
    return report.write_results(results, path)

  results = finish(run_benchmark(
      sections, opts, keep_going=f.keep_going,
      on_section=finish if f.keep_going else None))
  print(table.format_table(results))
  print(f'wrote {path}')


def run():
  define_flags()
  app.run(main)
