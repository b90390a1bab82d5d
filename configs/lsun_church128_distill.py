"""Distills an LSUN church-outdoor 128x128 teacher from 1024 steps to 1.

  python main.py --config=configs/lsun_church128_distill.py --workdir=gs://BUCKET/church \
      --config.distill.teacher_checkpoint=PATH

10 rounds of 50k updates at batch 2048, Adam at 1e-4 decayed linearly to 0
per round; the rounds ending at 2 and 1 steps run 100k updates.
Hardware in the paper: 64 TPUv4 chips.
Cost: 650 GFLOP per example per distillation step (XLA cost analysis), so
600k updates at batch 2048 are 8.0e20 FLOP: about 32 hours at 40% of the
bf16 peak of 64 TPUv4 chips (an estimate from the FLOP count).
Compute dtype: as in configs/lsun_church128_teacher.py (bfloat16 on TPUs and GPUs).
"""

from configs import lsun_church128_teacher


def get_config(scene='church128'):
  config = lsun_church128_teacher.get_config(scene=scene)
  config.stages = ('distill',)
  return config
