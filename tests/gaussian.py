"""Gaussian data and its exact denoiser E[x | z_t], shared by the math tests."""

import jax
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


def make_class_gaussians(num_classes=3, dim=3, seed=1):
  """Class-conditional Gaussian data: (means [K, D], covs [K, D, D], priors [K])."""
  params = [make_gaussian(dim, seed + k) for k in range(num_classes)]
  means = jnp.stack([m + 0.7 * k for k, (m, _) in enumerate(params)])
  covs = jnp.stack([c for _, c in params])
  priors = jnp.full((num_classes,), 1. / num_classes)
  return means, covs, priors


def exact_class_x_hat_fn(means, covs, priors):
  """x_hat(z, logsnr, labels): E[x | z_t, c] for labels in 0..K-1, and for
  the null label K the unconditional E[x | z_t] of the mixture.

  The mixture's denoiser weighs each class's by p(c | z_t), which is
  proportional to prior_c N(z_t; alpha mean_c, alpha^2 cov_c + sigma^2 I).
  """
  num_classes, dim = means.shape
  per_class = [exact_x_hat_fn(means[k], covs[k]) for k in range(num_classes)]

  def log_likelihood(z, logsnr, k):
    alpha, sigma = alpha_sigma(logsnr)
    m = (alpha**2)[:, None, None] * covs[k][None] + (
        sigma**2)[:, None, None] * jnp.eye(dim)[None]
    resid = z - alpha[:, None] * means[k][None]
    sol = jnp.linalg.solve(m, resid[..., None])[..., 0]
    _, logdet = jnp.linalg.slogdet(m)
    return -0.5 * (jnp.sum(resid * sol, -1) + logdet)

  def x_hat_fn(z, logsnr, labels):
    cond = jnp.stack([f(z, logsnr) for f in per_class])  # [K, B, D]
    logits = jnp.stack([log_likelihood(z, logsnr, k) + jnp.log(priors[k])
                        for k in range(num_classes)])  # [K, B]
    weights = jax.nn.softmax(logits, axis=0)
    uncond = jnp.sum(weights[..., None] * cond, 0)
    labels = jnp.asarray(labels)
    picked = jnp.take_along_axis(
        cond, jnp.minimum(labels, num_classes - 1)[None, :, None], 0)[0]
    return jnp.where((labels == num_classes)[:, None], uncond, picked)

  return x_hat_fn
