"""A tiny digits config: every test that trains uses it, so compiles stay
cheap; and a tiny teacher file in the paper's released format."""

import flax.serialization
import jax
import numpy as np

from configs import digits_teacher
from diffusion_distill import load_sampler
from diffusion_distill import models


def tiny_config(data_dir, **overrides):
  config = digits_teacher.get_config()
  config.dataset.data_dir = data_dir
  config.model.ch = 32
  config.model.emb_ch = 32
  config.model.ch_mult = (1,)
  config.model.num_res_blocks = 1
  # The values the tests were written against, before the quickstart's
  # teacher moved to v output and a decayed learning rate.
  config.model.mean_type = 'x'
  config.train.batch_size = 8
  config.train.num_steps = 6
  config.train.warmup_steps = 2
  config.train.decay_steps = 0
  config.train.ema_decay = 0.999
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 2
  config.train.sample_every_steps = 6
  config.train.num_grid_samples = 4
  config.train.grid_sample_steps = 4
  config.distill.batch_size = 8
  config.distill.start_num_steps = 8
  config.distill.end_num_steps = 1
  config.distill.steps_per_round = 4
  config.distill.last_rounds_multiplier = 1
  config.distill.long_rounds_max_steps = 2
  config.consistency.batch_size = 8
  config.consistency.num_steps = 4
  config.consistency.teacher_num_steps = 8
  config.consistency.phases = (2, 1)
  config.consistency.target_decay = 0.5
  config.eval.sample_steps = (1, 2, 4, 8, 16, 32, 64)
  for key, value in overrides.items():  # 'section.field' or a top-level field
    if '.' in key:
      section, field = key.split('.')
      config[section][field] = value
    else:
      config[key] = value
  return config


def get_config():
  """For `main.py --config=tests/tiny.py --config.dataset.data_dir=DIR`."""
  return tiny_config(None)


def paper_checkpoint(path, params, num_sample_steps=None):
  """Writes `params` to `path` laid out like the paper's released train
  states (Flax msgpack: optimizer target and Adam moments, EMA)."""
  state = {'step': np.int64(1234),
           'optimizer': {'target': params,
                         'state': {'step': np.int64(1234),
                                   'param_states': jax.tree.map(
                                       lambda a: {'grad_ema': a,
                                                  'grad_sq_ema': a},
                                       params)}},
           'ema_params': params}
  if num_sample_steps is not None:
    state['num_sample_steps'] = np.int64(num_sample_steps)
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(state))


def paper_teacher(config, path, num_sample_steps=8):
  """An untrained but non-trivial teacher of `config`'s U-Net, written to
  `path` in the paper's format; returns its parameters."""
  model = models.create_model(config)
  params = models.init_params(model, config, jax.random.PRNGKey(3))
  rs = np.random.RandomState(0)
  params = jax.tree.map(
      lambda a: (a + 0.05 * rs.normal(size=a.shape)).astype(np.float32),
      params)
  paper_checkpoint(path, params, num_sample_steps=num_sample_steps)
  return params


class Crash(Exception):
  """What a test's step hook raises to stand for a kill."""


def crash_on_call(n):
  """A trainer step hook that raises Crash on its n-th call (after the
  dispatch of that call's step)."""
  calls = []

  def hook(step):
    calls.append(step)
    if len(calls) == n:
      raise Crash()

  return hook


def assert_trees_equal(a, b):
  """Bit for bit, leaf by leaf."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def assert_final_student(workdir, final, teacher_params):
  """The last student of `workdir` moved away from its teacher, samples in
  1 step and is what its stage returned (`final`); returns its sampler."""
  diffs = [float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(final), jax.tree.leaves(teacher_params))]
  assert max(diffs) > 1e-4
  sampler = load_sampler(workdir)
  assert sampler.num_steps == 1
  assert_trees_equal(sampler.params, final)
  return sampler
