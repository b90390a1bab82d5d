r"""Speed benchmarks: every figure is a ratio of two times measured in one run.

  python -m benchmarks.speed                        # every section, full size
  python -m benchmarks.speed --what=matmul,step --cifar_batch=8
  python -m benchmarks.speed --quick                # tiny sizes (seconds)
  python -m benchmarks.speed --what=matmul,step,sampling,distill_cost,memory \
      --matmul_size=8192 --cifar_batch=128 --machine=h100   # on a GPU

Sections (`--what`, comma-separated; default all of them):

  matmul         FLOP/s of a jitted f32 2048x2048 @ 2048x2048 matmul
                 (--matmul_size; use e.g. 8192 on a GPU): the reference
                 peak every FLOP/s of this run is divided by.
  step           images/s and FLOP/s of the teacher and the distillation
                 training steps (trainer.train_step, pmapped over ONE device,
                 with the loss and optimizer of train.teacher_stage and
                 distill.round_stage), for configs/digits.py and for the
                 paper's CIFAR-10 U-Net at --cifar_batch. FLOPs per step come
                 from XLA's cost analysis of the compiled step on CPU, of the
                 lowered (unoptimized) step elsewhere: XLA:GPU's compiled
                 analysis leaves out cuDNN/cuBLAS calls.
                 Goal: CIFAR-10 step FLOP/s >= 0.5 x matmul FLOP/s.
  sampling       time of an N-step DDIM `inference.Sampler.sample` divided
                 by N x the time of one jitted network evaluation on the same
                 batch, their repeats taken in turn. Goal: <= 1.05.
  pipeline       images/s of input_pipeline.create_train_iterator (digits)
                 divided by the images/s the digits teacher step consumes.
                 Goal: >= 10.
  distill_cost   digits: estimated wall time of the distillation rounds
                 (down to 4 steps, and down to 1) divided by the teacher's:
                 measured step times x the configs' step counts, without and
                 with each stage's measured compile time. Goal: <= 1.
  memory         peak host RSS of a fresh process that builds, compiles and
                 runs the CIFAR-10 teacher step at --cifar_batch (context; no
                 goal), with the bytes of parameters and optimizer state.

Writes benchmarks/results/speed_<machine>.json (or --out) and prints a table.
Times are medians over --repeats timed repeats after warm-up (the minimum is
kept too); a repeat runs the timed call enough times to last --min_repeat_s.
The JSON holds only numbers measured (or derived from measurements) in this
run, plus the load average before and after, to judge contention.
"""

import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
import flax.jax_utils
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np

from diffusion_distill import distill
from diffusion_distill import inference
from diffusion_distill import input_pipeline
from diffusion_distill import models
from diffusion_distill import train
from diffusion_distill import trainer
from diffusion_distill.train_state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ('matmul', 'step', 'sampling', 'pipeline', 'distill_cost', 'memory')
GOALS = {'step': 0.5, 'sampling': 1.05, 'pipeline': 10., 'distill_cost': 1.}
# Stages are built with this workdir; building one writes nothing there.
_UNUSED_WORKDIR = os.path.join(tempfile.gettempdir(), 'speed_benchmark_unused')
_MEMORY_MARK = 'SPEED_MEMORY_JSON '


@dataclasses.dataclass
class Timing:
  """How a time is measured: warm-up calls, then `repeats` timed repeats.

  Each repeat makes k back-to-back calls and blocks once at the end (as the
  training loop does); k is chosen from one calibration call so that a
  repeat lasts about `min_repeat_s`. The time of a call is repeat time / k.
  """
  repeats: int = 5
  min_repeat_s: float = 1.0
  warmup: int = 2
  profile_dir: Optional[str] = None


def time_calls(call: Callable[[], Any], timing: Timing) -> dict:
  """Seconds per `call()`: median and min over the timed repeats."""
  return time_interleaved({'call': call}, timing)['call']


def time_interleaved(calls: dict, timing: Timing) -> dict:
  """Seconds per call of each of `calls`, their timed repeats taken in turn.

  Repeat r of every call runs before repeat r + 1 of any, so a machine that
  slows down or speeds up during the measurement affects all calls alike
  and the ratio of their repeat-r times cancels it.
  """
  k = {}
  for name, call in calls.items():
    for _ in range(timing.warmup):
      jax.block_until_ready(call())
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    k[name] = max(1, math.ceil(timing.min_repeat_s /
                               max(time.perf_counter() - t0, 1e-9)))
  per_call = {name: [] for name in calls}
  for _ in range(max(1, timing.repeats)):
    for name, call in calls.items():
      t0 = time.perf_counter()
      out = None
      for _ in range(k[name]):
        out = call()
      jax.block_until_ready(out)
      per_call[name].append((time.perf_counter() - t0) / k[name])
  return {name: {'median_s': statistics.median(t), 'min_s': min(t),
                 'repeats_s': t, 'calls_per_repeat': k[name],
                 'repeats': len(t)}
          for name, t in per_call.items()}


@contextlib.contextmanager
def _maybe_trace(profile_dir, name):
  if not profile_dir:
    yield
    return
  with jax.profiler.trace(os.path.join(profile_dir, name)):
    yield


def cost_flops(cost) -> Optional[float]:
  """The 'flops' of a cost analysis (a dict, or a list of per-device dicts)."""
  if cost is None:
    return None
  if isinstance(cost, dict):
    cost = [cost]
  flops = [c.get('flops') for c in cost if c and c.get('flops') is not None]
  # XLA:GPU's compiled cost analysis can report a negative 'flops' (seen on
  # an H200 with jax 0.11.2): treat a count <= 0 as no count.
  flops = [f for f in flops if f > 0]
  if not flops:
    return None
  # A list holds one entry per device of one replicated program.
  return float(flops[0])


# ----------------------------------------------------------------------------
# Section 1: the reference matmul.


def matmul_flops(size: int, timing: Timing, device=None) -> dict:
  """FLOP/s of a jitted f32 [size, size] @ [size, size] on one device."""
  device = device or jax.local_devices()[0]
  a = jax.device_put(
      jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32),
      device)
  b = jax.device_put(
      jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32),
      device)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  flops, source = cost_flops(compiled.cost_analysis()), 'compiled'
  if not flops:
    flops, source = 2. * size**3, 'analytic 2 n^3'
  t = time_calls(lambda: compiled(a, b), timing)
  return {'size': size, 'flops_per_call': flops, 'flops_source': source,
          'flops_analytic': 2. * size**3,
          'flops_per_s': flops / t['median_s'],
          'flops_per_s_best': flops / t['min_s'], 'time': t,
          'matmul_precision': str(jax.config.jax_default_matmul_precision)}


# ----------------------------------------------------------------------------
# Section 2: training steps.


def first_round(config):
  """(num_student_steps, num_updates) of the config's first round."""
  d = config.distill
  return distill.round_plan(d.start_num_steps, d.end_num_steps,
                            d.steps_per_round, d.last_rounds_multiplier,
                            d.long_rounds_max_steps)[0]


def random_batch(config, batch_size, seed=0):
  """A batch shaped like create_train_iterator's, for one device."""
  info = input_pipeline.dataset_info(config.dataset.name)
  rs = np.random.RandomState(seed)
  shape = (batch_size, info.image_size, info.image_size, info.channels)
  return {'image': rs.uniform(-1, 1, shape).astype(np.float32),
          'label': rs.randint(0, info.num_classes, (batch_size,)).astype(
              np.int32)}


@dataclasses.dataclass
class Step:
  """The real training step of one stage, compiled for one device."""
  name: str
  stage: trainer.Stage
  batch_size: int
  compiled: Any
  args: list  # [state, batch, *extra], each with a leading device axis of 1
  lower_s: float
  compile_s: float
  flops: Optional[float]
  flops_source: str
  flops_compiled: Optional[float] = None
  flops_lowered: Optional[float] = None

  def run(self):
    """One update; returns its metrics (device arrays, not waited for)."""
    state, metrics = self.compiled(*self.args)
    self.args[0] = state
    return metrics

  def state_bytes(self) -> dict:
    state = self.args[0]
    size = lambda tree: int(sum(x.nbytes for x in jax.tree.leaves(tree)))
    return {'params': size(state.params), 'ema_params': size(state.ema_params),
            'opt_state': size(state.opt_state),
            'extra (teacher params)': size(self.args[2:]),
            'num_params': int(sum(x.size for x in jax.tree.leaves(
                state.params)))}


def build_step(config, kind: str, batch_size: int, *,
               num_student_steps: Optional[int] = None,
               num_updates: Optional[int] = None, teacher_params=None,
               teacher_stage: Optional[trainer.Stage] = None, device=None,
               name: str = '') -> Step:
  """Compiles the step trainer.run_stage would run, on a single device.

  kind='teacher' uses train.teacher_stage(config); kind='distill' uses
  distill.round_stage(config, ...) for `num_student_steps` (default: the
  first round of the config's plan) with `teacher_params` (default: the
  teacher's initial parameters). The step is pmapped over one device with
  the whole `batch_size` on it, its state donated, as in run_stage.
  `teacher_stage`: train.teacher_stage(config, ...) if already built.
  """
  device = device or jax.local_devices()[0]
  if kind == 'teacher':
    stage = teacher_stage or train.teacher_stage(config, _UNUSED_WORKDIR)
  elif kind == 'distill':
    n0, u0 = first_round(config)
    num_student_steps = num_student_steps or n0
    num_updates = num_updates or u0
    if teacher_params is None:
      teacher_params = (teacher_stage or train.teacher_stage(
          config, _UNUSED_WORKDIR)).init_params
    stage = distill.round_stage(config, _UNUSED_WORKDIR, teacher_params,
                                num_student_steps, num_updates)
  else:
    raise ValueError(f'kind must be teacher or distill, got {kind!r}')
  p_step = trainer.pmapped_step(stage, devices=[device])
  state = TrainState.create(stage.init_params, stage.optimizer, stage.rng)
  args = [flax.jax_utils.replicate(state, [device]),
          flax.jax_utils.replicate(random_batch(config, batch_size), [device]),
          *flax.jax_utils.replicate(stage.extra, [device])]
  t0 = time.perf_counter()
  lowered = p_step.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  flops_compiled = cost_flops(compiled.cost_analysis())
  flops_lowered = cost_flops(lowered.cost_analysis())
  # On GPU the compiled program's convolutions and dots are library calls
  # (cuDNN/cuBLAS) that XLA's compiled cost analysis does not count (an
  # H200 run counted ~3% of the lowered FLOPs): there, and wherever the
  # compiled analysis has no count, use the HLO as lowered (before XLA's
  # optimizations), which counts every convolution and dot.
  if flops_compiled and device.platform == 'cpu':
    flops, source = flops_compiled, 'compiled'
  else:
    flops, source = flops_lowered, 'lowered'
  return Step(name=name or kind, stage=stage, batch_size=batch_size,
              compiled=compiled, args=args, lower_s=t1 - t0,
              compile_s=t2 - t1, flops=flops, flops_source=source,
              flops_compiled=flops_compiled, flops_lowered=flops_lowered)


def measure_step(step: Step, timing: Timing) -> dict:
  """Times `step` (state carried from update to update) and summarises it."""
  with _maybe_trace(timing.profile_dir, step.name):
    t = time_calls(step.run, timing)
  last = jax.device_get(jax.tree.map(lambda x: x[0], step.run()))
  out = {'batch_size': step.batch_size, 'time': t,
         'step_s': t['median_s'], 'step_s_min': t['min_s'],
         'images_per_s': step.batch_size / t['median_s'],
         'lower_s': step.lower_s, 'compile_s': step.compile_s,
         'flops_per_step': step.flops, 'flops_source': step.flops_source,
         'flops_per_step_compiled': step.flops_compiled,
         'flops_per_step_lowered': step.flops_lowered,
         'last_loss': float(last['loss'])}
  if step.flops:
    out['flops_per_example'] = step.flops / step.batch_size
    out['flops_per_s'] = step.flops / t['median_s']
    out['flops_per_s_best'] = step.flops / t['min_s']
  return out


# ----------------------------------------------------------------------------
# Section 3: sampling overhead.


def sampling_overhead(config, *, batch_size: int, num_steps: Sequence[int],
                      timing: Timing, params=None) -> dict:
  """Sampler.sample (DDIM) time over N x one network evaluation's time.

  The network evaluation is the jitted eval-mode model apply on the same
  batch with its parameters on the device; its repeats alternate with the
  sampler's (`time_interleaved`), and the ratio is the median of the
  repeat-by-repeat ratios. The sampler is timed twice: built from host
  (NumPy) parameters, as init_params / load_model hand them out, and from
  parameters already on the device.
  """
  model = models.create_model(config)
  if params is None:
    params = inference.init_params(model, config, jax.random.PRNGKey(0))
  sampler = inference.make_sampler(config, model, params)
  model_fn = inference.make_model_fn(model)
  rng = jax.random.PRNGKey(0)
  z = jax.random.normal(rng, (batch_size,) + sampler.image_shape)
  logsnr = jnp.zeros((batch_size,))
  labels = (jax.random.randint(rng, (batch_size,), 0, sampler.num_classes)
            if sampler.num_classes > 1 else None)
  device_params = jax.device_put(params)
  apply = jax.jit(lambda p, z, l, y: model_fn(p, z, l, y, False, None))
  evaluate = lambda: apply(device_params, z, logsnr, labels)
  t_eval = time_calls(evaluate, timing)
  out = {'batch_size': batch_size, 'network_eval': t_eval, 'per_num_steps': {}}
  variants = {'host_params': sampler,
              'device_params': sampler.with_params(device_params)}
  for variant, s in variants.items():
    rows, times, evals = {}, [], []
    for n in num_steps:
      # The sampler's repeats alternate with the network evaluation's; the
      # ratio is the median of the repeat-by-repeat ratios.
      t = time_interleaved(
          {'sample': functools.partial(s.sample, rng, batch_size,
                                       num_steps=n),
           'network_eval': evaluate}, timing)
      ts, te = t['sample'], t['network_eval']
      ratios = [a / (n * b) for a, b in zip(ts['repeats_s'], te['repeats_s'])]
      rows[str(n)] = {'num_steps': n, 'time': ts, 'network_eval': te,
                      'sample_s': ts['median_s'],
                      'ratio': statistics.median(ratios),
                      'ratio_repeats': ratios,
                      'ratio_best': ts['min_s'] / (n * te['min_s'])}
      times.append(ts['median_s'])
      evals.append(te['median_s'])
    entry = {'per_num_steps': rows,
             'worst_ratio': max(r['ratio'] for r in rows.values())}
    if len(num_steps) >= 2:
      slope, intercept = np.polyfit(np.asarray(num_steps, float),
                                    np.asarray(times), 1)
      entry['fit_seconds_per_step'] = float(slope)
      entry['fit_fixed_seconds'] = float(intercept)
      entry['fit_per_step_ratio'] = float(slope) / statistics.median(evals)
    out[variant] = entry
  out['per_num_steps'] = out['host_params']['per_num_steps']
  return out


# ----------------------------------------------------------------------------
# Section 4: input pipeline.


def pipeline_rate(config, *, timing: Timing, batch_size: Optional[int] = None,
                  warmup_batches: int = 100) -> dict:
  """Images/s that create_train_iterator delivers, after filling its cache."""
  batch_size = batch_size or config.train.batch_size
  t0 = time.perf_counter()
  it = input_pipeline.create_train_iterator(config, batch_size=batch_size,
                                            seed=config.seed)
  first = next(it)
  startup_s = time.perf_counter() - t0
  images = int(np.prod(first['image'].shape[:2]))
  for _ in range(warmup_batches):
    next(it)
  t = time_calls(lambda: next(it), timing)
  return {'batch_size': images, 'startup_s': startup_s,
          'warmup_batches': warmup_batches, 'time': t,
          'batch_s': t['median_s'], 'images_per_s': images / t['median_s'],
          'images_per_s_best': images / t['min_s']}


# ----------------------------------------------------------------------------
# Section 5: distillation cost.


def distillation_cost(config, *, timing: Timing, teacher: Optional[dict] = None,
                      teacher_params=None, first_round_result=None,
                      down_to=(4, 1)) -> dict:
  """Rounds' wall time over the teacher's, from measured step times.

  Estimated time of a stage = its configured number of updates x its
  measured step time; with compile, plus the measured compile time of its
  step when the round compiles one: run_stage reuses the compiled step of an
  earlier round of the same length (num_student_steps is an argument).
  `teacher` is measure_step's result for the teacher step (measured here if
  None); `first_round_result` may hold the first round's, to reuse it.
  """
  t, d = config.train, config.distill
  if teacher is None:
    teacher = measure_step(build_step(config, 'teacher', t.batch_size,
                                      name='digits_teacher'), timing)
  if teacher_params is None:
    teacher_params = train.teacher_stage(config, _UNUSED_WORKDIR).init_params
  plan = distill.round_plan(d.start_num_steps, d.end_num_steps,
                            d.steps_per_round, d.last_rounds_multiplier,
                            d.long_rounds_max_steps)
  rounds, compiled_lengths = [], set()
  for i, (n, updates) in enumerate(plan):
    if i == 0 and first_round_result is not None:
      r = first_round_result
    else:
      r = measure_step(build_step(
          config, 'distill', d.batch_size, num_student_steps=n,
          num_updates=updates, teacher_params=teacher_params,
          name=f'distill_round_{n}'), timing)
    compiles = updates not in compiled_lengths
    compiled_lengths.add(updates)
    rounds.append({'num_student_steps': n, 'num_updates': updates,
                   'step_s': r['step_s'], 'compiles': compiles,
                   'compile_s': (r['lower_s'] + r['compile_s']) * compiles,
                   'steps_s_total': updates * r['step_s']})
  teacher_steps_s = t.num_steps * teacher['step_s']
  teacher_compile_s = teacher['lower_s'] + teacher['compile_s']
  out = {'teacher': {'num_updates': t.num_steps, 'batch_size': t.batch_size,
                     'step_s': teacher['step_s'],
                     'compile_s': teacher_compile_s,
                     'steps_s_total': teacher_steps_s},
         'rounds': rounds, 'down_to': {}}
  for target in down_to:
    chosen = [r for r in rounds if r['num_student_steps'] >= target]
    steps_s = sum(r['steps_s_total'] for r in chosen)
    compile_s = sum(r['compile_s'] for r in chosen)
    out['down_to'][str(target)] = {
        'num_rounds': len(chosen),
        'rounds_steps_s': steps_s,
        'rounds_compile_s': compile_s,
        'ratio_step_time_only': steps_s / teacher_steps_s,
        'ratio_including_compile': (steps_s + compile_s) /
                                   (teacher_steps_s + teacher_compile_s)}
  return out


# ----------------------------------------------------------------------------
# Section 6: memory, in a fresh process.


def _ru_maxrss_bytes():
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss if sys.platform == 'darwin' else rss * 1024


def _vm_hwm_bytes():
  """This process's own RSS high-water mark (Linux), else None."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _memory_child():
  """Runs in a fresh process: stdin {config, batch_size, kind}; prints JSON."""
  args = json.load(sys.stdin)
  _hide_gpus_from_tf()
  phases = ('after_imports', 'after_compile', 'after_2_steps')
  hwm, ru = {}, {}

  def mark(phase):
    hwm[phase], ru[phase] = _vm_hwm_bytes(), _ru_maxrss_bytes()

  mark(phases[0])
  config = ml_collections.ConfigDict(args['config'])
  step = build_step(config, args['kind'], args['batch_size'])
  mark(phases[1])
  for _ in range(2):
    jax.block_until_ready(step.run())
  mark(phases[2])
  out = {'vm_hwm_bytes': hwm, 'ru_maxrss_bytes': ru,
         'state_bytes': step.state_bytes(),
         'device_memory_stats': jax.local_devices()[0].memory_stats()}
  print(_MEMORY_MARK + json.dumps(out, default=float), flush=True)


def peak_memory(config, *, batch_size: int, kind: str = 'teacher',
                timeout_s: float = 3600.) -> dict:
  """Peak RSS of a fresh process that builds, compiles and runs a step."""
  payload = json.dumps({'config': json.loads(config.to_json_best_effort()),
                        'batch_size': batch_size, 'kind': kind})
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run(
      [sys.executable, '-c',
       'from benchmarks import speed; speed._memory_child()'],
      input=payload, capture_output=True, text=True, cwd=REPO, env=env,
      timeout=timeout_s, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_MEMORY_MARK)]
  if proc.returncode or not lines:
    raise RuntimeError(f'memory subprocess failed ({proc.returncode}):\n'
                       f'{proc.stderr[-3000:]}')
  out = json.loads(lines[-1][len(_MEMORY_MARK):])
  out['batch_size'] = batch_size
  out['kind'] = kind
  # ru_maxrss survives exec: a child started from a big process reports at
  # least the parent's RSS. VmHWM belongs to the child's own address space.
  if out['vm_hwm_bytes']['after_2_steps'] is not None:
    out['peak_rss_bytes'] = out['vm_hwm_bytes']['after_2_steps']
    out['peak_rss_source'] = 'VmHWM of /proc/self/status in the child'
  else:
    out['peak_rss_bytes'] = out['ru_maxrss_bytes']['after_2_steps']
    out['peak_rss_source'] = 'ru_maxrss of the child (getrusage)'
    del out['vm_hwm_bytes']
  if not out['device_memory_stats']:
    del out['device_memory_stats']  # None on CPU
  return out


# ----------------------------------------------------------------------------
# Configs and the whole run.


def _load_config(module):
  import importlib  # pylint: disable=g-import-not-at-top
  return importlib.import_module(f'configs.{module}').get_config()


def shrink(config, *, attention=False):
  """A tiny model of the same structure (for --quick and tests)."""
  info = input_pipeline.dataset_info(config.dataset.name)
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
  timing: Timing = dataclasses.field(default_factory=Timing)
  matmul_size: int = 2048
  cifar_batch: int = 8
  sample_batch: int = 64
  sample_steps: tuple = (1, 4, 16, 64)
  pipeline_warmup_batches: int = 100
  digits: Any = None  # ConfigDict; default configs/digits.py
  cifar_teacher: Any = None  # default configs/cifar10_teacher.py
  cifar_distill: Any = None  # default configs/cifar10_distill.py
  quick: bool = False

  def __post_init__(self):
    if self.digits is None:
      self.digits = _load_config('digits')
      if self.quick:
        shrink(self.digits)
    if self.cifar_teacher is None:
      self.cifar_teacher = _load_config('cifar10_teacher')
      if self.quick:
        shrink(self.cifar_teacher, attention=True)
    if self.cifar_distill is None:
      self.cifar_distill = _load_config('cifar10_distill')
      if self.quick:
        shrink(self.cifar_distill, attention=True)


def quick_options(data_dir=None, **kwargs) -> Options:
  """Tiny sizes: seconds instead of minutes (for --quick and the tests)."""
  kwargs.setdefault('timing', Timing(repeats=2, min_repeat_s=0.05, warmup=1))
  kwargs.setdefault('matmul_size', 256)
  kwargs.setdefault('cifar_batch', 2)
  kwargs.setdefault('sample_batch', 8)
  kwargs.setdefault('sample_steps', (1, 4))
  kwargs.setdefault('pipeline_warmup_batches', 10)
  opts = Options(quick=True, **kwargs)
  if data_dir:
    opts.digits.dataset.data_dir = data_dir
  return opts


def device_description() -> dict:
  dev = jax.local_devices()[0]
  cpu_model = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu_model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
           else os.cpu_count())
  return {'platform': dev.platform, 'device_kind': dev.device_kind,
          'local_device_count': jax.local_device_count(),
          'devices_used_for_timing': 1, 'host_cpu': cpu_model,
          'host_cpu_cores': cores, 'machine': platform.machine(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'xla_python_client_preallocate': os.environ.get(
              'XLA_PYTHON_CLIENT_PREALLOCATE', '')}


_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'clu',
             'ml_collections', 'numpy', 'tensorflow', 'tensorflow-cpu',
             'tensorflow-datasets')


def package_versions() -> dict:
  """Installed versions of the packages the timed code runs on."""
  out = {}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def machine_tag() -> str:
  d = device_description()
  if d['platform'] == 'cpu':
    return f'cpu-{d["host_cpu_cores"]}core'
  kind = ''.join(c if c.isalnum() else '-' for c in d['device_kind'].lower())
  return f'{d["platform"]}-{kind.strip("-")}-x{d["local_device_count"]}'


def _key(config):
  return config.to_json_best_effort(sort_keys=True)


def _entry(value, goal, met, units, what, **details):
  return dict(value=value, goal=goal, met=met, units=units, what=what,
              **details)


class _Run:
  """One benchmark run; shared measurements are made once."""

  def __init__(self, opts: Options):
    self.opts = opts
    self._memo = {}

  def _once(self, key, fn):
    if key not in self._memo:
      self._memo[key] = fn()
    return self._memo[key]

  def matmul(self):
    return self._once('matmul', lambda: matmul_flops(self.opts.matmul_size,
                                                     self.opts.timing))

  def teacher_stage(self, which):
    config = getattr(self.opts, which)
    return self._once(('teacher_stage', _key(config)),
                      lambda: train.teacher_stage(config, _UNUSED_WORKDIR))

  def teacher_params(self, which):
    # Initial parameters depend on the seed, model and data set only: the
    # CIFAR-10 teacher and distill configs share them.
    config = getattr(self.opts, which)
    return self._once(('params', config.seed, _key(config.model),
                       _key(config.dataset)),
                      lambda: self.teacher_stage(which).init_params)

  def step(self, which, kind):
    opts = self.opts
    config = getattr(opts, which)

    if which == 'digits':
      batch = (config.train.batch_size if kind == 'teacher'
               else config.distill.batch_size)
    else:
      batch = opts.cifar_batch

    def measure():
      name = f'{which}_{kind}'
      extra = {}
      if kind == 'distill':
        n, updates = first_round(config)
        extra = dict(num_student_steps=n, num_updates=updates,
                     teacher_params=self.teacher_params(which))
      else:
        extra = dict(teacher_stage=self.teacher_stage(which))
        self.teacher_params(which)  # shared with a distill config's step
      step = build_step(config, kind, batch, name=name, **extra)
      result = measure_step(step, opts.timing)
      if kind == 'distill':
        result['num_student_steps'] = extra['num_student_steps']
      del step
      return result
    # Keyed by content: configs that are the same are measured once.
    return self._once(('step', _key(config), kind, batch), measure)

  # Sections: each returns the JSON entry.

  def section_matmul(self):
    m = self.matmul()
    return _entry(
        m['flops_per_s'], None, None, 'FLOP/s',
        f'jax.jit(jnp.matmul) of two float32 [{m["size"]}, {m["size"]}] '
        'arrays on one device, block_until_ready; FLOPs from XLA cost '
        'analysis (2 n^3 where it has no positive count, as on GPU); value '
        '= FLOPs / median time; matmul_precision None = the backend\'s '
        'default (on NVIDIA Hopper: TF32 tensor cores for float32). Reference peak for this run '
        '(no goal).', **m)

  def section_step(self):
    peak = self.matmul()['flops_per_s']
    peak_best = self.matmul()['flops_per_s_best']
    entries, cifar = {}, []
    for which in ('digits', 'cifar_teacher', 'cifar_distill'):
      kinds = {'digits': ('teacher', 'distill'), 'cifar_teacher': ('teacher',),
               'cifar_distill': ('distill',)}[which]
      for kind in kinds:
        r = dict(self.step(which, kind))
        if r.get('flops_per_s'):
          r['ratio_to_matmul'] = r['flops_per_s'] / peak
          r['ratio_to_matmul_best'] = r['flops_per_s_best'] / peak_best
        name = f'{"digits" if which == "digits" else "cifar10"}_{kind}'
        entries[name] = r
        if which != 'digits' and 'ratio_to_matmul' in r:
          cifar.append(r['ratio_to_matmul'])
    # None (not a made-up number) if cost analysis gave no FLOP count.
    value = min(cifar) if len(cifar) == 2 else None
    return _entry(
        value, GOALS['step'], None if value is None else
        value >= GOALS['step'], 'ratio',
        'FLOP/s of the training step / FLOP/s of the reference matmul, both '
        'on one device in this run. The step is trainer.train_step with the '
        'loss and optimizer of train.teacher_stage (teacher) or '
        'distill.round_stage (distill, first round of the plan), pmapped '
        'over ONE device with the whole batch on it and state donated, as '
        'run_stage builds it, on a random batch already on the device '
        '(host->device copy and data pipeline excluded). FLOPs per step from '
        'XLA cost analysis of that single-device program: compiled on CPU, '
        'as lowered elsewhere (flops_source; both kept). value = '
        'the smaller of the two CIFAR-10-architecture ratios (median times); '
        'digits entries are context.',
        reference_matmul_flops_per_s=peak, cifar_batch=self.opts.cifar_batch,
        entries=entries)

  def section_sampling(self):
    opts = self.opts
    r = sampling_overhead(opts.digits, batch_size=opts.sample_batch,
                          num_steps=opts.sample_steps, timing=opts.timing,
                          params=self.teacher_params('digits'))
    value = r['host_params']['worst_ratio']
    return _entry(
        value, GOALS['sampling'], value <= GOALS['sampling'], 'ratio',
        'Sampler.sample(rng, B, num_steps=N) (DDIM, digits teacher model, '
        'one device, returns host uint8) time / (N x time of the jitted '
        'eval-mode model apply on the same batch with device-resident '
        'parameters), timed in alternating repeats; ratio = the median of '
        'the repeat-by-repeat ratios. value = the worst ratio over N with the '
        'host '
        'parameters that init_params/load_model return (as users get them); '
        'device_params = the same with parameters placed on the device '
        'first; fit_* = least-squares line time(N) = fixed + N x per_step.',
        **r)

  def section_pipeline(self):
    opts = self.opts
    r = pipeline_rate(opts.digits, timing=opts.timing,
                      warmup_batches=opts.pipeline_warmup_batches)
    step = self.step('digits', 'teacher')
    value = r['images_per_s'] / step['images_per_s']
    return _entry(
        value, GOALS['pipeline'], value >= GOALS['pipeline'], 'ratio',
        'images/s delivered by input_pipeline.create_train_iterator (digits, '
        'global batch = train.batch_size, host NumPy batches, after filling '
        'its cache with warmup_batches) / images/s consumed by the digits '
        'teacher training step measured in this run (median times).',
        teacher_step_images_per_s=step['images_per_s'], **r)

  def section_distill_cost(self):
    config = self.opts.digits
    # The step section's digits distill step is the first round's.
    r = distillation_cost(config, timing=self.opts.timing,
                          teacher=self.step('digits', 'teacher'),
                          teacher_params=self.teacher_params('digits'),
                          first_round_result=self.step('digits', 'distill'))
    for target in r['down_to'].values():
      target['met_step_time_only'] = (
          target['ratio_step_time_only'] <= GOALS['distill_cost'])
      target['met_including_compile'] = (
          target['ratio_including_compile'] <= GOALS['distill_cost'])
    value = r['down_to']['1']['ratio_including_compile']
    return _entry(
        value, GOALS['distill_cost'], value <= GOALS['distill_cost'], 'ratio',
        'ESTIMATE from measured per-step times (no training is run): for '
        'configs/digits.py, sum over rounds of distill.round_plan (num_updates'
        ' x measured step time at distill.batch_size) / (train.num_steps x '
        'measured teacher step time at train.batch_size). '
        'down_to[N].ratio_step_time_only counts steps only; '
        'down_to[N].ratio_including_compile adds each stage\'s measured '
        'compile time to both sides (a round of the same length as an '
        'earlier one reuses its compiled step, as in run_stage). '
        'value = down_to["1"].ratio_including_compile. Excluded: data '
        'pipeline start-up, checkpoints, sample grids, logging.',
        **r)

  def section_memory(self):
    opts = self.opts
    r = peak_memory(opts.cifar_teacher, batch_size=opts.cifar_batch)
    return _entry(
        r['peak_rss_bytes'], None, None, 'bytes',
        'Peak resident set (RSS high-water mark) of a fresh Python process '
        'that imports the library, builds train.teacher_stage for the '
        'CIFAR-10 architecture, compiles the single-device training step and '
        'runs 2 updates at batch cifar_batch. value = VmHWM from '
        '/proc/self/status where there is one (see peak_rss_source): '
        'getrusage ru_maxrss is kept too, but Linux carries it over exec '
        'from the parent, so it is at least the parent\'s RSS at spawn '
        'time. Both are given after each phase. state_bytes: parameter / '
        'EMA / Adam state sizes. Context; no goal.', **r)


def run_benchmark(sections: Sequence[str], opts: Options, *,
                  keep_going: bool = False,
                  on_section: Optional[Callable[[dict], Any]] = None) -> dict:
  """Runs `sections` and returns the JSON-able results.

  keep_going: a section that raises is recorded as {'error': traceback}
  (value None) and the next one runs, instead of the run stopping.
  on_section: called with the results so far after each section (e.g. to
  write them, so that a run stopped part-way keeps what it measured).
  """
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    raise ValueError(f'unknown sections {sorted(unknown)}; use {SECTIONS}')
  env = {'jax_version': jax.__version__,
         'jaxlib_version': jaxlib.__version__,
         'device': device_description(),
         'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
             timespec='seconds')}
  load_before = os.getloadavg()
  run = _Run(opts)
  out = {}

  def results():
    return {'meta': dict(env, machine=machine_tag(), quick=opts.quick,
                         packages=package_versions(),
                         timing=dataclasses.asdict(opts.timing),
                         matmul_size=opts.matmul_size,
                         cifar_batch=opts.cifar_batch,
                         sample_batch=opts.sample_batch,
                         load_average_1_5_15min_before=list(load_before),
                         load_average_1_5_15min_after=list(os.getloadavg()),
                         sections_asked=list(sections),
                         argv=list(sys.argv)),
            'sections': dict(out)}

  for name in SECTIONS:
    if name in sections:
      t0 = time.perf_counter()
      try:
        entry = getattr(run, f'section_{name}')()
      except Exception:  # pylint: disable=broad-except
        if not keep_going:
          raise
        entry = _entry(None, GOALS.get(name), None, None,
                       f'section {name} raised; see error',
                       error=traceback.format_exc())
        print(f'section {name} failed:\n{entry["error"]}', file=sys.stderr,
              flush=True)
      entry.update(env)
      entry['section_wall_s'] = time.perf_counter() - t0
      out[name] = entry
      if on_section is not None:
        on_section(results())
  return results()


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.bool_, bool)):
    return bool(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return float(x)
  return x


def write_results(results: dict, path: str) -> str:
  """Writes results as JSON (NaN/Inf refused); returns the path."""
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  text = json.dumps(_jsonable(results), indent=2, allow_nan=False)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text + '\n')
  os.replace(tmp, path)
  return path


def _fmt(x, units=''):
  if x is None:
    return '-'
  if isinstance(x, bool):
    return 'yes' if x else 'NO'
  if units in ('FLOP/s', 'FLOP'):
    return f'{x / 1e9:.2f} G{units}'
  if units == 'bytes':
    return f'{x / 2**20:.0f} MiB'
  return f'{x:.3g}'


def format_table(results: dict) -> str:
  """A readable summary of run_benchmark's results."""
  s = results['sections']
  lines = [f'speed benchmark on {results["meta"]["machine"]} '
           f'({results["meta"]["device"]["device_kind"]}), jax '
           f'{results["meta"]["jax_version"]}, {results["meta"]["date"]}, '
           f'load avg before/after '
           f'{results["meta"]["load_average_1_5_15min_before"][0]:.2f}/'
           f'{results["meta"]["load_average_1_5_15min_after"][0]:.2f}, '
           f'matmul n={results["meta"].get("matmul_size")}, cifar batch '
           f'{results["meta"]["cifar_batch"]}']
  row = '{:<44} {:>14} {:>8} {:>5}'
  lines.append(row.format('measure', 'value', 'goal', 'met'))
  for name, e in s.items():
    goal = '-' if e['goal'] is None else (
        ('>= ' if name in ('step', 'pipeline') else '<= ') + f'{e["goal"]:g}')
    lines.append(row.format(name, _fmt(e['value'], e['units']), goal,
                            _fmt(e['met'])))
    if 'error' in e:
      lines.append('  ERROR: ' + e['error'].strip().splitlines()[-1])
    elif name == 'step':
      for k, r in e['entries'].items():
        lines.append(
            f'  {k:<20} batch {r["batch_size"]:>3}: {r["images_per_s"]:9.1f} '
            f'img/s, step {r["step_s"] * 1e3:8.1f} ms (min '
            f'{r["step_s_min"] * 1e3:.1f}), '
            f'{(r.get("flops_per_example") or 0) / 1e9:7.2f} GFLOP/example, '
            f'{(r.get("flops_per_s") or 0) / 1e9:7.2f} GFLOP/s, ratio '
            f'{r.get("ratio_to_matmul", float("nan")):.3f}, compile '
            f'{r["compile_s"]:.1f} s')
    elif name == 'sampling':
      for variant in ('host_params', 'device_params'):
        per = e[variant]['per_num_steps']
        lines.append(f'  {variant:<14} ' + ', '.join(
            f'N={n}: {r["ratio"]:.3f}' for n, r in per.items()) +
            (f'; fit per-step ratio {e[variant]["fit_per_step_ratio"]:.3f}, '
             f'fixed {e[variant]["fit_fixed_seconds"] * 1e3:.2f} ms'
             if 'fit_per_step_ratio' in e[variant] else ''))
      lines.append(f'  network eval {e["network_eval"]["median_s"] * 1e3:.2f}'
                   f' ms at batch {e["batch_size"]}')
    elif name == 'pipeline':
      lines.append(f'  pipeline {e["images_per_s"]:.0f} img/s vs teacher step'
                   f' {e["teacher_step_images_per_s"]:.0f} img/s; start-up '
                   f'{e["startup_s"]:.2f} s')
    elif name == 'distill_cost':
      for n, d in e['down_to'].items():
        lines.append(f'  down to {n} step(s), {d["num_rounds"]} rounds: '
                     f'steps only {d["ratio_step_time_only"]:.3f}, with '
                     f'compile {d["ratio_including_compile"]:.3f}')
    elif name == 'memory':
      b = e['state_bytes']
      lines.append(f'  params {b["params"] / 2**20:.0f} MiB '
                   f'({b["num_params"]:,}), EMA {b["ema_params"] / 2**20:.0f}'
                   f' MiB, Adam {b["opt_state"] / 2**20:.0f} MiB; peak RSS '
                   'after imports / compile / 2 steps: ' + ' / '.join(
                       f'{v / 2**20:.0f}' for v in e.get(
                           'vm_hwm_bytes', e['ru_maxrss_bytes']).values()) +
                   ' MiB')
      dev = e.get('device_memory_stats') or {}
      if dev.get('peak_bytes_in_use') is not None:
        lines.append(f'  device peak_bytes_in_use '
                     f'{dev["peak_bytes_in_use"] / 2**20:.0f} MiB (of '
                     f'{(dev.get("bytes_limit") or 0) / 2**20:.0f} MiB limit)')
  return '\n'.join(lines)


def _hide_gpus_from_tf():
  # tf.data only feeds the input pipeline: keep TensorFlow off accelerators.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')


FLAGS = flags.FLAGS
flags.DEFINE_list('what', list(SECTIONS),
                  f'Sections to run, comma-separated: {",".join(SECTIONS)}.')
flags.DEFINE_integer('matmul_size', 2048, 'n of the reference f32 [n, n] @ '
                     '[n, n] matmul (2048 is small for a GPU: use e.g. 8192).')
flags.DEFINE_integer('cifar_batch', 8, 'Batch of the CIFAR-10-architecture '
                     'steps (one device).')
flags.DEFINE_integer('repeats', 5, 'Timed repeats (median and min kept).')
flags.DEFINE_float('min_repeat_s', 1.0, 'Each timed repeat lasts at least '
                   'about this long (calls are batched).')
flags.DEFINE_integer('warmup', 2, 'Untimed calls before timing.')
flags.DEFINE_integer('sample_batch', 64, 'Batch of the sampling section.')
flags.DEFINE_list('sample_steps', ['1', '4', '16', '64'],
                  'Sampler step counts N of the sampling section.')
flags.DEFINE_boolean('quick', False, 'Tiny models and sizes (smoke test).')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir of digits (default: '
                    'TFDS_DATA_DIR or ~/tensorflow_datasets).')
flags.DEFINE_string('machine', '', 'Machine tag for the file name (default: '
                    'from platform and device, e.g. cpu-2core).')
flags.DEFINE_string('out', '', 'Output JSON path (default: '
                    'benchmarks/results/speed_<machine>.json).')
flags.DEFINE_boolean('keep_going', False, 'A section that fails is recorded '
                     'with its error and the others still run; the JSON is '
                     'rewritten after every section.')
flags.DEFINE_multi_string('note', [], 'Free text kept in the JSON meta '
                          '(e.g. how the run was set up); repeatable.')
flags.DEFINE_string('profile_dir', None, 'If set, the timing of each '
                    'training step runs under jax.profiler.trace(DIR/name).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  sections = [w.strip() for w in FLAGS.what if w.strip()]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise app.UsageError(f'--what: unknown sections {unknown}; use '
                         f'{",".join(SECTIONS)}')
  _hide_gpus_from_tf()
  if FLAGS.quick:
    opts = quick_options(FLAGS.data_dir)
  else:
    opts = Options()
    if FLAGS.data_dir:
      opts.digits.dataset.data_dir = FLAGS.data_dir
  # Flags given on the command line win over the --quick sizes.
  given = lambda name: not FLAGS.quick or FLAGS[name].present
  for name in ('repeats', 'min_repeat_s', 'warmup'):
    if given(name):
      setattr(opts.timing, name, FLAGS[name].value)
  opts.timing.profile_dir = FLAGS.profile_dir
  if given('matmul_size'):
    opts.matmul_size = FLAGS.matmul_size
  if given('cifar_batch'):
    opts.cifar_batch = FLAGS.cifar_batch
  if given('sample_batch'):
    opts.sample_batch = FLAGS.sample_batch
  if given('sample_steps'):
    opts.sample_steps = tuple(int(n) for n in FLAGS.sample_steps)
  tag = FLAGS.machine or machine_tag()
  path = FLAGS.out or os.path.join(REPO, 'benchmarks', 'results',
                                   f'speed_{tag}.json')

  def finish(results):
    results['meta']['machine'] = tag
    if FLAGS.note:
      results['meta']['notes'] = list(FLAGS.note)
    write_results(results, path)
    return results

  results = finish(run_benchmark(
      sections, opts, keep_going=FLAGS.keep_going,
      on_section=finish if FLAGS.keep_going else None))
  print(format_table(results))
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
