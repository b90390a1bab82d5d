"""benchmarks/speed: how its times are taken, and the package's shape.

No timing is asserted: the clock is scripted where a figure is checked.
"""

import ast
import glob
import os

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import speed
from benchmarks.speed import distill_cost
from benchmarks.speed import main
from benchmarks.speed import matmul
from benchmarks.speed import options
from benchmarks.speed import profile
from benchmarks.speed import report
from benchmarks.speed import table
from benchmarks.speed import timing
from benchmarks.speed import training_step

PACKAGE_DIR = os.path.dirname(speed.__file__)


def test_interleaved_repeats_alternate_between_the_calls():
  log = []

  def call(name):
    log.append(name)
    return name

  t = speed.Timing(repeats=3, min_repeat_s=0., warmup=1)
  out = speed.time_interleaved({'a': lambda: call('a'),
                                'b': lambda: call('b')}, t)
  # Warm-up and calibration call each first, then each repeat runs the calls
  # in turn (one call per repeat, since min_repeat_s is 0).
  assert log == ['a', 'a', 'b', 'b'] + ['a', 'b'] * 3
  for name in 'ab':
    assert out[name]['repeats'] == 3 and out[name]['calls_per_repeat'] == 1
    assert len(out[name]['repeats_s']) == 3
    assert out[name]['min_s'] <= out[name]['median_s']


def _scripted_clock(monkeypatch, durations):
  """perf_counter advances only inside calls, by each name's next duration."""
  now = [0.]
  monkeypatch.setattr(timing.time, 'perf_counter', lambda: now[0])

  def call(name):
    def fn():
      now[0] += durations[name].pop(0)
      return name
    return fn
  return {name: call(name) for name in durations}


def test_ratio_is_the_median_of_the_repeat_by_repeat_ratios(monkeypatch):
  # Warm-up and calibration take 9 s each; then repeats of 1, 4, 3 s (a)
  # against 2, 2, 6 s (b), taken in the same rounds.
  calls = _scripted_clock(monkeypatch, {'a': [9, 9, 1, 4, 3],
                                        'b': [9, 9, 2, 2, 6]})
  t = speed.time_interleaved(calls, speed.Timing(repeats=3, min_repeat_s=0.,
                                                 warmup=1))
  assert t['a']['repeats_s'] == [1, 4, 3] and t['b']['repeats_s'] == [2, 2, 6]
  r = speed.ratio_summary(t['a'], t['b'])
  assert r['ratio_repeats'] == [0.5, 2., 0.5]
  # The median of the ratios, not the ratio of the medians (3 / 2).
  assert r['ratio'] == 0.5
  assert speed.median_ratio([1, 4, 3], [2, 2, 6], scale=2.) == 1.
  assert r['ratio_best'] == 0.5  # fastest repeat over fastest repeat


def test_step_flops_ratio_uses_the_matmul_of_the_same_repeat():
  mm = matmul.Matmul(size=2, dtype='float32', flops=100., flops_source='x',
                     call=None)
  mm_t = {'repeats_s': [1., 2., 1.], 'median_s': 1., 'min_s': 1.}
  step_t = {'repeats_s': [2., 2., 4.], 'median_s': 2., 'min_s': 2.}
  # Step FLOP/s / matmul FLOP/s per repeat: (50/2)/(100/1), (50/2)/(100/2),
  # (50/4)/(100/1) = 0.25, 0.5, 0.125 -> median 0.25.
  r = matmul.against(mm, mm_t, 50., step_t)
  assert r['ratio_repeats'] == [0.25, 0.5, 0.125]
  assert r['ratio'] == 0.25


def test_distill_cost_estimates_each_repeat_then_takes_the_median():
  t = {'teacher': {'repeats_s': [1., 1., 2.]},
       'round_2': {'repeats_s': [1., 3., 1.]},
       'round_1': {'repeats_s': [1., 3., 1.]}}
  teacher = {'num_updates': 10, 'compile_s': 0.}
  rounds = [{'name': 'round_2', 'num_student_steps': 2, 'num_updates': 5,
             'compile_s': 10.},
            {'name': 'round_1', 'num_student_steps': 1, 'num_updates': 5,
             'compile_s': 0.}]
  out = distill_cost.down_to(teacher, rounds, t, 3)
  # Down to 1 step: (5 t2 + 5 t1) / (10 tt) per repeat = 1, 3, 0.5.
  assert out['1']['ratio_step_time_only_repeats'] == [1., 3., .5]
  assert out['1']['ratio_step_time_only'] == 1.
  assert out['1']['ratio_including_compile_repeats'] == [2., 4., 1.]
  assert out['4']['num_rounds'] == 0 and out['1']['num_rounds'] == 2


def test_a_section_records_its_load_and_the_table_names_the_machine():
  opts = options.quick_options(
      timing=speed.Timing(repeats=2, min_repeat_s=0., warmup=1),
      matmul_size=32)
  results = main.run_benchmark(['matmul'], opts)
  meta, entry = results['meta'], results['sections']['matmul']
  assert meta['device']['host_cpu'] and meta['load_before'] is not None
  assert entry['run']['load_before'] is not None
  assert entry['run']['load_after'] is not None
  assert entry['rows']['float32']['time']['repeats'] == 2
  text = table.format_table(report.jsonable(results))
  assert meta['device']['host_cpu'] in text.splitlines()[0]


def test_accelerator_rows_are_listed_as_not_measured_on_a_cpu():
  ctx = options.Context(options.quick_options())
  if ctx.platform != 'cpu':
    pytest.skip('a CPU-only check')
  rows = training_step.not_measured(ctx)
  assert len(rows) == 4 and all('bfloat16' in r['row'] or 'float32' in
                                r['row'] for r in rows)
  assert ctx.dtypes == ('float32',)


def test_merge_keeps_the_other_sections_and_the_earlier_meta():
  old = {'meta': {'date': 'old'}, 'sections': {'a': 1, 'b': 2}}
  new = {'meta': {'date': 'new'}, 'sections': {'b': 3}}
  merged = report.merge(old, new)
  assert merged['sections'] == {'a': 1, 'b': 3}
  assert merged['meta']['earlier_runs'] == [{'date': 'old'}]


def test_every_section_is_a_module_function_and_functions_are_short():
  assert list(main.SECTIONS)[:2] == ['matmul', 'step']
  for name, fn in main.SECTIONS.items():
    assert fn.__name__ == 'section', name
  for file in sorted(os.listdir(PACKAGE_DIR)):
    if file.endswith('.py'):
      with open(os.path.join(PACKAGE_DIR, file)) as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
          assert node.end_lineno - node.lineno < 60, (file, node.name)


def test_the_package_imports_at_module_level_only():
  for file in sorted(os.listdir(PACKAGE_DIR)):
    if file.endswith('.py'):
      with open(os.path.join(PACKAGE_DIR, file)) as f:
        tree = ast.parse(f.read())
      for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
          inner = [n for n in ast.walk(fn)
                   if isinstance(n, (ast.Import, ast.ImportFrom))]
          assert not inner, (file, fn.name)


def test_importing_defines_no_flags():
  assert 'what' not in flags.FLAGS and 'cifar_batch' not in flags.FLAGS


def test_profile_sorts_traced_op_time_by_kind(tmp_path):
  def fn(x, w, q, k, v):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    attention = jnp.einsum('bqk,bkd->bqd', jnp.einsum('bqd,bkd->bqk', q, k), v)
    return jnp.tanh(y), attention, jnp.sum(jnp.exp(q), axis=-1)
  rs = np.random.RandomState(0)
  args = [rs.randn(*s).astype(np.float32) for s in
          ((8, 16, 16, 32), (3, 3, 32, 32), (8, 64, 32), (8, 64, 32),
           (8, 64, 32))]
  compiled = jax.jit(fn).lower(*args).compile()
  kinds = profile.instruction_kinds(compiled.as_text())
  assert {'convolution', 'batched matmul', 'reduction'} <= set(
      kinds.values()), kinds
  jax.block_until_ready(compiled(*args))
  with jax.profiler.trace(str(tmp_path)):
    jax.block_until_ready(compiled(*args))
  [path] = glob.glob(str(tmp_path / '**' / '*.xplane.pb'), recursive=True)
  times = profile.op_times(path, kinds)
  assert times.get('convolution', 0) > 0 and times.get('batched matmul', 0) > 0
  assert set(times) <= set(profile.KINDS)


def test_profile_kinds_of_instructions():
  assert profile.kind_of('fusion', [('convolution', ''), ('add', '')]) == (
      'convolution')
  assert profile.kind_of('fusion', [('dot', 'dot(a, b), lhs_batch_dims={0}'),
                                    ('exponential', '')]) == 'batched matmul'
  assert profile.kind_of('dot', [('dot', 'dot(a, b), lhs_contracting_dims='
                                  '{1}')]) == 'dense matmul'
  assert profile.kind_of('all-reduce', []) == 'collective'
  assert profile.kind_of('fusion', [('reduce', ''), ('add', '')]) == 'reduction'
  assert profile.kind_of('fusion', [('transpose', ''), ('copy', ''),
                                    ('parameter', '')]) == 'layout'
  assert profile.kind_of('copy', []) == 'layout'
  assert profile.kind_of('fusion', [('broadcast', ''), ('constant', '')]) == (
      'element-wise')
  assert profile.kind_of('dot', []) == 'dense matmul'
  assert profile.kind_of('fusion', [('add', ''), ('multiply', '')]) == (
      'element-wise')
