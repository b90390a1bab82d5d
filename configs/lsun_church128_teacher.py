"""LSUN church-outdoor 128x128 teacher (docs/method.md, section 6).

  python main.py --config=configs/lsun_church128_teacher.py --workdir=gs://BUCKET/church

Data: TFDS lsun/church_outdoor (`tfds build lsun/church_outdoor`), central
square crop and antialiased resize to 128x128.
Hardware in the paper: 64 TPUv4 chips.
Cost: 390 GFLOP per example per train step (XLA cost analysis; 139,578,502
parameters), so 400k steps at batch 2048 are 3.2e20 FLOP: about 13 hours at
40% of the bf16 peak of 64 TPUv4 chips (an estimate from the FLOP count).
The paper does not give the teacher's number of steps; 400k is our default.
Compute dtype: as in configs/cifar10_teacher.py (bfloat16 on TPUs and on
NVIDIA GPUs from the A100 on, float32 on a CPU; checkpoints stay float32).
"""

from configs import base


def get_config(scene='church128'):
  config = base.get_config()
  config.dataset.name = f'lsun_{scene}'
  config.dataset.shuffle_buffer = 10_000

  config.model.ch = 64
  config.model.emb_ch = 768
  config.model.ch_mult = (1, 2, 4, 6, 8)
  config.model.attn_resolutions = (8, 16, 32)
  config.model.num_heads = None
  config.model.head_dim = 64
  config.model.dropout = 0.1
  config.model.mean_type = 'both'

  config.train.batch_size = 2048
  config.train.num_steps = 400_000
  config.train.learning_rate = 3e-4
  config.train.weight_decay = 0.0
  config.train.grid_sample_steps = 1024

  config.distill.batch_size = 2048
  return config
