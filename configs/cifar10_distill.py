"""Distills a CIFAR-10 teacher from 8192 sampling steps down to 1.

  python main.py --config=configs/cifar10_distill.py --workdir=gs://BUCKET/cifar10 \
      --config.distill.teacher_checkpoint=PATH

PATH is a workdir of configs/cifar10_teacher.py, or a checkpoint released
with the paper (e.g. a local copy of gs://gresearch/diffusion-distillation/
cifar_original). Without it, the teacher in --workdir is used.
13 rounds (8192 -> 4096 -> ... -> 1) of 50k updates at batch 128, Adam at
5e-5 decayed linearly to 0 in each round; the rounds ending at 2 and 1
steps run 100k updates (docs/method.md, sections 4 and 6).
Hardware in the paper: 8 TPUv4 chips.
Cost: 170 GFLOP per example per distillation step (XLA cost analysis), so
750k updates at batch 128 are 1.6e19 FLOP: about 5 hours at 40% of the bf16
peak of 8 TPUv4 chips (an estimate from the FLOP count).
Compute dtype: as in configs/cifar10_teacher.py (bfloat16 on TPUs and GPUs).
"""

from configs import cifar10_teacher


def get_config():
  config = cifar10_teacher.get_config()
  config.stages = ('distill',)
  return config
