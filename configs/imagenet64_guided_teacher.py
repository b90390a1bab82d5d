"""A guidable class-conditional ImageNet 64x64 teacher (docs/method.md, section 7).

  python main.py --config=configs/imagenet64_guided_teacher.py \
      --workdir=gs://BUCKET/in64_guided

The teacher of guided distillation (Meng et al., "On Distillation of Guided
Diffusion Models", CVPR 2023): a class-conditional ImageNet 64 U-Net trained
with label dropout, so that it also predicts without a label
(classifier-free guidance, Ho & Salimans). The values are those of the
authors' code, google-research `ddpm_w_distillation`, config
`i64_retrain_unet3.py` (the teacher they distilled):

- guidance.label_dropout = 0.1: `uncond_prob=0.1` (Ho & Salimans found 0.1
  and 0.2 about equally good on ImageNet 64).
- model.mean_type = 'v': `mean_type='v'`.
- model.loss_weighting = 'snr': `mean_loss_weight_type='snr'` (the x-space
  error weighted by the SNR: the eps-space error).
- train.warmup_steps = 10k: `learning_rate_warmup_steps=10000` ("used to be
  1k, but 10k helps with stability").
- train.batch_size 2048, learning_rate 3e-4, weight_decay 0, ema_decay
  0.9999, grad_clip 1: the same fields there.
- The network: ch 192, emb_ch 768, ch_mult (1, 2, 3, 4), 3 res blocks,
  attention at 8, 16 and 32 with 64-channel heads, dropout 0.1, resampling
  res blocks: the same fields there (and configs/imagenet64_teacher.py's).
- train.num_steps = 220k: the authors' stage 1 starts from the checkpoint at
  step 220,000 of that run (`teacher_ckpt_path` in
  `i64_condw_stage1_distill.py`).
- Continuous time and the cosine logSNR schedule over [-20, 20]:
  `train_num_steps=0` and the same schedule there (this project's only
  schedule).
- eval.guidance: w = 0 (unguided) up to 4, the end of Meng et al.'s range;
  the points in between are this project's choice.

Data, hardware and compute dtype: as configs/imagenet64_teacher.py
(bfloat16 on TPUs and GPUs), whose network this is with 3 output channels
instead of 6; `main.py --check` prints its FLOP per step. It runs 220k steps
where that config runs 400k. Distill it with
configs/imagenet64_guided_distill.py.
"""

from configs import imagenet64_teacher


def get_config():
  config = imagenet64_teacher.get_config()
  config.guidance.label_dropout = 0.1
  config.model.mean_type = 'v'
  config.model.loss_weighting = 'snr'
  config.train.num_steps = 220_000
  config.train.warmup_steps = 10_000
  config.eval.guidance = (0.0, 0.3, 1.0, 2.0, 4.0)
  return config
