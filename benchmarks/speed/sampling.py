"""Section `sampling`: an N-step Sampler.sample over N network evaluations.

The network evaluation is the jitted eval-mode model apply on the same
batch with its parameters on the device. Its repeats alternate with the
sampler's and the ratio is the median of the repeat-by-repeat ratios. The
sampler is timed built from host (NumPy) parameters, as models.init_params
and layout.load_model hand them out, and from parameters already on the
device.
"""

import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distill import inference
from diffusion_distill import layout
from diffusion_distill import models

from benchmarks.speed import report
from benchmarks.speed import timing as timing_lib

GOAL = 1.05


def network_eval(model, sampler, params, batch_size):
  """A callable: one jitted eval-mode network evaluation on one batch."""
  model_fn = inference.make_model_fn(model)
  rng = jax.random.PRNGKey(0)
  z = jax.random.normal(rng, (batch_size,) + sampler.image_shape)
  logsnr = jnp.zeros((batch_size,))
  labels = (jax.random.randint(rng, (batch_size,), 0, sampler.num_classes)
            if sampler.num_classes > 1 else None)
  device_params = jax.device_put(params)
  apply = jax.jit(lambda p, z, l, y: model_fn(p, z, l, y, False, None))
  return lambda: apply(device_params, z, logsnr, labels), device_params


def one_n(sampler, evaluate, n, batch_size, timing) -> dict:
  """Sampler.sample at N = n timed in turn with one network evaluation."""
  sample = functools.partial(sampler.sample, jax.random.PRNGKey(0),
                             batch_size, num_steps=n)
  t = timing_lib.time_interleaved({'sample': sample, 'network_eval': evaluate},
                                  timing)
  ts, te = t['sample'], t['network_eval']
  r = timing_lib.ratio_summary(ts, te, 1. / n)
  return {'num_steps': n, 'time': ts, 'network_eval': te,
          'sample_s': ts['median_s'], 'ratio': r['ratio'],
          'ratio_repeats': r['ratio_repeats'], 'ratio_best': r['ratio_best']}


def variant_rows(sampler, evaluate, num_steps, batch_size, timing) -> dict:
  """Every N for one sampler, the worst ratio and a line time(N) fit."""
  rows = {str(n): one_n(sampler, evaluate, n, batch_size, timing)
          for n in num_steps}
  out = {'per_num_steps': rows,
         'worst_ratio': max(r['ratio'] for r in rows.values())}
  if len(num_steps) >= 2:
    times = [r['sample_s'] for r in rows.values()]
    evals = [r['network_eval']['median_s'] for r in rows.values()]
    slope, intercept = np.polyfit(np.asarray(num_steps, float),
                                  np.asarray(times), 1)
    out['fit_seconds_per_step'] = float(slope)
    out['fit_fixed_seconds'] = float(intercept)
    out['fit_per_step_ratio'] = float(slope) / statistics.median(evals)
  return out


def measure(config, *, batch_size, num_steps, timing, params=None) -> dict:
  model = models.create_model(config)
  if params is None:
    params = models.init_params(model, config, jax.random.PRNGKey(0))
  sampler = layout.make_sampler(config, model, params)
  evaluate, device_params = network_eval(model, sampler, params,
                                         batch_size)
  out = {'batch_size': batch_size}
  for variant, s in (('host_params', sampler),
                     ('device_params', sampler.with_params(device_params))):
    out[variant] = variant_rows(s, evaluate, num_steps, batch_size, timing)
  out['per_num_steps'] = out['host_params']['per_num_steps']
  return out


def section(ctx) -> dict:
  opts = ctx.opts
  r = measure(opts.digits, batch_size=opts.sample_batch,
              num_steps=opts.sample_steps, timing=opts.timing,
              params=ctx.teacher_params(opts.digits))
  value = r['host_params']['worst_ratio']
  return report.entry(
      value, GOAL, value <= GOAL, 'ratio',
      'Sampler.sample(rng, B, num_steps=N) (DDIM, digits teacher model, one '
      'device, returns host uint8) time / (N x time of the jitted eval-mode '
      'model apply on the same batch, parameters on the device), timed in '
      'turn; ratio = median of the repeat-by-repeat ratios. value = the '
      'worst ratio over N with host parameters (as users get them); '
      'device_params = parameters placed on the device first; fit_* = '
      'least-squares line time(N) = fixed + N x per_step.', **r)
