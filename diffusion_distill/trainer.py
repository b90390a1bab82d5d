"""The pmapped train step and the loop for ONE stage (the teacher, or one round).

The step is pure: `(state, batch, *extra) -> (state, metrics)`, where `extra`
holds arrays broadcast to every device, such as a distillation teacher's
parameters. It is pmapped over all local devices and its gradients are
averaged over the device axis. The loop around it owns data, logging,
sample grids and checkpoints, and resumes from the stage's latest checkpoint.
"""

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_distill import checkpoints
from diffusion_distill import inference
from diffusion_distill import preemption
from diffusion_distill.train_state import TrainState

AXIS = 'batch'


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


def warmup_constant_schedule(learning_rate, warmup_steps):
  """Linear warm-up from 0, then constant (the teacher's schedule)."""
  if not warmup_steps:
    return optax.constant_schedule(learning_rate)
  return optax.join_schedules([
      optax.linear_schedule(0., learning_rate, warmup_steps),
      optax.constant_schedule(learning_rate)], [warmup_steps])


def train_step(state: TrainState, batch, *extra, loss_fn, optimizer,
               ema_decay, skip_nonfinite):
  """One update on this device's part of the batch; call it under pmap.

  `loss_fn(params, batch, rng, *extra) -> (loss, per_example_loss)`.
  """
  rng = jax.random.fold_in(
      jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
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
  ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1. - ema_decay) * p,
                            state.ema_params, params)
  new_state = state.replace(
      step=state.step + 1, params=params, ema_params=ema_params,
      opt_state=opt_state,
      nonfinite_in_a_row=jnp.where(finite, 0, state.nonfinite_in_a_row + 1))
  metrics = {'loss': loss, 'grad_norm': grad_norm,
             'nonfinite_updates': 1. - finite.astype(jnp.float32)}
  return new_state, metrics


@dataclasses.dataclass
class Stage:
  """What one stage trains and where it writes.

  `meta` is stored with every checkpoint (e.g. num_sample_steps). `extra` is
  a tuple of host pytrees given to the step on every device (the teacher's
  parameters in a distillation round). `sampler` draws the periodic grids
  (its params are replaced by the current EMA parameters).
  """
  name: str
  workdir: str
  num_steps: int
  loss_fn: Callable
  optimizer: optax.GradientTransformation
  learning_rate_fn: Callable
  ema_decay: float
  init_params: Any
  rng: Any
  make_iterator: Callable[[int], Any]
  meta: dict
  sampler: inference.Sampler
  grid_num_steps: int
  extra: tuple = ()
  log_every_steps: int = 100
  checkpoint_every_steps: int = 1000
  sample_every_steps: int = 0
  num_grid_samples: int = 64
  skip_nonfinite: bool = True
  max_nonfinite_in_a_row: int = 100
  # Called after each completed step with the host step number (tests use it
  # to simulate a crash at a chosen step).
  step_hook: Optional[Callable[[int], None]] = None


_P_STEPS = {}


def pmapped_step(stage: Stage, devices=None):
  """The stage's train_step, pmapped over `devices` (default: all local).

  One pmapped function per (loss, optimizer, ...) pair, so stages that share
  them (distillation rounds of the same length) share its compiled program.
  """
  key = (stage.loss_fn, stage.optimizer, stage.ema_decay,
         stage.skip_nonfinite, None if devices is None else tuple(devices))
  if key not in _P_STEPS:
    _P_STEPS[key] = jax.pmap(
        functools.partial(train_step, loss_fn=stage.loss_fn,
                          optimizer=stage.optimizer, ema_decay=stage.ema_decay,
                          skip_nonfinite=stage.skip_nonfinite),
        axis_name=AXIS, donate_argnums=(0,), devices=devices)
  return _P_STEPS[key]


def _first_local(x):
  """This process's copy of a pmapped value (x[0] would read device 0, which
  lives on process 0 only: other processes would wait for it forever)."""
  return x.addressable_data(0)[0]


def _unreplicate(tree):
  return jax.device_get(jax.tree.map(_first_local, tree))


def _write_grid(stage, writer, step, ema_params):
  images = stage.sampler.with_params(ema_params).sample(jax.random.PRNGKey(0), stage.num_grid_samples,
                    num_steps=stage.grid_num_steps)
  grid = inference.image_grid(images)
  if jax.process_index() == 0:
    inference.save_png(
        os.path.join(stage.workdir, 'samples', f'step_{step:08d}.png'), grid)
  writer.write_images(step, {f'samples_{stage.grid_num_steps}steps':
                             grid[None]})


def run_stage(stage: Stage):
  """Trains `stage` to its last step, resuming from its latest checkpoint.

  Returns the final TrainState as host arrays.
  """
  ckpt = checkpoints.Checkpointer(os.path.join(stage.workdir, 'checkpoints'))
  state = TrainState.create(stage.init_params, stage.optimizer, stage.rng)
  start = 0
  if ckpt.latest_step() is not None:
    # The step restored, not the latest on disk: an unusable latest
    # checkpoint is skipped (and moved aside) for the one before it.
    state, _, start = ckpt.restore(state)
    logging.info('%s: resuming from step %d', stage.name, start)
  if start >= stage.num_steps:
    ckpt.close()
    return state

  writer = metric_writers.create_default_writer(
      stage.workdir, just_logging=jax.process_index() > 0)
  p_step = pmapped_step(stage)
  state_r = flax.jax_utils.replicate(state)
  extra_r = flax.jax_utils.replicate(stage.extra)
  batches = flax.jax_utils.prefetch_to_device(stage.make_iterator(start), 2)
  report = periodic_actions.ReportProgress(
      num_train_steps=stage.num_steps, writer=writer)
  pending = []
  t0 = time.time()
  for step in range(start + 1, stage.num_steps + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state_r, metrics = p_step(state_r, next(batches), *extra_r)
    pending.append(metrics)
    report(step)
    if itstime(step, stage.log_every_steps, stage.num_steps):
      host = _unreplicate(pending)  # One transfer for all pending steps.
      scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      scalars['nonfinite_updates'] *= len(host)
      scalars['learning_rate'] = float(stage.learning_rate_fn(step - 1))
      writer.write_scalars(step, scalars)
      pending = []
      in_a_row = int(_unreplicate(state_r.nonfinite_in_a_row))
      if stage.max_nonfinite_in_a_row and (
          in_a_row >= stage.max_nonfinite_in_a_row):
        raise NonFiniteError(
            f'{stage.name}: {in_a_row} consecutive updates had a non-finite '
            f'loss or gradient at step {step}; the last checkpoint in '
            f'{ckpt.directory} is intact. Lower the learning rate or check '
            'the data.')
    saved = itstime(step, stage.checkpoint_every_steps, stage.num_steps)
    if saved:
      ckpt.save(step, _unreplicate(state_r), stage.meta)
    if preemption.requested():
      if not saved:
        ckpt.save(step, _unreplicate(state_r), stage.meta)
      writer.flush()
      ckpt.close()
      raise preemption.Preempted(
          f'{stage.name}: stopped after step {step} on SIGTERM, checkpoint '
          f'saved in {ckpt.directory}; run the same command to resume')
    if itstime(step, stage.sample_every_steps, stage.num_steps):
      _write_grid(stage, writer, step, _unreplicate(state_r.ema_params))
    if stage.step_hook is not None:
      stage.step_hook(step)
  writer.flush()
  logging.info('%s: %d steps in %.1f s', stage.name, stage.num_steps - start,
               time.time() - t0)
  final = _unreplicate(state_r)
  ckpt.close()
  return final
