"""The train step and the loop of ONE stage (the teacher, or one round).

The step is pure: `(state, batch, *extra) -> (state, metrics)`, where `extra`
holds arrays broadcast to every device, such as a distillation teacher's
parameters. It is pmapped over all local devices, its gradients averaged over
the device axis; `steps_per_dispatch` steps may run in one call (a
`lax.scan` over that many batches on the device). The stage's driver builds
the compiled step (`make_step`) once and hands it to every stage that
shares it. The loop owns data, logging, sample grids and checkpoints, and
resumes from the stage's latest checkpoint.
"""

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Optional

from clu import metric_writers
from clu import periodic_actions
import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_distill import checkpoints
from diffusion_distill import images
from diffusion_distill import inference
from diffusion_distill import preemption
from diffusion_distill import layout
from diffusion_distill import timing
from diffusion_distill.train_state import TrainState

AXIS = 'batch'
log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """Too many consecutive updates had a non-finite loss or gradient."""


def itstime(step, every, total):
  """Whether a periodic action is due after `step` of `total` steps."""
  return bool(every) and (step % every == 0 or step == total)


def make_optimizer(learning_rate_fn, *, weight_decay=0., grad_clip=0.):
  """Adam with decoupled weight decay, after global-norm gradient clipping."""
  parts = []
  if grad_clip:
    parts.append(optax.clip_by_global_norm(grad_clip))
  parts.append(optax.adamw(learning_rate_fn, b1=0.9, b2=0.999, eps=1e-8,
                           weight_decay=weight_decay))
  return optax.chain(*parts)


def teacher_schedule(learning_rate, warmup_steps, decay_steps=0):
  """The teacher's learning rate: a linear warm-up from 0, then constant; with
  `decay_steps`, a cosine after the warm-up that reaches 0 at update
  `decay_steps` (counted from 0, warm-up included) and stays there. It counts
  the optimizer's updates, so a skipped non-finite update delays it by one.
  """
  if decay_steps:
    return optax.warmup_cosine_decay_schedule(
        0., learning_rate, warmup_steps, decay_steps, end_value=0.)
  if not warmup_steps:
    return optax.constant_schedule(learning_rate)
  return optax.join_schedules([
      optax.linear_schedule(0., learning_rate, warmup_steps),
      optax.constant_schedule(learning_rate)], [warmup_steps])


def moving_average(average, params, decay):
  """decay * average + (1 - decay) * params, leaf by leaf: decay 0 copies
  `params`, decay 1 keeps `average`."""
  return jax.tree.map(lambda a, p: decay * a + (1. - decay) * p, average,
                      params)


def train_step(state: TrainState, batch, *extra, loss_fn, optimizer,
               ema_decay, skip_nonfinite, loss_reads_step=False,
               target_decay=None):
  """One update on this device's part of the batch; call it under pmap.

  `loss_fn(params, batch, rng, *extra) -> (loss, per_example_loss)`; with
  `loss_reads_step` it also takes `step=`, the number of updates before this
  one (for a loss that changes over training, such as stage 1's w warm-up).
  With `target_decay` (a state created `with_target`), it also takes
  `target_params=`, the target network, which then moves towards the
  updated parameters at that rate (0: their copy; 1: frozen). The loss's
  gradient is taken with respect to `params` only.
  """
  rng = jax.random.fold_in(
      jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
  if loss_reads_step:
    loss_fn = functools.partial(loss_fn, step=state.step)
  if target_decay is not None:
    loss_fn = functools.partial(loss_fn, target_params=state.target_params)
  (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, rng, *extra)
  grads = jax.lax.pmean(grads, AXIS)
  loss = jax.lax.pmean(loss, AXIS)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
  ema_params = moving_average(state.ema_params, params, ema_decay)
  target_params = (state.target_params if target_decay is None else
                   moving_average(state.target_params, params, target_decay))
  new_state = state.replace(
      step=state.step + 1, params=params, ema_params=ema_params,
      target_params=target_params,
      opt_state=opt_state,
      nonfinite_in_a_row=jnp.where(finite, 0, state.nonfinite_in_a_row + 1))
  metrics = {'loss': loss, 'grad_norm': grad_norm,
             'nonfinite_updates': 1. - finite.astype(jnp.float32)}
  return new_state, metrics


def _steps(state, batches, extra, *, step_fn, unroll):
  """One update per entry of `batches`' leading axis: a `lax.scan`.

  `unroll` = the number of batches compiles the k steps as straight-line
  code; 1 keeps one loop body whatever k is.
  """
  return jax.lax.scan(lambda s, batch: step_fn(s, batch, *extra), state,
                      batches, unroll=unroll)


def scan_unroll(steps_per_dispatch, platform):
  """How far `_steps` unrolls its scan on `platform`.

  On accelerators, a loop: its compile time does not grow with k. XLA:CPU
  compiles a convolution's kernel gradient inside a loop body without the
  fast path it takes in straight-line code (BENCHMARKS.md, "Steps per
  dispatch on a CPU", has the timings), so on CPU the k steps are unrolled:
  compile time grows with k there.
  """
  return steps_per_dispatch if platform == 'cpu' else 1


@dataclasses.dataclass(frozen=True)
class Step:
  """A compiled step and what it was built from.

  Called as `step(state, batches, extra) -> (state, metrics)` on replicated
  arrays. With `steps_per_dispatch` k = 1, `batches` is one batch per device
  and `fn` the pmapped train_step; with k > 1 each device's batches have a
  leading axis of k and the metrics one entry per step. `single` is one step
  on one device, unmapped.
  """
  fn: Callable
  optimizer: optax.GradientTransformation
  learning_rate_fn: Callable
  steps_per_dispatch: int
  single: Callable
  # The target network's rate (train_step); None: the state has none.
  target_decay: Optional[float] = None

  def init_state(self, params, rng):
    """The state this step trains, at update 0 from `params`."""
    return TrainState.create(params, self.optimizer, rng,
                             with_target=self.target_decay is not None)

  def __call__(self, state, batches, extra):
    if self.steps_per_dispatch == 1:
      return self.fn(state, batches, *extra)
    return self.fn(state, batches, extra)

  def flops(self, params, batch, *extra):
    """XLA's FLOP count of one step on `batch` (arrays or ShapeDtypeStructs)
    on one device: the step is lowered, not run. None if XLA gives none."""
    state = jax.eval_shape(
        lambda p: self.init_state(p, jax.random.PRNGKey(0)),
        params)
    lead = lambda x: jax.ShapeDtypeStruct((1,) + tuple(np.shape(x)),
                                          jnp.result_type(x))
    mapped = jax.vmap(self.single, axis_name=AXIS)
    lowered = jax.jit(mapped).lower(*jax.tree.map(
        lead, (state, batch) + tuple(extra)))
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get('flops')
    return float(flops) if flops and flops > 0 else None


def make_step(loss_fn, optimizer, learning_rate_fn, *, ema_decay,
              skip_nonfinite=True, steps_per_dispatch=1, devices=None,
              loss_reads_step=False, target_decay=None):
  """The pmapped train step: build it once and share it between stages.

  Stages that share a Step (distillation rounds of the same length) share
  its compiled program. `devices` defaults to all local devices;
  `loss_reads_step` and `target_decay` as in train_step. With
  `steps_per_dispatch` k > 1, one call runs k steps, a `lax.scan` over k
  batches (for accelerators, where a call's fixed cost is large next to a
  small step; see `scan_unroll` for CPU).
  """
  single = functools.partial(train_step, loss_fn=loss_fn, optimizer=optimizer,
                             ema_decay=ema_decay,
                             skip_nonfinite=skip_nonfinite,
                             loss_reads_step=loss_reads_step,
                             target_decay=target_decay)
  if steps_per_dispatch == 1:
    fn = jax.pmap(single, axis_name=AXIS, donate_argnums=(0,),
                  devices=devices)
  else:
    platform = (devices or jax.local_devices())[0].platform
    steps = functools.partial(
        _steps, step_fn=single,
        unroll=scan_unroll(steps_per_dispatch, platform))
    fn = jax.pmap(steps, axis_name=AXIS, donate_argnums=(0,),
                  devices=devices)
  return Step(fn=fn, optimizer=optimizer, learning_rate_fn=learning_rate_fn,
              steps_per_dispatch=steps_per_dispatch, single=single,
              target_decay=target_decay)


@dataclasses.dataclass(frozen=True)
class Periodic:
  """How often the loop logs, saves and draws sample grids (in steps)."""
  log_every_steps: int = 100
  checkpoint_every_steps: int = 1000
  sample_every_steps: int = 0
  num_grid_samples: int = 64
  max_nonfinite_in_a_row: int = 100


@dataclasses.dataclass(frozen=True)
class Progress:
  """Where a stage stands among several (distillation's rounds), in steps."""
  done_before: int
  total: int
  label: str


@dataclasses.dataclass
class Stage:
  """What one stage trains and where it writes.

  `directory` is the stage's directory of the workdir (layout.py's layout).
  `meta` is stored with every checkpoint (e.g. num_sample_steps). `extra` is
  a tuple of host pytrees given to the step on every device (the teacher's
  parameters in a distillation round). `sampler` draws the periodic grids
  (its params are replaced by the current EMA parameters). `progress`
  places the stage among several, for the overall percentage and ETA.
  """
  name: str
  directory: str
  num_steps: int
  step: Step
  init_params: Any
  rng: Any
  make_iterator: Callable[[int], Any]
  meta: dict
  sampler: inference.Sampler
  grid_num_steps: int
  periodic: Periodic
  extra: tuple = ()
  progress: Optional[Progress] = None
  # Written to TensorBoard when the stage starts (its HParams tab).
  hparams: Optional[dict] = None
  # Called after each dispatch with the host step number (tests use it to
  # simulate a crash at a chosen step).
  step_hook: Optional[Callable[[int], None]] = None
  # The run's workdir: each session's time, rate and peak memory go to its
  # timing.json (timing.py). None records nothing.
  workdir: Optional[str] = None


def replicate(tree, devices=None):
  """`tree` copied to each of `devices` (default: the local devices), sharded
  as the pmapped step returns its state: over a mesh whose one axis is AXIS.

  The step's compiled program is cached by its inputs' shardings. Arrays from
  flax.jax_utils.replicate live on a mesh with another axis name, so a state
  replicated that way and then the step's own output state were two inputs:
  every stage compiled its step twice, once at step 1 and again at step 2.
  """
  devices = list(devices or jax.local_devices())
  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(devices), (AXIS,)),
      jax.sharding.PartitionSpec(AXIS))
  def put(x):
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape),
                          sharding)
  return jax.tree.map(put, tree)


def _first_local(x):
  """This process's copy of a pmapped value (x[0] would read device 0, which
  lives on process 0 only: other processes would wait for it forever)."""
  return x.addressable_data(0)[0]


def _unreplicate(tree):
  return jax.device_get(jax.tree.map(_first_local, tree))


def _write_grid(stage, writer, step, ema_params):
  samples = stage.sampler.with_params(ema_params).sample(
      jax.random.PRNGKey(0), stage.periodic.num_grid_samples,
      num_steps=stage.grid_num_steps)
  grid = images.upscale(images.image_grid(samples))
  if jax.process_index() == 0:
    images.save_png(layout.sample_grid_path(stage.directory, step), grid)
  writer.write_images(step, {f'samples_{stage.grid_num_steps}steps':
                             grid[None]})


def _stacked(batches, k):
  """Groups every k batches into one, stacked along axis 1 (after devices)."""
  while True:
    group = [next(batches) for _ in range(k)]
    yield jax.tree.map(lambda *b: np.stack(b, axis=1), *group)


def _batches(stage, start):
  """Device batches from step `start`: per dispatch, k steps' batches."""
  batches = stage.make_iterator(start)
  if stage.step.steps_per_dispatch > 1:
    batches = _stacked(batches, stage.step.steps_per_dispatch)
  return flax.jax_utils.prefetch_to_device(batches, 2)


def _restore(stage, ckpt):
  """(state, first step): the latest usable checkpoint, or a fresh state."""
  state = stage.step.init_state(stage.init_params, stage.rng)
  if ckpt.latest_step() is None:
    return state, 0
  # The step restored, not the latest on disk: an unusable latest
  # checkpoint is skipped (and moved aside) for the one before it.
  state, _, start = ckpt.restore(state)
  log.info('%s: resuming from step %d', stage.name, start)
  k = stage.step.steps_per_dispatch
  if start % k and start < stage.num_steps:
    raise checkpoints.CheckpointError(
        f'{stage.name}: the checkpoint at step {start} in {ckpt.directory} is '
        f'not a multiple of train.steps_per_dispatch={k}: resume with a '
        f'train.steps_per_dispatch that divides {start}')
  return state, start


class _ProgressLog:
  """One log line per logging step: the stage's and the overall progress."""

  def __init__(self, stage, start):
    self.stage, self.start, self.t0 = stage, start, time.time()

  def line(self, step, scalars):
    rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
    p = self.stage.progress
    if p is None:
      where, remaining = '', self.stage.num_steps - step
    else:
      done = p.done_before + step
      where = f' ({p.label}, {100. * done / p.total:.1f}% of all)'
      remaining = p.total - done
    log.info('%s: step %d/%d%s, loss %.5g, %.2f steps/s, ETA %s',
             self.stage.name, step, self.stage.num_steps, where,
             scalars['loss'], rate, _duration(remaining / rate if rate > 0
                                              else float('inf')))


def _duration(seconds):
  if not np.isfinite(seconds):
    return '?'
  minutes, s = divmod(int(round(seconds)), 60)
  hours, m = divmod(minutes, 60)
  return f'{hours}h{m:02d}m' if hours else f'{m}m{s:02d}s'


def _log_metrics(stage, writer, progress, step, pending):
  host = _unreplicate(pending)  # One transfer for all pending dispatches.
  per_step = {k: np.concatenate([np.reshape(m[k], (-1,)) for m in host])
              for k in host[0]}
  scalars = {k: float(np.mean(v)) for k, v in per_step.items()}
  scalars['nonfinite_updates'] = float(np.sum(per_step['nonfinite_updates']))
  scalars['learning_rate'] = float(stage.step.learning_rate_fn(step - 1))
  writer.write_scalars(step, scalars)
  progress.line(step, scalars)


def _check_finite_run(stage, state_r, step, directory):
  limit = stage.periodic.max_nonfinite_in_a_row
  in_a_row = int(_unreplicate(state_r.nonfinite_in_a_row))
  if limit and in_a_row >= limit:
    raise NonFiniteError(
        f'{stage.name}: {in_a_row} consecutive updates had a non-finite '
        f'loss or gradient at step {step}; the last checkpoint in '
        f'{directory} is intact. Lower the learning rate or check the data.')


def _train(stage, ckpt, state, start, writer):
  """The loop from `start` to the last step; returns the replicated state."""
  p = stage.periodic
  k = stage.step.steps_per_dispatch
  state_r = replicate(state)
  extra_r = replicate(stage.extra)
  batches = _batches(stage, start)
  report = periodic_actions.ReportProgress(num_train_steps=stage.num_steps,
                                           writer=writer)
  progress, pending = _ProgressLog(stage, start), []
  first_step_seconds = None
  for step in range(start + k, stage.num_steps + 1, k):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state_r, metrics = stage.step(state_r, next(batches), extra_r)
    pending.append(metrics)
    if step == start + k:  # Compilation included: a sign of life for launchers.
      jax.block_until_ready(metrics)
      first_step_seconds = round(time.time() - progress.t0, 1)
      log.info('%s: first step done (step %d), %.1f s after the start',
               stage.name, step, first_step_seconds)
    report(step)
    if itstime(step, p.log_every_steps, stage.num_steps):
      _log_metrics(stage, writer, progress, step, pending)
      pending = []
      _check_finite_run(stage, state_r, step, ckpt.directory)
    saved = itstime(step, p.checkpoint_every_steps, stage.num_steps)
    if saved:
      ckpt.save(step, _unreplicate(state_r), stage.meta)
    if preemption.requested():
      if not saved:
        ckpt.save(step, _unreplicate(state_r), stage.meta)
      raise preemption.Preempted(
          f'{stage.name}: stopped after step {step} on SIGTERM, checkpoint '
          f'saved in {ckpt.directory}; run the same command to resume')
    if itstime(step, p.sample_every_steps, stage.num_steps):
      _write_grid(stage, writer, step, _unreplicate(state_r.ema_params))
    if stage.step_hook is not None:
      stage.step_hook(step)
  return state_r, first_step_seconds


def run_stage(stage: Stage):
  """Trains `stage` to its last step, resuming from its latest checkpoint.

  Returns the final TrainState as host arrays.
  """
  ckpt = checkpoints.Checkpointer(layout.checkpoint_dir(stage.directory))
  try:
    state, start = _restore(stage, ckpt)
    if start >= stage.num_steps:
      return state
    writer = metric_writers.create_default_writer(
        stage.directory, just_logging=jax.process_index() > 0)
    if stage.hparams and start == 0:
      writer.write_hparams(stage.hparams)
      writer.flush()
    t0 = time.time()
    try:
      state_r, first_step_seconds = _train(stage, ckpt, state, start, writer)
    finally:
      writer.flush()
    seconds = time.time() - t0
    log.info('%s: %d steps in %.1f s', stage.name, stage.num_steps - start,
             seconds)
    if stage.workdir is not None:
      steps = stage.num_steps - start
      timing.record(layout.timing_path(stage.workdir), stage.name, seconds, from_step=start,
                    steps=steps, steps_per_second=round(steps / seconds, 2),
                    first_step_seconds=first_step_seconds)
    return _unreplicate(state_r)
  finally:
    ckpt.close()
