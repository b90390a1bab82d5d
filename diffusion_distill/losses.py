"""Training losses: the teacher's (Algorithm 1), distillation (Algorithm 2),
stage 1 of guided distillation and multistep consistency distillation
(docs/method.md, sections 3, 4, 7 and 8).

All are pure functions of explicit parameters. A `model_fn` has the signature
`model_fn(params, z, logsnr, y, train, rng) -> raw network output`; `predict`
turns that output into x_hat according to the parameterization. The losses
return the batch mean and the per-example terms.
"""

import jax
import jax.numpy as jnp

from diffusion_distill import diffusion


def sample_time(rng, batch_size, num_steps=0):
  """Continuous t ~ U[0, 1] when num_steps == 0, else t = i/N with i ~ U{1..N}."""
  if num_steps:
    i = jax.random.randint(rng, (batch_size,), 1, num_steps + 1)
    return i.astype(jnp.float32) / num_steps
  return jax.random.uniform(rng, (batch_size,))


def drop_labels(rng, labels, rate, null_label):
  """Each label replaced by `null_label` with probability `rate`."""
  drop = jax.random.uniform(rng, labels.shape) < rate
  return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def teacher_loss(params, batch, rng, *, model_fn, mean_type, weighting,
                 logsnr_fn, num_steps=0, label_dropout=0., null_label=None):
  """Weighted x-space denoising loss at t ~ U[0, 1] (or on an N-step grid).

  With `label_dropout` > 0, that share of the labels is the null class: the
  model learns the unconditional prediction too (classifier-free guidance).
  """
  x = batch['image']
  y = batch.get('label')
  if label_dropout:
    rng, rng_drop = jax.random.split(rng)
    y = drop_labels(rng_drop, y, label_dropout, null_label)
  rng_t, rng_eps, rng_model = jax.random.split(rng, 3)
  logsnr = logsnr_fn(sample_time(rng_t, x.shape[0], num_steps))
  eps = jax.random.normal(rng_eps, x.shape, x.dtype)
  z = diffusion.diffuse(x, eps, logsnr)
  out = model_fn(params, z, logsnr, y, True, rng_model)
  x_hat = diffusion.predict(out, z, logsnr, mean_type).x_hat
  per_example = diffusion.loss_weight(logsnr, weighting) * diffusion.mean_flat(
      jnp.square(x - x_hat))
  return per_example.mean(), per_example


def two_step_target(teacher_x_hat_fn, z_t, logsnr_t, logsnr_mid, logsnr_s,
                    is_last):
  """Distillation target: the x that makes one student DDIM step t -> s land
  where two teacher DDIM steps t -> mid -> s land.

  `teacher_x_hat_fn(z, logsnr) -> x_hat`. On the last interval (s = 0) the
  target is the teacher's second x_hat, since there the closed form divides
  by sigma_s -> 0.
  """
  x_hat_t = teacher_x_hat_fn(z_t, logsnr_t)
  z_mid = diffusion.ddim_step(z_t, x_hat_t, logsnr_t, logsnr_mid)
  x_hat_mid = teacher_x_hat_fn(z_mid, logsnr_mid)
  z_s = diffusion.ddim_step(z_mid, x_hat_mid, logsnr_mid, logsnr_s)
  x_tilde = diffusion.ddim_x_target(z_t, z_s, logsnr_t, logsnr_s)
  return jnp.where(diffusion.bcast(is_last, z_t), x_hat_mid, x_tilde)


def guided_target(teacher_x_hat_fn, z, logsnr, labels, null_labels, w):
  """The guided teacher's x_hat_w(z_t), the target of stage 1 (section 7).

  `teacher_x_hat_fn(z, logsnr, labels) -> x_hat`: the conditional and the
  unconditional (null label) predictions, combined at strength w.
  """
  return diffusion.guided_x_hat(teacher_x_hat_fn(z, logsnr, labels),
                                teacher_x_hat_fn(z, logsnr, null_labels), w)


def guidance_loss(params, teacher_params, batch, rng, *, model_fn,
                  teacher_model_fn, mean_type, weighting, logsnr_fn,
                  w_range, null_label, w_warmup_steps=0, step=None):
  """Stage 1: a student that takes w learns the guided teacher's x_hat_w.

  t ~ U[0, 1] (the teacher's continuous time) and w ~ U[w_min, w_max] per
  example; the student is evaluated once, the teacher (eval mode, gradients
  stopped) twice. With `w_warmup_steps`, the student's w-embedding is
  scaled by min(step / w_warmup_steps, 1), `step` counting the updates
  before this one.
  """
  x = batch['image']
  y = batch['label']
  rng_t, rng_w, rng_eps, rng_model = jax.random.split(rng, 4)
  logsnr = logsnr_fn(sample_time(rng_t, x.shape[0]))
  w = jax.random.uniform(rng_w, (x.shape[0],), minval=w_range[0],
                         maxval=w_range[1])
  z = diffusion.diffuse(x, jax.random.normal(rng_eps, x.shape, x.dtype),
                        logsnr)

  def teacher_x_hat(zz, ll, labels):
    out = teacher_model_fn(teacher_params, zz, ll, labels, False, None)
    return diffusion.predict(out, zz, ll, mean_type).x_hat

  target = jax.lax.stop_gradient(guided_target(
      teacher_x_hat, z, logsnr, y, jnp.full_like(y, null_label), w))
  student_y = (y, w)
  if w_warmup_steps:
    student_y += (jnp.minimum(
        jnp.asarray(step, jnp.float32) / w_warmup_steps, 1.),)
  out = model_fn(params, z, logsnr, student_y, True, rng_model)
  x_hat = diffusion.predict(out, z, logsnr, mean_type).x_hat
  per_example = diffusion.loss_weight(logsnr, weighting) * diffusion.mean_flat(
      jnp.square(target - x_hat))
  return per_example.mean(), per_example


def distill_loss(params, teacher_params, batch, rng, *, model_fn, mean_type,
                 weighting, logsnr_fn, num_student_steps, w_range=None):
  """Algorithm 2: the student learns to do in one step what the teacher does in two.

  The student samples in `num_student_steps` steps on the grid t_i = i/N (an
  int, or a traced int32: the rounds pass it to one compiled step); the
  teacher runs in eval mode (no dropout, no clipping) and its target is
  computed in float32 with gradients stopped. `mean_type` 'eps' is unstable
  here (x_hat = (z - sigma eps)/alpha as alpha -> 0): config_checks refuses
  it for distillation. With `w_range`, student and teacher take w (stage 2
  of guided distillation): w ~ U[w_min, w_max] per example, the same for
  both, so the target is two DDIM steps of the teacher at the student's w.
  """
  x = batch['image']
  y = batch.get('label')
  n = num_student_steps
  if w_range is not None:
    rng, rng_w = jax.random.split(rng)
    y = (y, jax.random.uniform(rng_w, (x.shape[0],), minval=w_range[0],
                               maxval=w_range[1]))
  rng_i, rng_eps, rng_model = jax.random.split(rng, 3)
  i = jax.random.randint(rng_i, (x.shape[0],), 1, n + 1)
  t = i.astype(jnp.float32) / n
  logsnr_t = logsnr_fn(t)
  logsnr_mid = logsnr_fn(t - 0.5 / n)
  logsnr_s = logsnr_fn(t - 1. / n)
  eps = jax.random.normal(rng_eps, x.shape, jnp.float32)
  z_t = diffusion.diffuse(x.astype(jnp.float32), eps, logsnr_t)

  def teacher_x_hat(z, logsnr):
    out = model_fn(teacher_params, z, logsnr, y, False, None)
    return diffusion.predict(out, z, logsnr, mean_type).x_hat

  x_tilde = jax.lax.stop_gradient(
      two_step_target(teacher_x_hat, z_t, logsnr_t, logsnr_mid, logsnr_s,
                      i == 1))
  out = model_fn(params, z_t, logsnr_t, y, True, rng_model)
  x_hat = diffusion.predict(out, z_t, logsnr_t, mean_type).x_hat
  per_example = diffusion.loss_weight(logsnr_t, weighting) * diffusion.mean_flat(
      jnp.square(x_tilde - x_hat))
  return per_example.mean(), per_example


def consistency_times(i, num_student_steps, num_teacher_steps):
  """Times of multistep consistency distillation at teacher grid points i.

  The student samples in T = `num_student_steps` steps, so [0, 1] is cut
  into T segments at t_k = k/T; the teacher's grid has N =
  `num_teacher_steps` steps, N a multiple of T. For i in 1..N: t = i/N;
  s = t - 1/N, its next grid point down, which is never below the end
  t_end of t's segment. Returns (t, s, t_end, s_is_end).
  """
  per_segment = num_teacher_steps // num_student_steps
  segment = (i - 1) // per_segment
  n = jnp.float32(num_teacher_steps)
  return (i.astype(jnp.float32) / n, (i - 1).astype(jnp.float32) / n,
          segment.astype(jnp.float32) / num_student_steps,
          (i - 1) % per_segment == 0)


def consistency_target(teacher_x_hat_fn, target_x_hat_fn, z_t, logsnr_t,
                       logsnr_s, logsnr_end, s_is_end, end_is_zero):
  """The x that makes one student DDIM step t -> t_end land where one
  teacher DDIM step t -> s, then one target-network DDIM step s -> t_end
  land (none when s = t_end).

  `*_x_hat_fn(z, logsnr) -> x_hat`. Where t_end = 0 the closed form divides
  by sigma -> 0 and the target is the x_hat of the last step instead: the
  target network's at s, or the teacher's at t when s = 0 too. With the
  teacher as the target network and two teacher steps per segment, this
  is progressive distillation's two-step target.
  """
  x_hat_t = teacher_x_hat_fn(z_t, logsnr_t)
  z_s = diffusion.ddim_step(z_t, x_hat_t, logsnr_t, logsnr_s)
  x_hat_s = target_x_hat_fn(z_s, logsnr_s)
  at_end = diffusion.bcast(s_is_end, z_t)
  z_end = jnp.where(
      at_end, z_s, diffusion.ddim_step(z_s, x_hat_s, logsnr_s, logsnr_end))
  x_tilde = diffusion.ddim_x_target(z_t, z_end, logsnr_t, logsnr_end)
  last_x_hat = jnp.where(at_end, x_hat_t, x_hat_s)
  return jnp.where(diffusion.bcast(end_is_zero, z_t), last_x_hat, x_tilde)


def consistency_loss(params, teacher_params, batch, rng, *, target_params,
                     model_fn, mean_type, weighting, logsnr_fn,
                     num_student_steps, num_teacher_steps):
  """Multistep consistency distillation: CD with one student step, multistep
  CD with T, a TRACT phase with its T and the previous phase's N.

  The student learns, at t on the teacher's grid, the x whose one DDIM step
  lands on t's segment end where the teacher's step to s followed by the
  target network's (`target_params`, a moving average of the student's
  parameters, or their copy: what trainer.train_step passes) land. Teacher and target run in eval mode; the
  target is computed in float32 with gradients stopped.
  """
  x = batch['image']
  y = batch.get('label')
  rng_t, rng_eps, rng_model = jax.random.split(rng, 3)
  i = jax.random.randint(rng_t, (x.shape[0],), 1, num_teacher_steps + 1)
  t, s, t_end, s_is_end = consistency_times(i, num_student_steps,
                                            num_teacher_steps)
  logsnr_t = logsnr_fn(t)
  eps = jax.random.normal(rng_eps, x.shape, jnp.float32)
  z_t = diffusion.diffuse(x.astype(jnp.float32), eps, logsnr_t)

  def x_hat_of(p):
    def x_hat(z, logsnr):
      out = model_fn(p, z, logsnr, y, False, None)
      return diffusion.predict(out, z, logsnr, mean_type).x_hat
    return x_hat

  x_tilde = jax.lax.stop_gradient(consistency_target(
      x_hat_of(teacher_params), x_hat_of(target_params), z_t, logsnr_t,
      logsnr_fn(s), logsnr_fn(t_end), s_is_end, t_end == 0.))
  out = model_fn(params, z_t, logsnr_t, y, True, rng_model)
  x_hat = diffusion.predict(out, z_t, logsnr_t, mean_type).x_hat
  per_example = diffusion.loss_weight(logsnr_t, weighting) * diffusion.mean_flat(
      jnp.square(x_tilde - x_hat))
  return per_example.mean(), per_example
