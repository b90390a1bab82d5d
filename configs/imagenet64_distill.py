"""Distills a class-conditional ImageNet 64x64 teacher from 1024 steps to 1.

  python main.py --config=configs/imagenet64_distill.py --workdir=gs://BUCKET/in64 \
      --config.distill.teacher_checkpoint=PATH

The `both` parameterization, 10 rounds of 50k updates at batch 2048, Adam at
1e-4 decayed linearly to 0 per round; the rounds ending at 2 and 1 steps run
100k updates (docs/method.md, sections 4 and 6).
Hardware in the paper: 64 TPUv4 chips.
Cost: 1,054 GFLOP per example per distillation step (XLA cost analysis), so
600k updates at batch 2048 are 1.3e21 FLOP: about 51 hours at 40% of the
bf16 peak of 64 TPUv4 chips (an estimate from the FLOP count).
Compute dtype: as in configs/imagenet64_teacher.py (bfloat16 on TPUs and GPUs).
"""

from configs import imagenet64_teacher


def get_config():
  config = imagenet64_teacher.get_config()
  config.stages = ('distill',)
  return config
