"""Teacher on the bundled 8x8 digits: offline, on a laptop CPU.

  python main.py --config=configs/digits_teacher.py --workdir=/tmp/digits

Hardware: any CPU (WORKDIR/timing.json records the time; BENCHMARKS.md,
"The quickstart", has it measured). A 1.07M-parameter U-Net (ch 32,
emb_ch 128, ch_mult 1,2, 2 res blocks, no attention), v-prediction with
truncated-SNR weighting, 3,200 steps at batch 64 whose learning rate decays
to 0 at the last step.
"""

from configs import base


def get_config():
  config = base.get_config()

  config.dataset.name = 'digits'
  config.dataset.random_flip = False  # A mirrored 3 is not a 3.

  config.model.ch = 32
  config.model.emb_ch = 128
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = ()
  config.model.dropout = 0.0
  # v, not x: at 3,500 steps the v teacher's FD-digits (DDIM / ancestral,
  # 32 steps) was 10.6 / 10.1, an x teacher's 13.3 / 11.5 at 4,000 steps
  # and 14.4 / 10.0 at the former 6,000; at 3,200 steps the v teacher's is
  # 10.1 / 10.3 (1,000 samples, seed 0: benchmarks/results/
  # quickstart_teachers_digits.json and quickstart_digits.json;
  # BENCHMARKS.md, "The quickstart").
  config.model.mean_type = 'v'

  config.train.batch_size = 64
  config.train.num_steps = 3200
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 200
  # A cosine to 0 at the last step, and a short EMA over the settled end.
  config.train.decay_steps = 3200
  config.train.weight_decay = 0.0
  config.train.ema_decay = 0.995
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = 1000
  config.train.sample_every_steps = 2000
  config.train.num_grid_samples = 100
  config.train.grid_sample_steps = 64

  # Four rounds from 16 steps to 1, of 200 updates, the last of 600 (the
  # multiplier 3, for the 1-step round only). From the 3,500-step teacher,
  # rounds of 300 gave a 1-step student of FD-digits 25.6 with a last round
  # of 300 and 21.5 with one of 600; from this teacher, these rounds give
  # 20.7 (1,000 samples, seed 0: benchmarks/results/
  # quickstart_candidate_v_digits.json, quickstart_candidate_v3500_digits.json
  # and quickstart_digits.json; BENCHMARKS.md, "The quickstart").
  config.distill.start_num_steps = 16
  config.distill.steps_per_round = 200
  config.distill.last_rounds_multiplier = 3
  config.distill.long_rounds_max_steps = 1
  config.distill.learning_rate = 2e-4
  config.distill.batch_size = 64

  config.eval.num_samples = 1000
  config.eval.num_reference = 1797
  config.eval.sample_steps = (1, 2, 4, 8, 16, 32)
  return config
