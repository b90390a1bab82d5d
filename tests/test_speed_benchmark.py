"""benchmarks/speed.py: how its times are taken (no timing is asserted)."""

from benchmarks import speed


def test_interleaved_repeats_alternate_between_the_calls():
  log = []

  def call(name):
    log.append(name)
    return name

  timing = speed.Timing(repeats=3, min_repeat_s=0., warmup=1)
  out = speed.time_interleaved({'a': lambda: call('a'),
                                'b': lambda: call('b')}, timing)
  # Warm-up and calibration call each first, then each repeat runs the calls
  # in turn (one call per repeat, since min_repeat_s is 0).
  assert log == ['a', 'a', 'b', 'b'] + ['a', 'b'] * 3
  for name in 'ab':
    assert out[name]['repeats'] == 3 and out[name]['calls_per_repeat'] == 1
    assert len(out[name]['repeats_s']) == 3
    assert out[name]['min_s'] <= out[name]['median_s']
