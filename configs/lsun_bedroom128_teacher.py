"""LSUN bedroom 128x128 teacher (docs/method.md, section 6).

  python main.py --config=configs/lsun_bedroom128_teacher.py --workdir=gs://BUCKET/bedroom

Data: TFDS lsun/bedroom (`tfds build lsun/bedroom`), central square crop and
antialiased resize to 128x128.
Hardware in the paper: 64 TPUv4 chips.
Cost: the same network as configs/lsun_church128_teacher.py: 390 GFLOP per
example per train step, 3.2e20 FLOP for 400k steps at batch 2048, about 13
hours at 40% of the bf16 peak of 64 TPUv4 chips (an estimate).
Compute dtype: as in configs/lsun_church128_teacher.py (bfloat16 on TPUs and GPUs).
"""

from configs import lsun_church128_teacher


def get_config():
  return lsun_church128_teacher.get_config(scene='bedroom128')
