r"""Speed benchmarks: every figure is a ratio of two times taken in one run.

  python -m benchmarks.speed --machine=cpu2core           # every section
  python -m benchmarks.speed --what=matmul,step --cifar_batch=8
  python -m benchmarks.speed --quick --out=/tmp/speed_quick.json
      # tiny models, every section: minutes on 2 cores (--out: keep the
      # smoke test out of benchmarks/results/)
  python -m benchmarks.speed --machine=h200 --keep_going \
      --matmul_size=8192 --cifar_batch=128                  # on a GPU: every section

Times compared with each other are taken in turn, repeat by repeat
(timing.time_interleaved), and a ratio is the median of the repeat-by-repeat
ratios (timing.ratio_summary). Each section's entry records the date and
the load average before and after it; the file's meta names the CPU model
or the accelerator, and the package versions.

Sections (`--what`, comma-separated; default all, in this order):

  matmul             the reference [n, n] matmul (--matmul_size) of each
                     dtype: FLOP/s, context.
  step               the CIFAR-10 U-Net's teacher and first-round
                     distillation steps at --cifar_batch, one device, each
                     timed in turn with the matmul of its dtype: step FLOP/s
                     / matmul FLOP/s. Goal >= 0.5. --dtypes: float32 on CPU,
                     float32 and bfloat16 (config.model.dtype) elsewhere.
  dispatch           the digits teacher step at train.steps_per_dispatch
                     k = --dispatch_k (1, 4, 16) with the matmul: images/s,
                     ratio to the matmul, images/s over k = 1.
  sampling           N-step DDIM Sampler.sample / N network evaluations,
                     N = --sample_steps. Goal <= 1.05.
  pipeline           input pipeline images/s / digits teacher step images/s.
                     Goal >= 10.
  distill_cost       digits: the rounds' estimated time / the teacher's,
                     down to 4 and to 1 step, without and with compile.
                     Goal <= 1.
  memory             peak host RSS of a fresh process running the CIFAR-10
                     teacher step at --cifar_batch (context).
  pmap_vs_shard_map  the digits teacher step (and x + 1) under jax.pmap and
                     under jax.jit(jax.shard_map) over --shard_devices
                     devices (forced host devices on a CPU): per-call cost.
  profile            the digits and CIFAR-10 teacher steps under
                     jax.profiler.trace: XLA:CPU's op time per step by kind
                     (convolution, attention and dense matmuls, reductions,
                     layout, collectives, element-wise). CPU only.

Modules: timing (how times are taken), machine (CPU/accelerator, load,
versions), options (sizes, configs, what sections share), build (the
stages' compiled steps), child (fresh processes), one module per section
(matmul, training_step, dispatch, sampling, pipeline, distill_cost, memory,
sharding, profile), report (JSON), table (printed summary), main (run and flags).
"""

from benchmarks.speed.timing import median_ratio
from benchmarks.speed.timing import ratio_summary
from benchmarks.speed.timing import repeat_ratios
from benchmarks.speed.timing import time_calls
from benchmarks.speed.timing import time_interleaved
from benchmarks.speed.timing import Timing
