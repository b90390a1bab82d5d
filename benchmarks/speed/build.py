"""The training steps the benchmark times, built as main.py builds them.

A teacher step comes from teacher_stage.teacher_stage(config), a
distillation step from distill.Rounds(config, ...).stage(index, teacher
params): the same trainer.Step, loss, optimizer, initial state and extra
arguments that trainer.run_stage runs. The pmapped step (`Step.fn`) is
lowered and compiled ahead of time on random batches already on the
device(s), so the host->device copy and the input pipeline are left out.
"""

import dataclasses
import os
import tempfile
import time
from typing import Any, Optional

import jax
import numpy as np

from diffusion_distill import dataset_info
from diffusion_distill.stages import distill
from diffusion_distill.stages import teacher as teacher_stage_lib
from diffusion_distill import trainer
from diffusion_distill.train_state import TrainState

from benchmarks.speed import timing as timing_lib

# Stages are built with this workdir; building one writes nothing there.
UNUSED_WORKDIR = os.path.join(tempfile.gettempdir(), 'speed_benchmark_unused')


def variant(config, *, steps_per_dispatch=None, dtype=None):
  """A copy of `config` with train.steps_per_dispatch and model.dtype set."""
  config = config.copy_and_resolve_references()
  if steps_per_dispatch is not None:
    config.train.steps_per_dispatch = steps_per_dispatch
  if dtype is not None:
    config.model.dtype = dtype
  return config


def teacher_stage(config) -> trainer.Stage:
  return teacher_stage_lib.teacher_stage(config, UNUSED_WORKDIR)


def distill_rounds(config) -> distill.Rounds:
  """The rounds of config.distill's plan (their steps built on first use)."""
  return distill.Rounds(config, UNUSED_WORKDIR,
                        distill.config_round_plan(config))


def random_batch(config, batch_size: int, seed: int = 0) -> dict:
  """One host batch shaped like the input pipeline's, without devices."""
  info = dataset_info.of(config)
  rs = np.random.RandomState(seed)
  return {'image': rs.uniform(-1, 1, (batch_size,) + info.image_shape).astype(
              np.float32),
          'label': rs.randint(0, info.num_classes, (batch_size,)).astype(
              np.int32)}


def device_batches(config, batch_size: int, num_devices: int, k: int) -> dict:
  """[devices, per_device, ...] host batches, or [devices, k, per_device,
  ...] for k steps per dispatch (k different batches)."""
  if batch_size % num_devices:
    raise ValueError(f'batch {batch_size} does not split over {num_devices} '
                     'devices')
  def one(seed):
    return jax.tree.map(
        lambda x: x.reshape((num_devices, -1) + x.shape[1:]),
        random_batch(config, batch_size, seed))
  if k == 1:
    return one(0)
  return jax.tree.map(lambda *b: np.stack(b, axis=1), *map(one, range(k)))


def shard(tree, devices):
  """Host arrays [devices, ...] -> device arrays, one slice per device (as
  flax.jax_utils.prefetch_to_device places the training batches)."""
  mesh = jax.sharding.Mesh(np.array(devices), ('_device_put_sharded',))
  sharding = jax.NamedSharding(mesh, jax.P('_device_put_sharded'))
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


@dataclasses.dataclass
class CompiledStep:
  """One stage's compiled step and its arguments (state carried along)."""
  name: str
  stage: trainer.Stage
  batch_size: int  # images per step, over all devices
  steps_per_dispatch: int
  devices: list
  compiled: Any
  args: list
  lower_s: float
  compile_s: float
  flops_per_step: Optional[float]  # over all devices
  flops_compiled_per_call: Optional[float]

  last_metrics: Any = None

  def run(self):
    """One call (k steps); returns its metrics, not waited for."""
    state, self.last_metrics = self.compiled(*self.args)
    self.args[0] = state
    return self.last_metrics

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def images_per_call(self) -> int:
    return self.batch_size * self.steps_per_dispatch

  @property
  def flops_per_call(self) -> Optional[float]:
    return self.flops_per_step and self.flops_per_step * self.steps_per_dispatch

  def state_bytes(self) -> dict:
    """Bytes per device of the parameters, EMA, Adam state and extra."""
    nbytes = lambda tree: int(sum(
        np.prod(x.shape) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)))
    params = self.stage.init_params
    opt_state = jax.eval_shape(self.stage.step.optimizer.init, params)
    return {'params': nbytes(params), 'ema_params': nbytes(params),
            'opt_state': nbytes(opt_state),
            'extra (teacher params)': nbytes(self.stage.extra),
            'num_params': int(sum(np.prod(x.shape)
                                  for x in jax.tree.leaves(params)))}


def call_args(stage, config, batch_size, devices):
  """[state, batches, ...] as Step.__call__ passes them to Step.fn."""
  step = stage.step
  state = TrainState.create(stage.init_params, step.optimizer, stage.rng)
  state_r = trainer.replicate(state, devices)
  extra_r = trainer.replicate(stage.extra, devices)
  k = step.steps_per_dispatch
  batches = shard(device_batches(config, batch_size, len(devices), k),
                  devices)
  if k == 1:
    return [state_r, batches, *extra_r]
  return [state_r, batches, extra_r]


def compile_stage(stage: trainer.Stage, config, batch_size: int, *,
                  name: str, devices=None,
                  count_flops: bool = True) -> CompiledStep:
  """Lowers and compiles `stage.step.fn` for `batch_size` over `devices`
  (default: the first local device), and counts one step's FLOPs."""
  devices = devices or jax.local_devices()[:1]
  args = call_args(stage, config, batch_size, devices)
  t0 = time.perf_counter()
  lowered = stage.step.fn.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  per_device = None
  if count_flops:
    one = random_batch(config, batch_size // len(devices))
    per_device = stage.step.flops(stage.init_params, one, *stage.extra)
  return CompiledStep(
      name=name, stage=stage, batch_size=batch_size,
      steps_per_dispatch=stage.step.steps_per_dispatch,
      devices=list(devices), compiled=compiled, args=args,
      lower_s=t1 - t0, compile_s=t2 - t1,
      flops_per_step=per_device and per_device * len(devices),
      flops_compiled_per_call=timing_lib.cost_flops(compiled.cost_analysis()))


def last_loss(metrics) -> float:
  """The loss of the last step of a call's metrics (device 0)."""
  loss = np.asarray(jax.device_get(metrics['loss']))
  return float(loss.reshape(-1)[-1])


def summary(cs: CompiledStep, t: dict) -> dict:
  """Images/s, step time and FLOP/s of `cs` from its timed repeats `t`."""
  k = cs.steps_per_dispatch
  out = {'batch_size': cs.batch_size, 'steps_per_dispatch': k,
         'num_devices': cs.num_devices, 'time': t,
         'call_s': t['median_s'], 'step_s': t['median_s'] / k,
         'step_s_min': t['min_s'] / k,
         'images_per_s': cs.images_per_call / t['median_s'],
         'lower_s': cs.lower_s, 'compile_s': cs.compile_s,
         'flops_per_step': cs.flops_per_step,
         'flops_source': 'trainer.Step.flops: lowered HLO of one step',
         'flops_compiled_per_call': cs.flops_compiled_per_call,
         'last_loss': (None if cs.last_metrics is None
                       else last_loss(cs.last_metrics))}
  if cs.flops_per_step:
    out['flops_per_example'] = cs.flops_per_step / cs.batch_size
    out['flops_per_s'] = cs.flops_per_call / t['median_s']
  return out
