"""What a run measures (sizes, configs) and what its sections share."""

import dataclasses
import importlib
from typing import Any, Optional

import jax

from diffusion_distill import dataset_info

from benchmarks.speed import build
from benchmarks.speed import matmul as matmul_lib
from benchmarks.speed.timing import Timing


def load_config(module: str):
  return importlib.import_module(f'configs.{module}').get_config()


def shrink(config, *, attention=False):
  """A tiny model of the same structure (for --quick and the tests)."""
  info = dataset_info.of(config)
  config.model.ch = 32
  config.model.emb_ch = 32
  config.model.ch_mult = (1,)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (info.image_size,) if attention else ()
  config.train.batch_size = 8
  config.distill.batch_size = 8
  config.distill.start_num_steps = 8
  config.distill.steps_per_round = 4
  config.distill.last_rounds_multiplier = 1
  return config


@dataclasses.dataclass
class Options:
  """Sizes of a run. dtypes None: float32 on CPU, float32 and bfloat16 on
  an accelerator (the step section's rows, each against its own matmul)."""
  timing: Timing = dataclasses.field(default_factory=Timing)
  matmul_size: int = 2048
  cifar_batch: int = 8
  dtypes: Optional[tuple] = None
  sample_batch: int = 64
  sample_steps: tuple = (1, 4, 16, 64)
  pipeline_warmup_batches: int = 100
  dispatch_k: tuple = (1, 4, 16)
  shard_devices: int = 2
  digits: Any = None  # ConfigDict; default configs/digits.py
  cifar_teacher: Any = None  # default configs/cifar10_teacher.py
  cifar_distill: Any = None  # default configs/cifar10_distill.py
  quick: bool = False

  def __post_init__(self):
    for field, module, attention in (
        ('digits', 'digits', False),
        ('cifar_teacher', 'cifar10_teacher', True),
        ('cifar_distill', 'cifar10_distill', True)):
      if getattr(self, field) is None:
        config = load_config(module)
        setattr(self, field, shrink(config, attention=attention)
                if self.quick else config)


def quick_options(data_dir=None, **kwargs) -> Options:
  """Tiny sizes: minutes for every section instead of half an hour (for
  --quick and the tests)."""
  kwargs.setdefault('timing', Timing(repeats=2, min_repeat_s=0.05, warmup=1))
  kwargs.setdefault('matmul_size', 256)
  kwargs.setdefault('cifar_batch', 2)
  kwargs.setdefault('sample_batch', 8)
  kwargs.setdefault('sample_steps', (1, 4))
  kwargs.setdefault('pipeline_warmup_batches', 10)
  kwargs.setdefault('dispatch_k', (1, 2))
  opts = Options(quick=True, **kwargs)
  if data_dir:
    opts.digits.dataset.data_dir = data_dir
  return opts


def _key(config) -> str:
  return config.to_json_best_effort(sort_keys=True)


class Context:
  """One run: its options, and what several sections use, built once."""

  def __init__(self, opts: Options):
    self.opts = opts
    self.platform = jax.local_devices()[0].platform
    self._memo = {}

  @property
  def dtypes(self) -> tuple:
    if self.opts.dtypes:
      return tuple(self.opts.dtypes)
    return (('float32',) if self.platform == 'cpu'
            else ('float32', 'bfloat16'))

  def once(self, key, fn):
    if key not in self._memo:
      self._memo[key] = fn()
    return self._memo[key]

  def matmul(self, dtype='float32') -> matmul_lib.Matmul:
    return self.once(('matmul', dtype), lambda: matmul_lib.build(
        self.opts.matmul_size, dtype))

  def teacher_params(self, config):
    """Initial teacher parameters (host arrays) of `config`'s architecture:
    a distillation step's teacher and student start from them."""
    key = ('params', config.seed, _key(config.dataset),
           _key(build.variant(config, dtype='float32').model))
    return self.once(key, lambda: build.teacher_stage(config).init_params)

  def digits_step(self, k: int = 1) -> build.CompiledStep:
    """The digits teacher step at train.batch_size, k steps per dispatch."""
    def make():
      config = build.variant(self.opts.digits, steps_per_dispatch=k)
      stage = build.teacher_stage(config)
      return build.compile_stage(stage, config, config.train.batch_size,
                                 name=f'digits_teacher_k{k}')
    return self.once(('digits_step', k), make)
