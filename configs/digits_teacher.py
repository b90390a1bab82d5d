"""Teacher on the bundled 8x8 digits: offline, on a laptop CPU.

  python main.py --config=configs/digits_teacher.py --workdir=/tmp/digits

Hardware: any CPU (WORKDIR/timing.json records the time; BENCHMARKS.md,
"The quickstart", has it measured). A 1.07M-parameter U-Net (ch 32,
emb_ch 128, ch_mult 1,2, 2 res blocks, no attention), x-prediction with
truncated-SNR weighting, 6,000 steps at batch 64.
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
  config.train.num_steps = 6000
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 200
  config.train.weight_decay = 0.0
  config.train.ema_decay = 0.999
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = 1000
  config.train.sample_every_steps = 2000
  config.train.num_grid_samples = 100
  config.train.grid_sample_steps = 64

  # DDIM with this teacher is about as good at 64 steps as at 32 (FD-digits
  # 14.1 and 14.4, 1,000 samples: benchmarks/results/quickstart_digits.json),
  # so distillation starts at 64.
  config.distill.start_num_steps = 64
  config.distill.steps_per_round = 600
  config.distill.last_rounds_multiplier = 1
  config.distill.learning_rate = 2e-4
  config.distill.batch_size = 64

  config.eval.num_samples = 1000
  config.eval.num_reference = 1797
  config.eval.sample_steps = (1, 2, 4, 8, 16, 32, 64)
  return config
