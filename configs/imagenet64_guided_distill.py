"""Guided distillation of an ImageNet 64x64 teacher, 1024 steps to 1.

  python main.py --config=configs/imagenet64_guided_distill.py \
      --workdir=gs://BUCKET/in64_guided_distill \
      --config.distill.teacher_checkpoint=gs://BUCKET/in64_guided

Meng et al. ("On Distillation of Guided Diffusion Models", CVPR 2023), in
pixel space, from the teacher of configs/imagenet64_guided_teacher.py. The
values are those of the authors' code, google-research
`ddpm_w_distillation`, configs `i64_condw_stage1_distill.py` (stage 1) and
`i64_condw_stage2_distill.py` (stage 2), unless said otherwise:

- Stage 1 ('guide'): one student, initialised from the teacher, that takes
  w through an embedding added to the time embedding and learns the guided
  teacher's x_hat_w = (1 + w) x_hat(z, c) - w x_hat(z, null) at t ~ U[0, 1]
  (`train_num_steps=0`), with the teacher's 'v' output and 'snr' weighting
  (`mean_type='v'`, `mean_loss_weight_type='snr'`, inherited).
  - guidance.batch_size = 256: `train_batch_size = 256`.
  - guidance.learning_rate = 3e-4, guidance.learning_rate_schedule =
    'constant': `learning_rate=3e-4` with no warm-up and no anneal.
  - guidance.ema_decay = 0.9999: `ema_decay=0.9999`.
  - guidance.w_warmup_steps = 10k: `w_warmup_steps=10000`, "to warm up w
    embedding". The trainer that reads it is not published; the U-Net
    there multiplies the w-embedding by a factor (`w_warmup`), which this
    project raises linearly from 0 to 1 over those steps.
  - w ~ U[0, 4] (guidance.w_min, w_max, inherited from configs/base.py):
    `train_w_schedule` uniform over [0, 4].
  - Dropout 0 (`dropout=0.`): this project's students never use dropout.
  - guidance.num_steps = 50k: not given there (the published config says
    1,000,000 updates per iteration, and its stage-2 teacher is step 20,000
    of a run that continued another); this project's choice, as one round.
  - The w embedding: there a sinusoidal embedding of w through two dense
    layers initialised as usual; here the same with the last layer at zero,
    so that the student starts as the teacher's conditional model
    (docs/method.md, section 7).
- Stage 2 ('distill'): Salimans & Ho's progressive distillation (Algorithm
  2) of that student, teacher and student at the same w ~ U[0, 4].
  - distill.batch_size = 256: `train_batch = 256`.
  - distill.loss_weighting = 'snr_trunc': `mean_loss_weight_type=
    'snr_trunc'` ("'snr' performs worse").
  - distill.learning_rate = 1e-4, decayed linearly to 0 over each round
    (inherited): `lr = 1e-4`, `learning_rate_anneal_type='linear'` over
    `distill_steps_per_iter = 50000`; no EMA (`ema_decay=0`).
  - 1024 steps down to 1 (inherited): `start_num_steps = 1024`,
    `end_num_steps = 1`.
  - 50k updates per round (inherited): `distill_steps_per_iter = 50000`.
    This project doubles the rounds ending at 2 and 1 steps, as Salimans &
    Ho did (distill.last_rounds_multiplier = 2); the authors' trainer that
    would say whether they did is not published.

Hardware: as configs/imagenet64_distill.py, whose cost per update applies,
at an eighth of its batch.
"""

from configs import imagenet64_guided_teacher


def get_config():
  config = imagenet64_guided_teacher.get_config()
  config.stages = ('guide', 'distill')
  config.guidance.batch_size = 256
  config.guidance.learning_rate = 3e-4
  config.guidance.learning_rate_schedule = 'constant'
  config.guidance.ema_decay = 0.9999
  config.guidance.w_warmup_steps = 10_000
  config.distill.batch_size = 256
  config.distill.loss_weighting = 'snr_trunc'
  return config
