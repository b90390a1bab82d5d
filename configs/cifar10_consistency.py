"""Consistency distillation (CD) of a CIFAR-10 teacher, with CD's values.

  python main.py --config=configs/cifar10_consistency.py \
      --workdir=gs://BUCKET/cifar10_cd --config.distill.teacher_checkpoint=PATH

PATH is a workdir of configs/cifar10_teacher.py trained with v output
(--config.model.mean_type=v): CD needs an output whose x_hat tends to z as
sigma -> 0, which the paper's x-output CIFAR-10 teacher does not have.
Values of Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023
(Table 3 and section 6.1; their CIFAR-10 code sets the same): one student
step, N = 18 teacher steps (they found 18 best with Heun's solver; the
teacher steps here are DDIM steps of this project's cosine schedule), the
target network a stop-gradient copy of the student (mu = 0, base's
consistency.target_decay), learning rate 4e-4, batch 512, 800k updates.
What differs from theirs: the distance is this project's weighted squared
error in x (truncated-SNR weighting, the teacher's), not LPIPS, whose
weights would have to be downloaded (their best CIFAR-10 FID, 3.55 at one
step and 2.93 at two, used LPIPS); the optimizer is Adam whose learning
rate decays linearly to 0, as a progressive round's, where theirs is RAdam
at a constant rate with an EMA of 0.9999 for the model they evaluate; the
student has no EMA of its own. The pseudo-Huber distance of Song &
Dhariwal (ICLR 2024) is not implemented.
Cost: each update evaluates the 60M-parameter U-Net three times (the
student with its gradient, one teacher step, one target step), as a
progressive round's update does (configs/cifar10_distill.py).
"""

from configs import cifar10_teacher


def get_config():
  config = cifar10_teacher.get_config()
  config.stages = ('consistency',)
  config.model.mean_type = 'v'
  config.consistency.teacher_num_steps = 18
  config.consistency.num_steps = 800_000
  config.consistency.learning_rate = 4e-4
  config.consistency.batch_size = 512
  return config
