"""Distills an LSUN bedroom 128x128 teacher from 1024 steps to 1.

  python main.py --config=configs/lsun_bedroom128_distill.py --workdir=gs://BUCKET/bedroom \
      --config.distill.teacher_checkpoint=PATH

Same schedule and cost as configs/lsun_church128_distill.py (same network).
Hardware in the paper: 64 TPUv4 chips.
Compute dtype: as in configs/lsun_church128_teacher.py (bfloat16 on TPUs and GPUs).
"""

from configs import lsun_church128_distill


def get_config():
  return lsun_church128_distill.get_config(scene='bedroom128')
