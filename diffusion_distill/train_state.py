"""The state of one training stage (a teacher, or one distillation round)."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a stage needs to continue bit-for-bit after a restart.

  `rng` is the stage's base key: the key of a step is derived from it, the
  step and the device index, so it never has to be carried forward.
  `ema_params` is an exponential moving average of `params`; with decay 0
  (distillation rounds) it equals `params`. `target_params`, None unless
  the stage's loss reads a target network (consistency distillation), is a
  second moving average of `params` with its own rate.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  # Consecutive updates skipped for a non-finite loss or gradient.
  nonfinite_in_a_row: jax.Array
  target_params: Any = None

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation, rng,
             with_target=False):
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
        rng=rng,
        nonfinite_in_a_row=jnp.zeros((), jnp.int32),
        target_params=(jax.tree.map(jnp.copy, params) if with_target
                       else None))
