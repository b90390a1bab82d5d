"""Sampling loops (docs/method.md, section 5) as lax loops.

A sampler takes `x_hat_fn(z, logsnr) -> x_hat` and starts from z_1 ~ N(0, I)
on the grid t_i = i/N. The number of steps is a traced value, so one compiled
sampler serves every step count, and each step costs one network evaluation.
"""

import jax
import jax.numpy as jnp

from diffusion_distill import diffusion

# The sampling methods: deterministic DDIM, ancestral (the teacher's noisy
# sampler) and the stochastic sampler for distilled models.
SAMPLERS = ('ddim', 'ancestral', 'stochastic')


def model_x_hat_fn(model_fn, params, mean_type, labels=None, clip_x=True):
  """Wraps a `model_fn(params, z, logsnr, y, train, rng)` as an eval-mode x_hat_fn."""

  def x_hat_fn(z, logsnr):
    out = model_fn(params, z, logsnr, labels, False, None)
    return diffusion.predict(out, z, logsnr, mean_type, clip_x=clip_x).x_hat

  return x_hat_fn


def guided_x_hat_fn(model_fn, params, mean_type, labels, null_labels, w,
                    clip_x=True):
  """The guided x_hat at strength `w` of a model trained with label dropout:
  two evaluations, with `labels` and with `null_labels`, combined before
  the clip (diffusion.guided_x_hat)."""
  cond_fn = model_x_hat_fn(model_fn, params, mean_type, labels, clip_x=False)
  uncond_fn = model_x_hat_fn(model_fn, params, mean_type, null_labels,
                             clip_x=False)

  def x_hat_fn(z, logsnr):
    x_hat = diffusion.guided_x_hat(cond_fn(z, logsnr), uncond_fn(z, logsnr), w)
    return jnp.clip(x_hat, -1., 1.) if clip_x else x_hat

  return x_hat_fn


def _grid_logsnr(logsnr_fn, i, num_steps, batch_size):
  t = i.astype(jnp.float32) / num_steps.astype(jnp.float32)
  return logsnr_fn(jnp.full((batch_size,), t))


def _grid_loop(x_hat_fn, z_init, num_steps, logsnr_fn, step):
  """Walks the grid t_i = i/N from i = N down to 1, one network call a step.

  `step(k, i, z, x_hat, logsnr_t, logsnr_s, grid)` returns z at s = (i-1)/N;
  `grid(j)` is logsnr at j/N. The last step returns x_hat itself.
  """
  num_steps = jnp.asarray(num_steps, jnp.int32)
  grid = lambda j: _grid_logsnr(logsnr_fn, j, num_steps, z_init.shape[0])

  def body(k, z):
    i = num_steps - k
    logsnr_t, logsnr_s = grid(i), grid(i - 1)
    x_hat = x_hat_fn(z, logsnr_t)
    return jnp.where(i == 1, x_hat,
                     step(k, i, z, x_hat, logsnr_t, logsnr_s, grid))

  return jax.lax.fori_loop(0, num_steps, body, z_init)


def ddim_sample(x_hat_fn, z_init, num_steps, logsnr_fn):
  """Deterministic DDIM from t=1 to t=0 in `num_steps` steps; returns x_hat of the last."""

  def step(k, i, z, x_hat, logsnr_t, logsnr_s, grid):
    del k, i, grid
    return diffusion.ddim_step(z, x_hat, logsnr_t, logsnr_s)

  return _grid_loop(x_hat_fn, z_init, num_steps, logsnr_fn, step)


def ancestral_sample(x_hat_fn, z_init, num_steps, logsnr_fn, rng,
                     noise_interp=0.):
  """Ancestral sampling q(z_s | z_t, x = x_hat) with log-space variance interpolation."""

  def step(k, i, z, x_hat, logsnr_t, logsnr_s, grid):
    del i, grid
    return diffusion.ancestral_step(jax.random.fold_in(rng, k), z, x_hat,
                                    logsnr_t, logsnr_s, noise_interp)

  return _grid_loop(x_hat_fn, z_init, num_steps, logsnr_fn, step)


def stochastic_sample(x_hat_fn, z_init, num_steps, logsnr_fn, rng):
  """The stochastic sampler for distilled models (docs/method.md, section 5).

  Each step from t = i/N takes a DDIM step of twice the length, to
  (i-2)/N (clipped at 0), then re-noises with the forward process back to
  (i-1)/N. The last step returns x_hat, so N steps cost N evaluations.
  """

  def step(k, i, z, x_hat, logsnr_t, logsnr_s, grid):
    logsnr_far = grid(jnp.maximum(i - 2, 0))
    z_far = diffusion.ddim_step(z, x_hat, logsnr_t, logsnr_far)
    return diffusion.renoise(jax.random.fold_in(rng, k), z_far, logsnr_far,
                             logsnr_s)

  return _grid_loop(x_hat_fn, z_init, num_steps, logsnr_fn, step)


def to_uint8(x):
  """Maps samples in [-1, 1] to uint8 pixels."""
  return jnp.clip(jnp.round((x + 1.) * 127.5), 0, 255).astype(jnp.uint8)
