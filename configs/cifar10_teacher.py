"""CIFAR-10 teacher with the paper's hyper-parameters (PAPER.md section 6).

  python main.py --config=configs/cifar10_teacher.py --workdir=gs://BUCKET/cifar10

Data: TFDS cifar10, prepared beforehand (`tfds build cifar10`), found through
--config.dataset.data_dir or TFDS_DATA_DIR.
Hardware in the paper: 8 TPUv4 chips.
Cost: the train step is 102 GFLOP per example (XLA cost analysis of this
U-Net, 60,004,099 parameters), so 800k steps at batch 128 are 1.0e19 FLOP:
about 3.3 hours at 40% of the bf16 peak of 8 TPUv4 chips (an estimate from
the FLOP count, not a measurement). PAPER.md does not give the teacher's
number of steps; 800k is this project's default.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.stages = ('teacher',)
  config.dataset.name = 'cifar10'
  config.dataset.random_flip = True

  config.model.ch = 256
  config.model.emb_ch = 1024
  config.model.ch_mult = (1, 1, 1)
  config.model.num_res_blocks = 3
  config.model.attn_resolutions = (8, 16)
  config.model.num_heads = 1
  config.model.dropout = 0.2
  config.model.mean_type = 'x'
  config.model.loss_weighting = 'snr_trunc'

  config.train.batch_size = 128
  config.train.num_steps = 800_000
  config.train.learning_rate = 2e-4
  config.train.warmup_steps = 1000
  config.train.weight_decay = 1e-3
  config.train.ema_decay = 0.9999
  config.train.grid_sample_steps = 1024

  config.distill.start_num_steps = 8192
  config.distill.learning_rate = 5e-5
  config.distill.batch_size = 128
  return config
