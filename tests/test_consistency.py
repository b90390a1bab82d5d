"""Multistep consistency distillation's target and loss (docs/method.md,
section 8), on Gaussian data, whose exact denoiser and probability-flow
ODE are known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distill import diffusion, losses, schedules
from tests import gaussian


def _logsnr_fn(t):
  return schedules.cosine_logsnr(t, -20., 20.)


def _grid_index(logsnr, num_teacher_steps):
  """The teacher grid point i (t = i/N) whose logSNR this is."""
  t = schedules.cosine_t_from_logsnr(logsnr)
  return jnp.round(t * num_teacher_steps).astype(jnp.int32)


def grid_consistency_fn(teacher, num_student_steps, num_teacher_steps):
  """The consistency function of the teacher's DDIM steps on its grid:
  x_hat(z_t) such that one DDIM step t -> t_end lands where the teacher's
  DDIM steps from t down to its segment's end t_end land (at t_end = 0, the
  x_hat of the last of those steps)."""
  per_segment = num_teacher_steps // num_student_steps

  def x_hat_fn(z_t, logsnr_t):
    i = _grid_index(logsnr_t, num_teacher_steps)
    t, _, t_end, _ = losses.consistency_times(i, num_student_steps,
                                              num_teacher_steps)

    def teacher_step(j, carry):
      z, last = carry
      now = t - j / num_teacher_steps
      active = diffusion.bcast(now > t_end + 0.5 / num_teacher_steps, z)
      x_hat = teacher(z, _logsnr_fn(now))
      step = diffusion.ddim_step(z, x_hat, _logsnr_fn(now),
                                 _logsnr_fn(now - 1. / num_teacher_steps))
      return jnp.where(active, step, z), jnp.where(active, x_hat, last)

    z, last = jax.lax.fori_loop(0, per_segment, teacher_step,
                                (z_t, jnp.zeros_like(z_t)))
    x_tilde = diffusion.ddim_x_target(z_t, z, logsnr_t, _logsnr_fn(t_end))
    return jnp.where(diffusion.bcast(t_end == 0., z_t), last, x_tilde)

  return jax.jit(x_hat_fn)


def ode_consistency_fn(mean, cov):
  """The probability-flow ODE's map from z_t to t = 0 for N(mean, cov) data:
  mean + cov^1/2 (alpha^2 cov + sigma^2 I)^-1/2 (z - alpha mean)."""
  evals, evecs = jnp.linalg.eigh(cov)

  def x_hat_fn(z, logsnr):
    alpha, sigma = schedules.alpha_sigma(logsnr)
    scale = jnp.sqrt(evals)[None] / jnp.sqrt(
        alpha[:, None]**2 * evals[None] + sigma[:, None]**2)
    resid = (z - alpha[:, None] * mean[None]) @ evecs
    return mean[None] + (scale * resid) @ evecs.T

  return x_hat_fn


@pytest.mark.parametrize('steps', [(1, 4), (2, 8), (4, 8), (8, 64)])
def test_times_stay_inside_their_segment(steps):
  num_student, num_teacher = steps
  i = jnp.arange(1, num_teacher + 1)
  t, s, t_end, s_is_end = losses.consistency_times(i, num_student,
                                                   num_teacher)
  np.testing.assert_allclose(t - s, 1. / num_teacher, atol=1e-6)
  assert bool(jnp.all(t_end <= s + 1e-6))
  assert bool(jnp.all(t - t_end <= 1. / num_student + 1e-6))
  np.testing.assert_array_equal(s_is_end, jnp.isclose(s, t_end, atol=1e-6))
  # Each segment end t_k = k/T is the end of N/T grid points.
  ends, counts = np.unique(np.round(np.asarray(t_end) * num_student),
                           return_counts=True)
  np.testing.assert_array_equal(ends, np.arange(num_student))
  assert set(counts) == {num_teacher // num_student}


@pytest.mark.parametrize('num_student_steps', [1, 2, 4])
def test_two_teacher_steps_per_segment_is_the_progressive_target(
    num_student_steps):
  """With T = N/2 and the teacher as the target network, the target at a
  student grid point is progressive distillation's two-step target, and at
  the grid point between two the teacher's own x_hat."""
  dim, batch = 3, 48
  mean, cov = gaussian.make_gaussian(dim)
  teacher = gaussian.exact_x_hat_fn(mean, cov)
  n, big_n = num_student_steps, 2 * num_student_steps
  k1, k2 = jax.random.split(jax.random.PRNGKey(n))
  i = jax.random.randint(k1, (batch,), 1, big_n + 1)
  t, s, t_end, s_is_end = losses.consistency_times(i, n, big_n)
  lt = _logsnr_fn(t)
  z_t = jax.random.normal(k2, (batch, dim)) * 1.5
  x_tilde = losses.consistency_target(teacher, teacher, z_t, lt,
                                      _logsnr_fn(s), _logsnr_fn(t_end),
                                      s_is_end, t_end == 0.)
  pd = losses.two_step_target(teacher, z_t, lt, _logsnr_fn(t - 0.5 / n),
                              _logsnr_fn(t - 1. / n), i == 2)
  on_student_grid = np.asarray(i % 2 == 0)
  assert on_student_grid.any() and (~on_student_grid).any()
  np.testing.assert_allclose(x_tilde[on_student_grid], pd[on_student_grid],
                             atol=2e-5)
  np.testing.assert_allclose(x_tilde[~on_student_grid],
                             teacher(z_t, lt)[~on_student_grid], atol=2e-5)


def _loss_setup(num_student_steps, num_teacher_steps):
  mean, cov = gaussian.make_gaussian(3)
  exact = gaussian.exact_x_hat_fn(mean, cov)
  consistency = grid_consistency_fn(exact, num_student_steps,
                                    num_teacher_steps)

  def model_fn(params, z, logsnr, y, train, rng):
    """'mix' 0: the exact denoiser (the teacher); 1: the consistency
    function of its grid."""
    del y, train, rng
    m = params['mix']
    return m * consistency(z, logsnr) + (1. - m) * exact(z, logsnr)

  x = jax.random.multivariate_normal(jax.random.PRNGKey(0), mean, cov, (256,))

  def loss(student, target, weighting='snr_trunc'):
    return losses.consistency_loss(
        {'mix': student}, {'mix': 0.}, {'image': x}, jax.random.PRNGKey(1),
        target_params={'mix': target}, model_fn=model_fn, mean_type='x',
        weighting=weighting, logsnr_fn=_logsnr_fn,
        num_student_steps=num_student_steps,
        num_teacher_steps=num_teacher_steps)[0]

  return loss


@pytest.mark.parametrize('steps', [(1, 8), (2, 8), (4, 16)])
def test_the_exact_consistency_function_has_zero_loss(steps):
  """Student and target network both the consistency function of the
  teacher's grid: zero loss. A perturbed student, or the teacher as the
  target network where segments hold more than two grid points, not."""
  loss = _loss_setup(*steps)
  for weighting in ('constant', 'snr_trunc'):
    exact = float(loss(1., 1., weighting))
    # The teacher's one-step x_hat as the student, and a blend of 5% of it.
    for perturbed in (float(loss(0., 1., weighting)),
                      float(loss(0.95, 1., weighting))):
      assert exact < 1e-6 * perturbed, (weighting, exact, perturbed)
  wrong_target = float(loss(1., 0.))
  assert wrong_target > 1e6 * float(loss(1., 1.))


def test_gradients_reach_only_the_student():
  loss = _loss_setup(2, 8)
  grads = jax.grad(loss, argnums=(0, 1))(0.9, 1.)
  assert float(grads[0]) != 0.
  assert float(grads[1]) == 0.


def test_the_grid_consistency_function_tends_to_the_ode_map():
  """One segment (CD): as the teacher's grid gets finer, the consistency
  function of its DDIM steps tends to the probability-flow ODE's map to
  t = 0, known in closed form for Gaussian data."""
  mean, cov = gaussian.make_gaussian(3)
  exact = gaussian.exact_x_hat_fn(mean, cov)
  ode = ode_consistency_fn(mean, cov)
  errors = []
  for num_teacher_steps in (4, 16, 64):
    i = jnp.arange(1, num_teacher_steps + 1)
    logsnr = _logsnr_fn(i / num_teacher_steps)
    z = jax.random.normal(jax.random.PRNGKey(2), (num_teacher_steps, 3))
    grid = grid_consistency_fn(exact, 1, num_teacher_steps)(z, logsnr)
    errors.append(float(jnp.max(jnp.abs(grid - ode(z, logsnr)))))
  assert errors[0] > errors[1] > errors[2], errors
  assert errors[2] < 0.25 * errors[0], errors
