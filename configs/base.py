"""Defaults shared by every config; each config file overrides a few fields.

Field names are the project's contract (see README): tools and sweeps set
them as ``--config.section.field=value``.
"""

import ml_collections


def _dataset():
  dataset = ml_collections.ConfigDict()
  dataset.name = 'cifar10'
  dataset.data_dir = ml_collections.config_dict.placeholder(str)
  dataset.class_conditional = False
  dataset.random_flip = True
  dataset.shuffle_buffer = 50_000
  dataset.prefetch = 2
  # dataset.name='image_folder' only: a folder of .png/.jpg images, one
  # sub-folder per class or none (unconditional), centre-cropped and resized
  # to image_size x image_size. Its channels (1 or 3) and its number of
  # classes are read from the images; set them only to insist on them.
  dataset.path = ml_collections.config_dict.placeholder(str)
  dataset.image_size = ml_collections.config_dict.placeholder(int)
  dataset.channels = ml_collections.config_dict.placeholder(int)
  dataset.num_classes = ml_collections.config_dict.placeholder(int)
  return dataset


def _model():
  model = ml_collections.ConfigDict()
  model.ch = 256
  model.emb_ch = 1024
  model.ch_mult = (1, 1, 1)
  model.num_res_blocks = 3
  model.attn_resolutions = (8, 16)
  model.num_heads = 1
  model.head_dim = ml_collections.config_dict.placeholder(int)
  model.dropout = 0.2
  model.resblock_resample = True
  model.mean_type = 'x'
  model.loss_weighting = 'snr_trunc'
  # Activations/compute dtype of the U-Net ('float32' or 'bfloat16').
  model.dtype = 'float32'
  # Whether the U-Net takes the guidance strength w: set by the guided
  # stages ('guide' and the rounds after it), not by hand.
  model.guidance_embedding = False
  return model


def _schedule():
  schedule = ml_collections.ConfigDict()
  schedule.name = 'cosine'
  schedule.logsnr_min = -20.
  schedule.logsnr_max = 20.
  return schedule


def _train():
  train = ml_collections.ConfigDict()
  train.batch_size = 128
  train.num_steps = 800_000
  train.learning_rate = 2e-4
  train.warmup_steps = 1000
  # 0: the learning rate stays constant after the warm-up (the paper's
  # teachers). N: it follows a cosine from the end of the warm-up to 0 at
  # step N, so that a run of N steps ends on a settled model.
  train.decay_steps = 0
  train.weight_decay = 1e-3
  train.ema_decay = 0.9999
  train.grad_clip = 1.0
  # Training steps per compiled call (a lax.scan over that many batches), for
  # the teacher and the rounds; log, checkpoint and sample intervals and the
  # numbers of steps must be multiples of it.
  train.steps_per_dispatch = 1
  # Skip updates whose loss or gradient is not finite (counted in metrics).
  train.skip_nonfinite = True
  # Stop with an error after this many skipped updates in a row (0: never).
  train.max_nonfinite_in_a_row = 100
  train.log_every_steps = 100
  train.checkpoint_every_steps = 5000
  train.sample_every_steps = 20_000
  # Number of images in the periodic sample grid and DDIM steps used for it.
  train.num_grid_samples = 64
  train.grid_sample_steps = 128
  return train


def _distill():
  distill = ml_collections.ConfigDict()
  distill.teacher_checkpoint = ml_collections.config_dict.placeholder(str)
  distill.start_num_steps = 1024
  distill.end_num_steps = 1
  distill.steps_per_round = 50_000
  distill.last_rounds_multiplier = 2
  # Rounds whose students sample in at most this many steps run
  # last_rounds_multiplier times longer (paper: the rounds ending at 2 and 1).
  distill.long_rounds_max_steps = 2
  distill.learning_rate = 1e-4
  distill.batch_size = 128
  distill.grad_clip = 1.0
  # The rounds' loss weighting; unset: model.loss_weighting (the teacher's).
  distill.loss_weighting = ml_collections.config_dict.placeholder(str)
  return distill


def _guidance():
  """Classifier-free guidance, distilled (docs/method.md, section 7). With
  label_dropout > 0 the teacher learns a null class too, the 'guide' stage
  trains a student that takes w, and the rounds distill that student."""
  guidance = ml_collections.ConfigDict()
  # Probability that a training label is replaced by the null class.
  guidance.label_dropout = 0.0
  # The range of w the student learns, drawn uniformly per example.
  guidance.w_min = 0.0
  guidance.w_max = 4.0
  # Stage 1 ('guide'): Adam; its learning rate decays linearly to 0 over
  # num_steps ('linear', as a round's) or stays constant ('constant').
  guidance.num_steps = 50_000
  guidance.learning_rate = 1e-4
  guidance.learning_rate_schedule = 'linear'
  guidance.batch_size = 128
  # EMA decay of stage 1's parameters, whose EMA the rounds distill (0: none).
  guidance.ema_decay = 0.0
  # The student's w-embedding is scaled by min(step / w_warmup_steps, 1) in
  # stage 1 (0: no warm-up; the embedding's last layer starts at zero).
  guidance.w_warmup_steps = 0
  return guidance


def _consistency():
  """Multistep consistency distillation (docs/method.md, section 8): one
  phase per entry of `phases`, each a student for T sampling steps trained
  from the previous phase's student (the first from the teacher). A phase's
  teacher runs on a grid of N steps: teacher_num_steps for the first phase,
  the previous phase's T after it. CD: phases (1,); multistep CD: (T,);
  TRACT: decreasing counts ending at 1, e.g. (8, 1)."""
  consistency = ml_collections.ConfigDict()
  consistency.phases = (1,)
  consistency.teacher_num_steps = 64
  # Updates per phase, each with a fresh Adam whose learning rate decays
  # linearly to 0 over the phase (as a progressive round's).
  consistency.num_steps = 50_000
  consistency.learning_rate = 1e-4
  consistency.batch_size = 128
  # The target network's rate: after each update it moves to r * itself +
  # (1 - r) * the student. 0: a stop-gradient copy of the student; 1: frozen.
  consistency.target_decay = 0.0
  # The loss weighting; unset: model.loss_weighting (the teacher's).
  consistency.loss_weighting = ml_collections.config_dict.placeholder(str)
  return consistency


def _eval():
  ev = ml_collections.ConfigDict()
  ev.num_samples = 50_000
  # Samples drawn per host per call, split over its devices.
  ev.batch_size = 512
  # Reference statistics are computed over this many training images.
  ev.num_reference = 50_000
  # The teacher is swept over these step counts with each teacher sampler;
  # each student is evaluated at its own step count with each student sampler.
  ev.sample_steps = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
  ev.teacher_samplers = ('ddim', 'ancestral')
  ev.student_samplers = ('ddim', 'stochastic')
  # Log-space interpolation of the ancestral variance: 0 = lower bound
  # (true posterior), 1 = upper bound.
  ev.ancestral_noise_interp = 0.5
  ev.num_seeds = 1
  # Guidance strengths w to sample guided models at (0: unguided).
  ev.guidance = (0.0,)
  # Converted FID Inception weights (scripts/convert_inception_weights.py);
  # empty: $DIFFUSION_DISTILL_INCEPTION_WEIGHTS or the default cache path.
  ev.inception_weights = ''
  return ev


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Which stages main.py runs, in this order: 'teacher', 'guide' (guided
  # runs), 'distill' (progressive rounds) or 'consistency', 'eval'.
  config.stages = ('teacher',)
  config.dataset = _dataset()
  config.model = _model()
  config.schedule = _schedule()
  config.train = _train()
  config.distill = _distill()
  config.guidance = _guidance()
  config.consistency = _consistency()
  config.eval = _eval()
  return config
