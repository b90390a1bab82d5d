"""benchmarks/speed.py at tiny sizes: FLOPs scale with the batch, ratios come
from positive measured times, and the JSON has every section, finite."""

import json
import math

import pytest

from benchmarks import speed
from tests import tiny

FAST = speed.Timing(repeats=2, min_repeat_s=0.01, warmup=1)
ENTRY_KEYS = ('value', 'goal', 'met', 'units', 'what', 'jax_version',
              'jaxlib_version', 'device', 'date')


def _config(digits_dir):
  # One distillation round (2 -> 1 steps): fewer steps to compile.
  return tiny.tiny_config(digits_dir, **{'distill.start_num_steps': 2})


def test_cost_flops_reads_dicts_and_lists():
  assert speed.cost_flops({'flops': 3., 'bytes accessed': 1.}) == 3.
  assert speed.cost_flops([{'flops': 5.}]) == 5.
  assert speed.cost_flops(None) is None
  assert speed.cost_flops([{}]) is None


@pytest.fixture(scope='module')
def written(digits_dir, tmp_path_factory):
  """Every section once, written to JSON and read back."""
  config = _config(digits_dir)
  # The same config stands in for CIFAR-10: its steps are measured once.
  opts = speed.Options(timing=FAST, matmul_size=64, cifar_batch=8,
                       sample_batch=4, sample_steps=(1, 3),
                       pipeline_warmup_batches=2, digits=config,
                       cifar_teacher=config, cifar_distill=config)
  results = speed.run_benchmark(speed.SECTIONS, opts)
  path = speed.write_results(
      results, str(tmp_path_factory.mktemp('speed') / 'speed.json'))
  with open(path) as f:
    return json.load(f)


def test_step_flops_scale_with_batch_and_steps_run(digits_dir, written):
  config = _config(digits_dir)
  at_8 = written['sections']['step']['entries']['digits_teacher']
  assert at_8['batch_size'] == 8 and at_8['flops_source'] == 'compiled'
  small = speed.build_step(config, 'teacher', 4)
  assert small.flops_source == 'compiled'
  assert small.flops > 0
  assert 1.6 <= at_8['flops_per_step'] / small.flops <= 2.4
  r = speed.measure_step(small, FAST)
  assert r['step_s'] > 0 and r['step_s_min'] <= r['step_s']
  assert r['images_per_s'] == pytest.approx(4 / r['step_s'])
  assert r['flops_per_s'] == pytest.approx(small.flops / r['step_s'])
  assert math.isfinite(r['last_loss'])
  # Warm-up, calibration, the timed repeats and the last call all updated.
  expected = FAST.warmup + 1 + FAST.repeats * r['time']['calls_per_repeat'] + 1
  assert int(small.args[0].step[0]) == expected


def test_every_section_is_written_with_finite_values(written):
  sections = written['sections']
  assert set(sections) == set(speed.SECTIONS)
  for name, e in sections.items():
    for key in ENTRY_KEYS:
      assert key in e, (name, key)
    assert isinstance(e['value'], (int, float)) and math.isfinite(e['value'])
    assert e['value'] > 0, name
    if e['goal'] is None:
      assert e['met'] is None
    else:
      assert isinstance(e['met'], bool)
  assert speed.format_table(written)


def test_ratios_are_made_of_measured_times(written):
  sections = written['sections']
  # Sampling: each ratio is sampler time / (N x network time), all positive.
  s = sections['sampling']
  t_eval = s['network_eval']['median_s']
  assert t_eval > 0
  for variant in ('host_params', 'device_params'):
    for n, row in s[variant]['per_num_steps'].items():
      assert row['sample_s'] > 0
      assert row['ratio'] == pytest.approx(row['sample_s'] / (int(n) * t_eval))
  assert s['value'] == max(r['ratio'] for r in s['per_num_steps'].values())

  step = sections['step']
  assert step['value'] == pytest.approx(
      step['entries']['cifar10_teacher']['ratio_to_matmul'])
  assert step['reference_matmul_flops_per_s'] == sections['matmul']['value']
  pipeline = sections['pipeline']
  assert pipeline['value'] == pytest.approx(
      pipeline['images_per_s'] / step['entries']['digits_teacher'][
          'images_per_s'])
  cost = sections['distill_cost']
  assert [r['num_student_steps'] for r in cost['rounds']] == [1]
  assert cost['down_to']['4']['num_rounds'] == 0
  one = cost['down_to']['1']
  assert 0 < one['ratio_step_time_only'] < one['ratio_including_compile']
  memory = sections['memory']
  state = memory['state_bytes']
  assert memory['value'] > state['params'] + state['ema_params'] + state[
      'opt_state'] > 0
