"""Section `memory`: peak host RSS of a fresh process that builds, compiles
and runs the CIFAR-10 teacher step at --cifar_batch (context; no goal)."""

import resource
import sys

import jax
import ml_collections

from benchmarks.speed import build
from benchmarks.speed import child
from benchmarks.speed import report

PHASES = ('after_imports', 'after_compile', 'after_2_steps')


def _ru_maxrss_bytes():
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss if sys.platform == 'darwin' else rss * 1024


def _vm_hwm_bytes():
  """This process's own RSS high-water mark (Linux), else None."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def in_child(args: dict) -> dict:
  """Runs in the fresh process: {config, batch_size} -> high-water marks."""
  child.hide_gpus_from_tf()
  hwm, ru = {}, {}

  def mark(phase):
    hwm[phase], ru[phase] = _vm_hwm_bytes(), _ru_maxrss_bytes()

  mark(PHASES[0])
  config = ml_collections.ConfigDict(args['config'])
  cs = build.compile_stage(build.teacher_stage(config), config,
                           args['batch_size'], name='memory',
                           count_flops=False)
  mark(PHASES[1])
  for _ in range(2):
    jax.block_until_ready(cs.run())
  mark(PHASES[2])
  return {'vm_hwm_bytes': hwm, 'ru_maxrss_bytes': ru,
          'state_bytes': cs.state_bytes(),
          'device_memory_stats': jax.local_devices()[0].memory_stats()}


def measure(config, batch_size: int) -> dict:
  out = child.run('benchmarks.speed.memory', {
      'config': report.config_dict(config), 'batch_size': batch_size})
  out['batch_size'] = batch_size
  # ru_maxrss survives exec: a child started from a big process reports at
  # least the parent's RSS. VmHWM belongs to the child's own address space.
  if out['vm_hwm_bytes'][PHASES[-1]] is not None:
    out['peak_rss_bytes'] = out['vm_hwm_bytes'][PHASES[-1]]
    out['peak_rss_source'] = 'VmHWM of /proc/self/status in the child'
  else:
    out['peak_rss_bytes'] = out['ru_maxrss_bytes'][PHASES[-1]]
    out['peak_rss_source'] = 'ru_maxrss of the child (getrusage)'
    del out['vm_hwm_bytes']
  if not out['device_memory_stats']:
    del out['device_memory_stats']  # None on CPU
  return out


def section(ctx) -> dict:
  r = measure(ctx.opts.cifar_teacher, ctx.opts.cifar_batch)
  return report.entry(
      r['peak_rss_bytes'], None, None, 'bytes',
      'Peak resident set of a fresh Python process that imports the '
      'library, builds teacher_stage.teacher_stage for the CIFAR-10 U-Net, '
      'compiles its one-device training step and runs 2 updates at batch '
      'cifar_batch; value = VmHWM of /proc/self/status where there is one '
      '(getrusage ru_maxrss, kept too, is inherited over exec). Both after '
      'each phase; state_bytes: parameter / EMA / Adam sizes. No goal.', **r)


if __name__ == '__main__':
  child.serve(in_child)
