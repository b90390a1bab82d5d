"""Section `pmap_vs_shard_map`: the same step under jax.pmap and under
jax.jit(jax.shard_map(...)), to see whether pmap's per-call cost shows.

The digits teacher step (trainer.Step.single, which averages gradients
with pmean over trainer.AXIS) runs over a mesh of the local devices with
the batch split on the device axis: once through Step.__call__ (the pmapped
Step.fn, as trainer.run_stage calls it), once as a jitted shard_map with the
state replicated and the batch sharded. A trivial function (x + 1) under
both shows the per-call cost alone; x + 1 on every leaf of the train state,
the per-call cost of a pytree of arguments as large as the step's. The two
variants and the reference matmul are timed in turn. On a CPU with fewer
local devices than asked, the section runs in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=N.
"""

import dataclasses
import os

import flax.jax_utils
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_distill import trainer
from diffusion_distill.train_state import TrainState

from benchmarks.speed import build
from benchmarks.speed import child
from benchmarks.speed import matmul as matmul_lib
from benchmarks.speed import report
from benchmarks.speed import timing as timing_lib

P = jax.sharding.PartitionSpec


def pmap_call(stage, config, batch_size, devices):
  """Step.__call__ on replicated state and [devices, ...] batches."""
  args = build.call_args(stage, config, batch_size, devices)
  state_r, batches, extra_r = args[0], args[1], tuple(args[2:])

  def call():
    nonlocal state_r
    state_r, metrics = stage.step(state_r, batches, extra_r)
    return metrics
  return call


def shard_map_call(stage, config, batch_size, mesh):
  """The same single-device step as jit(shard_map) over `mesh`."""
  step = stage.step
  fn = jax.jit(jax.shard_map(
      step.single, mesh=mesh,
      in_specs=(P(), P(trainer.AXIS)) + (P(),) * len(stage.extra),
      out_specs=(P(), P())), donate_argnums=(0,))
  replicated = jax.NamedSharding(mesh, P())
  # From host copies: the state is donated, and device_put may reuse the
  # buffers of device arrays (stage.rng) that later workloads still need.
  state = jax.device_put(jax.device_get(
      TrainState.create(stage.init_params, step.optimizer, stage.rng)),
                         replicated)
  batch = jax.device_put(build.random_batch(config, batch_size),
                         jax.NamedSharding(mesh, P(trainer.AXIS)))
  extra = jax.device_put(stage.extra, replicated)

  def call():
    nonlocal state
    state, metrics = fn(state, batch, *extra)
    return metrics
  return call


def trivial_calls(mesh, devices):
  """x + 1 on one float per device, under pmap and under jit(shard_map)."""
  n = len(devices)
  x_r = flax.jax_utils.replicate(np.zeros((), np.float32), devices)
  p_fn = jax.pmap(lambda x: x + 1., devices=devices)
  s_fn = jax.jit(jax.shard_map(lambda x: x + 1., mesh=mesh,
                               in_specs=P(trainer.AXIS),
                               out_specs=P(trainer.AXIS)))
  x_g = jax.device_put(jnp.zeros((n,), jnp.float32),
                       jax.NamedSharding(mesh, P(trainer.AXIS)))
  return (lambda: p_fn(x_r)), (lambda: s_fn(x_g))


def state_calls(stage, mesh, devices):
  """x + 1 on every leaf of the step's train state (the same pytree the
  step takes), under pmap and under jit(shard_map): per-leaf call cost."""
  state = jax.device_get(TrainState.create(stage.init_params,
                                           stage.step.optimizer, stage.rng))
  add = lambda tree: jax.tree.map(lambda x: x + 1, tree)
  p_fn = jax.pmap(add, devices=devices)
  s_fn = jax.jit(jax.shard_map(add, mesh=mesh, in_specs=P(), out_specs=P()))
  state_r = flax.jax_utils.replicate(state, devices)
  state_g = jax.device_put(state, jax.NamedSharding(mesh, P()))
  return (lambda: p_fn(state_r)), (lambda: s_fn(state_g)), len(
      jax.tree.leaves(state))


def compare(mm, pmap_fn, shard_fn, flops, timing) -> dict:
  """Times the matmul, pmap and shard_map in turn; their ratios."""
  t = timing_lib.time_interleaved(
      {'matmul': mm.call, 'pmap': pmap_fn, 'shard_map': shard_fn}, timing)
  out = {'pmap': {'time': t['pmap']}, 'shard_map': {'time': t['shard_map']},
         'matmul': matmul_lib.summary(mm, t['matmul'])}
  ratio = timing_lib.ratio_summary(t['pmap'], t['shard_map'])
  diffs = [a - b for a, b in zip(t['pmap']['repeats_s'],
                                 t['shard_map']['repeats_s'])]
  out['pmap_over_shard_map'] = ratio['ratio']
  out['pmap_over_shard_map_repeats'] = ratio['ratio_repeats']
  out['pmap_minus_shard_map_s'] = float(np.median(diffs))
  out['pmap_minus_shard_map_repeats_s'] = diffs
  if flops:
    for name in ('pmap', 'shard_map'):
      out[name].update(flops_per_s=flops / t[name]['median_s'],
                       ratio_to_matmul=timing_lib.ratio_summary(
                           t['matmul'], t[name], flops / mm.flops)['ratio'])
  return out


def measure(config, num_devices: int, timing, matmul_size: int) -> dict:
  """Every workload on the first `num_devices` local devices."""
  devices = jax.local_devices()[:num_devices]
  mesh = jax.sharding.Mesh(np.array(devices), (trainer.AXIS,))
  config = build.variant(config, steps_per_dispatch=1)
  stage = build.teacher_stage(config)
  mm = matmul_lib.build(matmul_size)
  rows = {}
  for batch in sorted({config.train.batch_size, num_devices}, reverse=True):
    one = build.random_batch(config, batch // num_devices)
    flops = stage.step.flops(stage.init_params, one) * num_devices
    row = compare(mm, pmap_call(stage, config, batch, devices),
                  shard_map_call(stage, config, batch, mesh), flops, timing)
    rows[f'digits_teacher_batch{batch}'] = dict(row, batch_size=batch)
  rows['trivial_x_plus_1'] = compare(mm, *trivial_calls(mesh, devices),
                                     None, timing)
  p_fn, s_fn, num_leaves = state_calls(stage, mesh, devices)
  rows['train_state_plus_1'] = dict(compare(mm, p_fn, s_fn, None, timing),
                                    num_leaves=num_leaves)
  return {'num_devices': num_devices, 'device_kind': devices[0].device_kind,
          'rows': rows}


def in_child(args: dict) -> dict:
  child.hide_gpus_from_tf()
  return measure(ml_collections.ConfigDict(args['config']),
                 args['num_devices'], timing_lib.Timing(**args['timing']),
                 args['matmul_size'])


def run(ctx) -> dict:
  """In this process if it has the devices, else in a fresh one (CPU)."""
  n, opts = ctx.opts.shard_devices, ctx.opts
  if ctx.platform != 'cpu' or jax.local_device_count() >= n:
    out = measure(opts.digits, min(n, jax.local_device_count()),
                  opts.timing, opts.matmul_size)
    out['xla_flags'] = os.environ.get('XLA_FLAGS') or None
    return out
  flag = f'--xla_force_host_platform_device_count={n}'
  flags = (os.environ.get('XLA_FLAGS', '') + ' ' + flag).strip()
  out = child.run('benchmarks.speed.sharding', {
      'config': report.config_dict(opts.digits), 'num_devices': n,
      'timing': dataclasses.asdict(opts.timing),
      'matmul_size': opts.matmul_size}, env={'XLA_FLAGS': flags})
  out['xla_flags'] = flags
  return out


def section(ctx) -> dict:
  r = run(ctx)
  step_rows = [v for k, v in r['rows'].items() if k.startswith('digits')]
  value = max(v['pmap_over_shard_map'] for v in step_rows)
  return report.entry(
      value, None, None, 'ratio',
      'pmap time / jit(shard_map) time per call of the same step (median of '
      'the repeat-by-repeat ratios), digits teacher step over a mesh of '
      'num_devices devices, batch split on the device axis; value = the '
      'largest over the step rows; pmap_minus_shard_map_s = median of the '
      'repeat-by-repeat differences per call; trivial_x_plus_1 shows the '
      'per-call cost alone, and train_state_plus_1 (x + 1 on every leaf of '
      'the step\'s train state) the per-call cost with the step\'s pytree of '
      'arguments. A data point; no goal.', **r)


if __name__ == '__main__':
  child.serve(in_child)
