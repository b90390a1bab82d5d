"""Closed-form checks of the schedule, parameterizations, weightings and steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distill import diffusion, samplers, schedules
from tests import gaussian


def _logsnr_fn(t):
  return schedules.cosine_logsnr(t, -20., 20.)


def test_cosine_schedule_endpoints_and_inverse():
  t = jnp.linspace(0., 1., 11)
  logsnr = _logsnr_fn(t)
  np.testing.assert_allclose(logsnr[0], 20., atol=1e-3)
  np.testing.assert_allclose(logsnr[-1], -20., atol=5e-3)  # float32 tan near pi/2
  assert np.all(np.diff(np.asarray(logsnr)) < 0)
  np.testing.assert_allclose(
      schedules.cosine_t_from_logsnr(logsnr), t, atol=1e-5)
  # Unclipped, the cosine schedule has alpha_t = cos(pi t / 2).
  np.testing.assert_allclose(
      schedules.alpha_sigma(
          schedules.cosine_logsnr(jnp.array([0.3]), -1e3, 1e3))[0],
      np.cos(0.3 * np.pi / 2), rtol=1e-5)


def test_alpha_sigma_variance_preserving():
  logsnr = jnp.linspace(-20., 20., 41)
  alpha, sigma = schedules.alpha_sigma(logsnr)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1., rtol=1e-6)
  np.testing.assert_allclose(jnp.log(alpha**2 / sigma**2), logsnr, atol=1e-4)


def _data(seed=0, shape=(16, 4, 4, 3)):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.uniform(k1, shape, minval=-1., maxval=1.)
  eps = jax.random.normal(k2, shape)
  logsnr = jax.random.uniform(k3, shape[:1], minval=-8., maxval=8.)
  return x, eps, logsnr


@pytest.mark.parametrize('mean_type', diffusion.MEAN_TYPES)
def test_parameterization_round_trip(mean_type):
  x, eps, logsnr = _data()
  z = diffusion.diffuse(x, eps, logsnr)
  alpha, sigma = schedules.alpha_sigma(diffusion.bcast(logsnr, x))
  v = alpha * eps - sigma * x
  out = {'eps': eps, 'x': x, 'v': v,
         'both': jnp.concatenate([x, eps], axis=-1)}[mean_type]
  pred = diffusion.predict(out, z, logsnr, mean_type)
  np.testing.assert_allclose(pred.x_hat, x, atol=2e-4)
  np.testing.assert_allclose(pred.eps_hat, eps, atol=2e-3)
  np.testing.assert_allclose(pred.v_hat, v, atol=2e-3)


def test_clipping_recomputes_eps_from_clipped_x():
  x, eps, logsnr = _data()
  z = diffusion.diffuse(x, eps, logsnr)
  pred = diffusion.predict(3. * x, z, logsnr, 'x', clip_x=True)
  assert float(jnp.max(jnp.abs(pred.x_hat))) <= 1.
  alpha, sigma = schedules.alpha_sigma(diffusion.bcast(logsnr, x))
  np.testing.assert_allclose(alpha * pred.x_hat + sigma * pred.eps_hat, z,
                             atol=1e-5)


def test_unknown_mean_type_is_refused():
  with pytest.raises(ValueError, match='mean_type'):
    diffusion.predict(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1), 'y')


def test_weightings_equal_their_eps_and_v_losses():
  x, eps, logsnr = _data(1)
  z = diffusion.diffuse(x, eps, logsnr)
  x_hat = x + 0.1 * jax.random.normal(jax.random.PRNGKey(5), x.shape)
  pred = diffusion.predict(x_hat, z, logsnr, 'x')
  alpha, sigma = schedules.alpha_sigma(diffusion.bcast(logsnr, x))
  v = alpha * eps - sigma * x
  x_mse = diffusion.mean_flat((x - pred.x_hat)**2)
  eps_mse = diffusion.mean_flat((eps - pred.eps_hat)**2)
  v_mse = diffusion.mean_flat((v - pred.v_hat)**2)
  w = lambda name: diffusion.loss_weight(logsnr, name)
  np.testing.assert_allclose(w('constant') * x_mse, x_mse)
  np.testing.assert_allclose(w('snr') * x_mse, eps_mse, rtol=1e-3)
  np.testing.assert_allclose(w('snr_plus_one') * x_mse, v_mse, rtol=1e-3)
  np.testing.assert_allclose(
      w('snr_trunc') * x_mse, jnp.maximum(x_mse, eps_mse), rtol=1e-3)
  with pytest.raises(ValueError, match='loss_weighting'):
    diffusion.loss_weight(logsnr, 'snr2')


def test_ddim_x_target_inverts_ddim_step():
  x, eps, logsnr_t = _data(2)
  logsnr_s = logsnr_t + 1.5
  z_t = diffusion.diffuse(x, eps, logsnr_t)
  z_s = diffusion.ddim_step(z_t, x, logsnr_t, logsnr_s)
  np.testing.assert_allclose(
      diffusion.ddim_x_target(z_t, z_s, logsnr_t, logsnr_s), x, atol=1e-4)


def test_ddim_step_with_true_x_follows_forward_process():
  # With x_hat = x, eps_hat = eps, so DDIM moves along the same noise draw.
  x, eps, logsnr_t = _data(3)
  logsnr_s = logsnr_t + 2.
  z_t = diffusion.diffuse(x, eps, logsnr_t)
  np.testing.assert_allclose(
      diffusion.ddim_step(z_t, x, logsnr_t, logsnr_s),
      diffusion.diffuse(x, eps, logsnr_s), atol=1e-5)


def test_ancestral_posterior_matches_gaussian_conditioning():
  x, eps, logsnr_t = _data(4)
  logsnr_s = logsnr_t + 1.
  z_t = diffusion.diffuse(x, eps, logsnr_t)
  a_t, s_t = schedules.alpha_sigma(diffusion.bcast(logsnr_t, x))
  a_s, s_s = schedules.alpha_sigma(diffusion.bcast(logsnr_s, x))
  # q(z_t | z_s) = N(a_ts z_s, s2_ts); the posterior q(z_s | z_t, x) follows.
  a_ts = a_t / a_s
  s2_ts = s_t**2 - a_ts**2 * s_s**2
  var = s2_ts * s_s**2 / s_t**2
  mean = (a_ts * s_s**2 / s_t**2) * z_t + (a_s * s2_ts / s_t**2) * x
  m, v0 = diffusion.posterior_mean_var(z_t, x, logsnr_t, logsnr_s, 0.)
  np.testing.assert_allclose(m, mean, atol=1e-5)
  np.testing.assert_allclose(v0, var, rtol=1e-3)
  _, v1 = diffusion.posterior_mean_var(z_t, x, logsnr_t, logsnr_s, 1.)
  np.testing.assert_allclose(v1, var * s_t**2 / s_s**2,
                             rtol=1e-4)
  _, vh = diffusion.posterior_mean_var(z_t, x, logsnr_t, logsnr_s, 0.5)
  np.testing.assert_allclose(vh, jnp.sqrt(v0 * v1), rtol=1e-4)


def _ddim_affine_map(x_hat_fn, dim, num_steps):
  """DDIM with a linear denoiser is affine in z_1: returns (A, b) of x = A z_1 + b."""
  z = jnp.concatenate([jnp.zeros((1, dim)), jnp.eye(dim)], axis=0)
  out = jax.jit(samplers.ddim_sample, static_argnums=(0, 3))(
      x_hat_fn, z, num_steps, _logsnr_fn)
  b = out[0]
  return (out[1:] - b).T, b


def test_many_step_ddim_reproduces_gaussian_data():
  mean, cov = gaussian.make_gaussian(dim=3)
  x_hat_fn = gaussian.exact_x_hat_fn(mean, cov)
  a, b = _ddim_affine_map(x_hat_fn, 3, 1024)
  np.testing.assert_allclose(b, mean, atol=1e-3)
  np.testing.assert_allclose(a @ a.T, cov, atol=3e-3)
  # Few-step DDIM is visibly off: the test above can fail.
  a1, _ = _ddim_affine_map(x_hat_fn, 3, 1)
  assert float(jnp.max(jnp.abs(a1 @ a1.T - cov))) > 1e-2


def test_renoise_follows_the_forward_process():
  # q(z_t | z_s) composed with q(z_s | x) must equal q(z_t | x) in law.
  n = 200_000
  k1, k2 = jax.random.split(jax.random.PRNGKey(7))
  x = jnp.full((n, 1), 0.6)
  logsnr_s, logsnr_t = jnp.full((n,), 2.), jnp.full((n,), -1.)
  z_s = diffusion.diffuse(x, jax.random.normal(k1, x.shape), logsnr_s)
  z_t = diffusion.renoise(k2, z_s, logsnr_s, logsnr_t)
  alpha_t, sigma_t = schedules.alpha_sigma(jnp.float32(-1.))
  np.testing.assert_allclose(jnp.mean(z_t), alpha_t * 0.6, atol=1e-2)
  np.testing.assert_allclose(jnp.std(z_t), sigma_t, rtol=1e-2)


@pytest.mark.parametrize('sampler', ['ancestral', 'stochastic'])
def test_stochastic_samplers_with_exact_denoiser_reproduce_gaussian(sampler):
  """With a perfect denoiser, many-step stochastic samplers are unbiased."""
  mean, cov = gaussian.make_gaussian(dim=2, seed=1)
  x_hat_fn = gaussian.exact_x_hat_fn(mean, cov)
  n = 20_000
  z = jax.random.normal(jax.random.PRNGKey(0), (n, 2))
  rng = jax.random.PRNGKey(1)
  if sampler == 'ancestral':
    run = lambda z: samplers.ancestral_sample(x_hat_fn, z, 256, _logsnr_fn,
                                              rng, noise_interp=0.)
  else:
    run = lambda z: samplers.stochastic_sample(x_hat_fn, z, 256, _logsnr_fn,
                                               rng)
  x = jax.jit(run)(z)
  # Standard errors at n = 20k are ~0.005 for these scales.
  np.testing.assert_allclose(jnp.mean(x, 0), mean, atol=0.03)
  np.testing.assert_allclose(jnp.cov(x.T), cov, atol=0.03)
