"""Distills a digits teacher from 16 sampling steps down to 1.

  python main.py --config=configs/digits_distill.py --workdir=/tmp/digits
  # or a teacher elsewhere:
  python main.py --config=configs/digits_distill.py --workdir=DIR \
      --config.distill.teacher_checkpoint=/tmp/digits

Without distill.teacher_checkpoint the teacher is the one in the workdir
(configs/digits_teacher.py). Four rounds of 200 updates at batch 64, the
last of 600, on CPU.
"""

from configs import digits_teacher


def get_config():
  config = digits_teacher.get_config()
  config.stages = ('distill',)
  return config
