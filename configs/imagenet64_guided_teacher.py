"""A guidable class-conditional ImageNet 64x64 teacher (docs/method.md, section 7).

  python main.py --config=configs/imagenet64_guided_teacher.py \
      --workdir=gs://BUCKET/in64_guided

The teacher of guided distillation (Meng et al., "On Distillation of Guided
Diffusion Models", CVPR 2023): the class-conditional ImageNet 64 network of
configs/imagenet64_teacher.py, trained with label dropout so that it also
predicts without a label (classifier-free guidance, Ho & Salimans).
Each value and its source:

- guidance.label_dropout = 0.1: Ho & Salimans' probability of training
  unconditionally; they found 0.1 and 0.2 about equally good on ImageNet 64.
- train.num_steps = 400k (inherited): the length of Ho & Salimans' ImageNet
  64 runs; Meng et al. do not restate their teacher's schedule.
- The network, schedule, x/eps ('both') output, truncated-SNR weighting and
  optimizer: those of configs/imagenet64_teacher.py (Salimans & Ho).
- eval.guidance: w = 0 (unguided) up to 4, the end of Meng et al.'s range;
  the points in between are this project's choice.

Data, cost and compute dtype: as configs/imagenet64_teacher.py (bfloat16 on
TPUs and GPUs). Distill it with configs/imagenet64_guided_distill.py.
"""

from configs import imagenet64_teacher


def get_config():
  config = imagenet64_teacher.get_config()
  config.guidance.label_dropout = 0.1
  config.eval.guidance = (0.0, 0.3, 1.0, 2.0, 4.0)
  return config
