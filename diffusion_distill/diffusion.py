"""Pure math of the diffusion process (docs/method.md, sections 1-3 and 5).

Every function works on a batch: `logsnr` has shape [B] and broadcasts over
the trailing (image) axes of `z`/`x`. Nothing here knows about networks:
callers pass network outputs or x_hat in.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_distill.schedules import alpha_sigma

MEAN_TYPES = ('eps', 'x', 'both', 'v')
LOSS_WEIGHTINGS = ('constant', 'snr', 'snr_trunc', 'snr_plus_one')


def bcast(a, x):
  """Reshapes per-example `a` [B] so it broadcasts against `x` [B, ...]."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def diffuse(x, eps, logsnr):
  """Forward process q(z_t | x): z_t = alpha_t x + sigma_t eps."""
  alpha, sigma = alpha_sigma(bcast(logsnr, x))
  return alpha * x + sigma * eps


class Prediction(NamedTuple):
  x_hat: jax.Array
  eps_hat: jax.Array
  v_hat: jax.Array


def predict(model_output, z, logsnr, mean_type, clip_x=False):
  """Turns raw network output into (x_hat, eps_hat, v_hat).

  With `clip_x`, x_hat is clipped to [-1, 1] and eps_hat/v_hat are recomputed
  from the clipped x_hat, so that a sampler step stays consistent with it.
  """
  alpha, sigma = alpha_sigma(bcast(logsnr, z))
  model_output = model_output.astype(jnp.float32)
  eps_hat = None
  if mean_type == 'eps':
    eps_hat = model_output
    x_hat = (z - sigma * eps_hat) / alpha
  elif mean_type == 'x':
    x_hat = model_output
  elif mean_type == 'both':
    x_tilde, eps_tilde = jnp.split(model_output, 2, axis=-1)
    # Interpolates between the x and eps parameterizations: the x head
    # dominates at low SNR (where eps -> x is unstable) and vice versa.
    x_hat = sigma**2 * x_tilde + alpha * (z - sigma * eps_tilde)
  elif mean_type == 'v':
    x_hat = alpha * z - sigma * model_output
  else:
    raise ValueError(
        f'mean_type={mean_type!r} is not known; use one of {MEAN_TYPES}.')
  if clip_x:
    x_hat = jnp.clip(x_hat, -1., 1.)
  if eps_hat is None or clip_x:
    eps_hat = (z - alpha * x_hat) / sigma
  v_hat = alpha * eps_hat - sigma * x_hat
  return Prediction(x_hat=x_hat, eps_hat=eps_hat, v_hat=v_hat)


def guided_x_hat(x_hat_cond, x_hat_uncond, w):
  """Classifier-free guidance at strength w (docs/method.md, section 7).

  x_hat_w = (1 + w) x_hat(z, c) - w x_hat(z, null); w = 0 is the conditional
  model. `w` is a scalar or one value per example.
  """
  w = bcast(jnp.asarray(w, x_hat_cond.dtype), x_hat_cond)
  return (1. + w) * x_hat_cond - w * x_hat_uncond


def loss_weight(logsnr, weighting):
  """Weight w(lambda) of the x-space loss w * ||x - x_hat||^2 (docs/method.md, section 3)."""
  if weighting == 'constant':
    return jnp.ones_like(logsnr)
  if weighting == 'snr':
    return jnp.exp(logsnr)
  if weighting == 'snr_trunc':
    return jnp.maximum(jnp.exp(logsnr), 1.)
  if weighting == 'snr_plus_one':
    return jnp.exp(logsnr) + 1.
  raise ValueError(
      f'loss_weighting={weighting!r} is not known; use one of {LOSS_WEIGHTINGS}.')


def mean_flat(x):
  """Mean over all but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def ddim_step(z_t, x_hat, logsnr_t, logsnr_s):
  """Deterministic DDIM step from time t to an earlier time s, given x_hat(z_t)."""
  alpha_t, sigma_t = alpha_sigma(bcast(logsnr_t, z_t))
  alpha_s, sigma_s = alpha_sigma(bcast(logsnr_s, z_t))
  eps_hat = (z_t - alpha_t * x_hat) / sigma_t
  return alpha_s * x_hat + sigma_s * eps_hat


def ddim_x_target(z_t, z_s, logsnr_t, logsnr_s):
  """The x for which one DDIM step from z_t lands exactly on z_s.

  Solves z_s = alpha_s x + (sigma_s/sigma_t)(z_t - alpha_t x) for x: the
  target of progressive distillation (Algorithm 2). It is undefined when
  sigma_s = 0; callers use the teacher's x_hat there.
  """
  alpha_t, sigma_t = alpha_sigma(bcast(logsnr_t, z_t))
  alpha_s, sigma_s = alpha_sigma(bcast(logsnr_s, z_t))
  ratio = sigma_s / sigma_t
  return (z_s - ratio * z_t) / (alpha_s - ratio * alpha_t)


def renoise(rng, z_s, logsnr_s, logsnr_t):
  """Forward process from time s to a later time t: a sample of q(z_t | z_s).

  q(z_t | z_s) = N((alpha_t/alpha_s) z_s, sigma_t^2 (1 - SNR(t)/SNR(s))).
  """
  alpha_s, _ = alpha_sigma(bcast(logsnr_s, z_s))
  alpha_t, sigma_t = alpha_sigma(bcast(logsnr_t, z_s))
  one_minus_r = -jnp.expm1(bcast(logsnr_t - logsnr_s, z_s))
  noise = jax.random.normal(rng, z_s.shape, z_s.dtype)
  return (alpha_t / alpha_s) * z_s + sigma_t * jnp.sqrt(one_minus_r) * noise


def posterior_mean_var(z_t, x_hat, logsnr_t, logsnr_s, noise_interp):
  """Mean and variance of the ancestral step q(z_s | z_t, x = x_hat).

  The variance is interpolated in log space between the lower bound
  (1 - r) sigma_s^2 (the true posterior) and the upper bound
  (1 - r) sigma_t^2, with r = SNR(t)/SNR(s) and `noise_interp` in [0, 1].
  """
  alpha_t, sigma_t = alpha_sigma(bcast(logsnr_t, z_t))
  alpha_s, sigma_s = alpha_sigma(bcast(logsnr_s, z_t))
  log_r = bcast(logsnr_t - logsnr_s, z_t)
  r = jnp.exp(log_r)
  one_minus_r = -jnp.expm1(log_r)
  mean = r * (alpha_s / alpha_t) * z_t + one_minus_r * alpha_s * x_hat
  log_var_lower = jnp.log(one_minus_r) + 2. * jnp.log(sigma_s)
  log_var_upper = jnp.log(one_minus_r) + 2. * jnp.log(sigma_t)
  log_var = noise_interp * log_var_upper + (1. - noise_interp) * log_var_lower
  return mean, jnp.exp(log_var)


def ancestral_step(rng, z_t, x_hat, logsnr_t, logsnr_s, noise_interp=0.):
  """Stochastic step: a sample of q(z_s | z_t, x = x_hat) with interpolated variance."""
  mean, var = posterior_mean_var(z_t, x_hat, logsnr_t, logsnr_s, noise_interp)
  return mean + jnp.sqrt(var) * jax.random.normal(rng, z_t.shape, z_t.dtype)
