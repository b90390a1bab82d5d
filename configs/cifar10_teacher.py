"""CIFAR-10 teacher with the paper's hyper-parameters (docs/method.md, section 6).

  python main.py --config=configs/cifar10_teacher.py --workdir=gs://BUCKET/cifar10

Data: TFDS cifar10, prepared beforehand (`tfds build cifar10`), found through
--config.dataset.data_dir or TFDS_DATA_DIR.
Hardware in the paper: 8 TPUv4 chips.
Cost: the train step is 102 GFLOP per example (XLA cost analysis of this
U-Net, 60,004,099 parameters), so 800k steps at batch 128 are 1.0e19 FLOP:
about 3.3 hours at 40% of the bf16 peak of 8 TPUv4 chips (an estimate from
the FLOP count, not a measurement). The paper does not give the teacher's
number of steps; 800k is this project's default.
Compute dtype: on TPUs and on NVIDIA GPUs from the A100 on, pass
--config.model.dtype=bfloat16: the activations are then bf16, which the
matrix units of both multiply at their full rate (on GPUs float32 runs as
TF32, at half the bf16 rate; on TPUs float32 convolutions already take bf16
passes, and bf16 halves the activations' memory), while the parameters,
the optimizer state, the EMA, the loss and the diffusion math stay float32,
so checkpoints are float32 whatever the dtype. On a CPU keep float32.
"""

from configs import base


def get_config():
  # configs/base.py holds the paper's CIFAR-10 teacher (docs/method.md,
  # section 6); this adds the grid steps and the distillation settings.
  config = base.get_config()
  config.train.grid_sample_steps = 1024
  config.distill.start_num_steps = 8192
  config.distill.learning_rate = 5e-5
  return config
