"""logSNR schedules (PAPER.md section 1).

A schedule maps continuous time t in [0, 1] to logSNR lambda_t, decreasing
from logsnr_max at t=0 to logsnr_min at t=1. Everything else (alpha, sigma,
SNR) is derived from lambda, so samplers and losses only ever see logsnr.
"""

import jax.numpy as jnp


def cosine_logsnr(t, logsnr_min=-20., logsnr_max=20.):
  """Cosine schedule clipped to [logsnr_min, logsnr_max]: t=0 -> max, t=1 -> min."""
  b = jnp.arctan(jnp.exp(-0.5 * logsnr_max))
  a = jnp.arctan(jnp.exp(-0.5 * logsnr_min)) - b
  return -2. * jnp.log(jnp.tan(a * t + b))


def cosine_t_from_logsnr(logsnr, logsnr_min=-20., logsnr_max=20.):
  """Inverse of `cosine_logsnr`."""
  b = jnp.arctan(jnp.exp(-0.5 * logsnr_max))
  a = jnp.arctan(jnp.exp(-0.5 * logsnr_min)) - b
  return (jnp.arctan(jnp.exp(-0.5 * logsnr)) - b) / a


def alpha_sigma(logsnr):
  """Variance preserving: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)."""
  return jnp.sqrt(jnp.reciprocal(1. + jnp.exp(-logsnr))), jnp.sqrt(
      jnp.reciprocal(1. + jnp.exp(logsnr)))


def get_logsnr_fn(schedule_config):
  """Returns t -> logsnr for a `config.schedule` section."""
  name = schedule_config.get('name', 'cosine')
  if name != 'cosine':
    raise ValueError(
        f"config.schedule.name={name!r} is not known; use 'cosine'.")
  lo, hi = float(schedule_config.logsnr_min), float(schedule_config.logsnr_max)
  return lambda t: cosine_logsnr(t, lo, hi)
