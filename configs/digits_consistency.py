"""Consistency distillation of the digits quickstart's teacher: offline, CPU.

  python main.py --config=configs/digits.py --workdir=/tmp/digits
  python main.py --config=configs/digits_consistency.py --workdir=/tmp/digits_cd \
      --config.distill.teacher_checkpoint=/tmp/digits

CD (one student step) from the teacher's 64-step DDIM grid, with the target
network a stop-gradient copy of the student (CD's choice on CIFAR-10; base's
consistency.phases and target_decay), for as many updates at the same batch
as the quickstart's progressive rounds (3 x 200 + 600 = 1,200 at batch 64).
Multistep CD: --config.consistency.phases="(4,)"; TRACT:
--config.consistency.phases="(8, 1)" --config.consistency.num_steps=600
--config.consistency.target_decay=0.5 (benchmarks/methods.py runs them
side by side). Without distill.teacher_checkpoint the teacher is the one
in the workdir. docs/method.md, section 8, has the method.
"""

from configs import digits_teacher


def get_config():
  config = digits_teacher.get_config()
  config.stages = ('consistency', 'eval')
  config.consistency.num_steps = 1200
  config.consistency.learning_rate = 2e-4
  config.consistency.batch_size = 64
  return config
