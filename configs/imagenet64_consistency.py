"""Consistency distillation (CD) of an ImageNet 64 teacher, with CD's values.

  python main.py --config=configs/imagenet64_consistency.py \
      --workdir=gs://BUCKET/imagenet64_cd --config.distill.teacher_checkpoint=PATH

PATH is a workdir of configs/imagenet64_teacher.py (its 'both' output
satisfies the boundary condition x_hat -> z as sigma -> 0), or the
paper's released ImageNet 64 checkpoint. Values of Song, Dhariwal, Chen &
Sutskever, "Consistency Models", ICML 2023 (Table 3; their ImageNet 64
launch script sets the same): one student step, N = 40 teacher steps
(DDIM steps here, Heun's there), a target network that moves at rate
0.95 (mu), learning rate 8e-6, batch 2048, 600k updates. What differs from
theirs: the weighted squared error in x (truncated SNR) instead of LPIPS,
whose weights would have to be downloaded (their 6.20 FID at one step and
4.70 at two used LPIPS); Adam with a learning rate decaying linearly to 0
instead of RAdam at a constant rate; no EMA of the student (theirs
evaluated an EMA of 0.999943). The pseudo-Huber distance of Song &
Dhariwal (ICLR 2024) is not implemented.
Cost: three evaluations of the U-Net per example and update, as a
progressive round's (configs/imagenet64_distill.py).
"""

from configs import imagenet64_teacher


def get_config():
  config = imagenet64_teacher.get_config()
  config.stages = ('consistency',)
  config.consistency.teacher_num_steps = 40
  config.consistency.num_steps = 600_000
  config.consistency.learning_rate = 8e-6
  config.consistency.batch_size = 2048
  config.consistency.target_decay = 0.95
  return config
