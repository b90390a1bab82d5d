"""logSNR schedules (docs/method.md, section 1).

A schedule maps continuous time t in [0, 1] to logSNR lambda_t, decreasing
from logsnr_max at t=0 to logsnr_min at t=1. Everything else (alpha, sigma,
SNR) is derived from lambda, so samplers and losses only ever see logsnr.
`logsnr_schedule` is the one place where a schedule is chosen: the losses
and the samplers both get their t -> logsnr function from it.
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


# config.schedule.name -> t -> logsnr of (t, logsnr_min, logsnr_max).
SCHEDULES = {'cosine': cosine_logsnr}


def logsnr_schedule(name, logsnr_min, logsnr_max):
  """The t -> logsnr function of a schedule (names are checked in config_checks)."""
  schedule = SCHEDULES[name]
  lo, hi = float(logsnr_min), float(logsnr_max)
  return lambda t: schedule(t, lo, hi)


def get_logsnr_fn(schedule_config):
  """Returns t -> logsnr for a `config.schedule` section."""
  return logsnr_schedule(schedule_config.get('name', 'cosine'),
                         schedule_config.logsnr_min, schedule_config.logsnr_max)
