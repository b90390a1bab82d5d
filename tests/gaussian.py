"""Gaussian data and its exact denoiser E[x | z_t], shared by the math tests."""

import jax.numpy as jnp
import numpy as np

from diffusion_distill.schedules import alpha_sigma


def make_gaussian(dim=3, seed=0):
  """Mean and a well-conditioned covariance, as float32 arrays."""
  rs = np.random.RandomState(seed)
  a = rs.normal(size=(dim, dim)) * 0.3
  cov = a @ a.T + 0.05 * np.eye(dim)
  mean = rs.uniform(-0.5, 0.5, size=dim)
  return jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32)


def exact_x_hat_fn(mean, cov):
  """x_hat(z, logsnr) = mean + cov alpha (alpha^2 cov + sigma^2 I)^-1 (z - alpha mean).

  z has shape [B, dim]; logsnr has shape [B].
  """
  dim = mean.shape[0]

  def x_hat_fn(z, logsnr):
    alpha, sigma = alpha_sigma(logsnr)
    a = alpha[:, None, None]
    s2 = (sigma**2)[:, None, None]
    m = a**2 * cov[None] + s2 * jnp.eye(dim)[None]
    resid = z - alpha[:, None] * mean[None]
    sol = jnp.linalg.solve(m, resid[..., None])[..., 0]
    return mean[None] + alpha[:, None] * jnp.einsum('ij,bj->bi', cov, sol)

  return x_hat_fn
