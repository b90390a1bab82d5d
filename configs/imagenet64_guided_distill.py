"""Guided distillation of an ImageNet 64x64 teacher, 1024 steps to 1.

  python main.py --config=configs/imagenet64_guided_distill.py \
      --workdir=gs://BUCKET/in64_guided_distill \
      --config.distill.teacher_checkpoint=gs://BUCKET/in64_guided

Meng et al. ("On Distillation of Guided Diffusion Models", CVPR 2023), in
pixel space, from the teacher of configs/imagenet64_guided_teacher.py:

- Stage 1 ('guide'): one student, initialised from the teacher, that takes
  w through a Fourier embedding added to the time embedding and learns the
  guided teacher's x_hat_w = (1 + w) x_hat(z, c) - w x_hat(z, null) at
  t ~ U[0, 1], with the teacher's weighting.
- w ~ U[0, 4] (guidance.w_min, w_max, inherited from configs/base.py): Meng
  et al.'s range for ImageNet 64.
- Stage 2: Salimans & Ho's progressive distillation (Algorithm 2) of that
  student, teacher and student at the same w, with their ImageNet 64 rounds: 1024 steps
  down to 1, 50k updates per round (100k for the rounds ending at 2 and 1),
  batch 2048, Adam at 1e-4 decayed linearly to 0 per round.
- Not given in the papers, this project's choices: stage 1's 50k updates
  (as one distillation round), its batch of 2048 (the rounds'), its
  learning rate of 1e-4 (the rounds').

Hardware: like configs/imagenet64_distill.py, whose cost per round applies;
stage 1 costs about one round. Compute dtype: bfloat16 on TPUs and GPUs.
"""

from configs import imagenet64_guided_teacher


def get_config():
  config = imagenet64_guided_teacher.get_config()
  config.stages = ('guide', 'distill')
  config.guidance.batch_size = 2048
  return config
