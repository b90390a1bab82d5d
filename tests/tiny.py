"""A tiny digits config: every test that trains uses it, so compiles stay cheap."""

from configs import digits_teacher


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
