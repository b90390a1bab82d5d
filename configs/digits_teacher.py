"""Teacher on the bundled 8x8 digits: offline, on a laptop CPU.

  python main.py --config=configs/digits_teacher.py --workdir=/tmp/digits

Hardware: any CPU. Measured on a 2-core x86_64 VM (no accelerator): 6,000
steps in 548 s (about 11 steps/s), samples recognizable as digits.
A 1.07M-parameter U-Net (ch 32, emb_ch 128, ch_mult 1,2, 2 res blocks, no attention),
x-prediction with truncated-SNR weighting, 6,000 steps at batch 64.
"""

from configs import base


def get_config():
  config = base.get_config()

  config.dataset.name = 'digits'
  config.dataset.random_flip = False  # A mirrored 3 is not a 3.

  config.model.ch = 32
  config.model.emb_ch = 128
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = ()
  config.model.dropout = 0.0

  config.train.batch_size = 64
  # A learning rate decayed to 0 at the last step and a short EMA: the
  # teacher of half the steps of a constant rate (BENCHMARKS.md, the
  # quickstart section).
  config.train.num_steps = 3000
  config.train.decay_steps = 3000
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 200
  config.train.weight_decay = 0.0
  config.train.ema_decay = 0.995
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = 1000
  config.train.sample_every_steps = 2000
  config.train.num_grid_samples = 100
  config.train.grid_sample_steps = 64

  # Four rounds from 16 steps (the guided quickstart found that each round
  # costs the students quality, and that 16 steps of the teacher suffice).
  config.distill.start_num_steps = 16
  config.distill.steps_per_round = 300
  config.distill.last_rounds_multiplier = 1
  config.distill.learning_rate = 2e-4
  config.distill.batch_size = 64

  config.eval.num_samples = 1000
  config.eval.num_reference = 1797
  config.eval.sample_steps = (1, 2, 4, 8, 16, 32)
  return config
