"""Defaults shared by every config; each config file overrides a few fields.

Field names are the project's contract (see README): tools and sweeps set
them as ``--config.section.field=value``.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Which stages main.py runs, in this order: 'teacher', 'guide' (guided
  # runs), 'distill', 'eval'.
  config.stages = ('teacher',)

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'cifar10'
  config.dataset.data_dir = ml_collections.config_dict.placeholder(str)
  config.dataset.class_conditional = False
  config.dataset.random_flip = True
  config.dataset.shuffle_buffer = 50_000
  config.dataset.prefetch = 2

  config.model = ml_collections.ConfigDict()
  config.model.ch = 256
  config.model.emb_ch = 1024
  config.model.ch_mult = (1, 1, 1)
  config.model.num_res_blocks = 3
  config.model.attn_resolutions = (8, 16)
  config.model.num_heads = 1
  config.model.head_dim = ml_collections.config_dict.placeholder(int)
  config.model.dropout = 0.2
  config.model.resblock_resample = True
  config.model.mean_type = 'x'
  config.model.loss_weighting = 'snr_trunc'
  # Activations/compute dtype of the U-Net ('float32' or 'bfloat16').
  config.model.dtype = 'float32'
  # Whether the U-Net takes the guidance strength w: set by the guided
  # stages ('guide' and the rounds after it), not by hand.
  config.model.guidance_embedding = False

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = 'cosine'
  config.schedule.logsnr_min = -20.
  config.schedule.logsnr_max = 20.

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128
  config.train.num_steps = 800_000
  config.train.learning_rate = 2e-4
  config.train.warmup_steps = 1000
  config.train.weight_decay = 1e-3
  config.train.ema_decay = 0.9999
  config.train.grad_clip = 1.0
  # Training steps per compiled call (a lax.scan over that many batches), for
  # the teacher and the rounds; log, checkpoint and sample intervals and the
  # numbers of steps must be multiples of it.
  config.train.steps_per_dispatch = 1
  # Skip updates whose loss or gradient is not finite (counted in metrics).
  config.train.skip_nonfinite = True
  # Stop with an error after this many skipped updates in a row (0: never).
  config.train.max_nonfinite_in_a_row = 100
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 5000
  config.train.sample_every_steps = 20_000
  # Number of images in the periodic sample grid and DDIM steps used for it.
  config.train.num_grid_samples = 64
  config.train.grid_sample_steps = 128

  config.distill = ml_collections.ConfigDict()
  config.distill.teacher_checkpoint = ml_collections.config_dict.placeholder(str)
  config.distill.start_num_steps = 1024
  config.distill.end_num_steps = 1
  config.distill.steps_per_round = 50_000
  config.distill.last_rounds_multiplier = 2
  # Rounds whose students sample in at most this many steps run
  # last_rounds_multiplier times longer (paper: the rounds ending at 2 and 1).
  config.distill.long_rounds_max_steps = 2
  config.distill.learning_rate = 1e-4
  config.distill.batch_size = 128
  config.distill.grad_clip = 1.0

  # Classifier-free guidance, distilled (docs/method.md, section 7). With
  # label_dropout > 0 the teacher learns a null class too, the 'guide' stage
  # trains a student that takes w, and the rounds distill that student.
  config.guidance = ml_collections.ConfigDict()
  # Probability that a training label is replaced by the null class.
  config.guidance.label_dropout = 0.0
  # The range of w the student learns, drawn uniformly per example.
  config.guidance.w_min = 0.0
  config.guidance.w_max = 4.0
  # Stage 1 ('guide'): Adam, learning rate decayed linearly to 0.
  config.guidance.num_steps = 50_000
  config.guidance.learning_rate = 1e-4
  config.guidance.batch_size = 128

  config.eval = ml_collections.ConfigDict()
  config.eval.num_samples = 50_000
  # Samples drawn per host per call, split over its devices.
  config.eval.batch_size = 512
  # Reference statistics are computed over this many training images.
  config.eval.num_reference = 50_000
  # The teacher is swept over these step counts with each teacher sampler;
  # each student is evaluated at its own step count with each student sampler.
  config.eval.sample_steps = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
  config.eval.teacher_samplers = ('ddim', 'ancestral')
  config.eval.student_samplers = ('ddim', 'stochastic')
  # Log-space interpolation of the ancestral variance: 0 = lower bound
  # (true posterior), 1 = upper bound.
  config.eval.ancestral_noise_interp = 0.5
  config.eval.num_seeds = 1
  # Guidance strengths w to sample guided models at (0: unguided).
  config.eval.guidance = (0.0,)
  # Converted FID Inception weights (scripts/convert_inception_weights.py);
  # empty: $DIFFUSION_DISTILL_INCEPTION_WEIGHTS or the default cache path.
  config.eval.inception_weights = ''
  return config
