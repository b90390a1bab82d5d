"""Section `distill_cost`: the distillation rounds' time over the teacher's.

An ESTIMATE from measured step times (no training is run), for
configs/digits.py: the rounds of its plan (num_updates x the round's step
time at distill.batch_size) / the teacher (train.num_steps x its step time
at train.batch_size), down to 4 steps and down to 1. The teacher step and
every round's step are timed in turn, and each figure is the median over
repeats r of the estimate made from repeat r's times. "With compile" adds
each stage's measured lower + compile time to both sides; rounds of the
same length share one compiled step, as in distill.Rounds, so only the
first of them compiles.
"""

import dataclasses
import statistics

from benchmarks.speed import build
from benchmarks.speed import report
from benchmarks.speed import timing as timing_lib

GOAL = 1.
DOWN_TO = (4, 1)


def compile_rounds(ctx, config) -> list:
  """[(num_student_steps, num_updates, CompiledStep, compiles)] per round."""
  rounds = build.distill_rounds(config)
  teacher_params = ctx.teacher_params(config)
  batch = config.distill.batch_size
  out, first_of_length = [], {}
  for index, (n, updates) in enumerate(rounds.plan):
    stage = rounds.stage(index, teacher_params)
    name = f'round_{n}'
    first = first_of_length.get(updates)
    if first is None:
      cs = build.compile_stage(stage, config, batch, name=name)
      first_of_length[updates] = cs
    else:  # The same compiled program, with this round's state and n.
      cs = dataclasses.replace(
          first, name=name, stage=stage, last_metrics=None,
          args=build.call_args(stage, config, batch, first.devices))
    out.append((n, updates, cs, first is None))
  return out


def estimates(teacher, rounds, t, repeat: int) -> dict:
  """Repeat `repeat`'s estimate of each target: steps only, with compile."""
  config_steps = teacher['num_updates']
  t_teacher = config_steps * t['teacher']['repeats_s'][repeat]
  out = {}
  for target in DOWN_TO:
    chosen = [r for r in rounds if r['num_student_steps'] >= target]
    steps = sum(r['num_updates'] * t[r['name']]['repeats_s'][repeat]
                for r in chosen)
    compile_s = sum(r['compile_s'] for r in chosen)
    out[target] = (steps / t_teacher, (steps + compile_s) /
                   (t_teacher + teacher['compile_s']), len(chosen))
  return out


def down_to(teacher, rounds, t, repeats: int) -> dict:
  per_repeat = [estimates(teacher, rounds, t, r) for r in range(repeats)]
  out = {}
  for target in DOWN_TO:
    steps = [e[target][0] for e in per_repeat]
    with_compile = [e[target][1] for e in per_repeat]
    out[str(target)] = {
        'num_rounds': per_repeat[0][target][2],
        'ratio_step_time_only': statistics.median(steps),
        'ratio_including_compile': statistics.median(with_compile),
        'ratio_step_time_only_repeats': steps,
        'ratio_including_compile_repeats': with_compile}
  return out


def _round_rows(rounds_compiled, t) -> list:
  return [{'name': cs.name, 'num_student_steps': n, 'num_updates': updates,
           'compiles': compiles,
           'compile_s': (cs.lower_s + cs.compile_s) if compiles else 0.,
           'step_s': t[cs.name]['median_s'], 'time': t[cs.name],
           'last_loss': build.summary(cs, t[cs.name])['last_loss']}
          for n, updates, cs, compiles in rounds_compiled]


def section(ctx) -> dict:
  config = ctx.opts.digits
  teacher_cs = ctx.digits_step(1)
  rounds_compiled = compile_rounds(ctx, config)
  calls = {'teacher': teacher_cs.run}
  calls.update({cs.name: cs.run for _, _, cs, _ in rounds_compiled})
  t = timing_lib.time_interleaved(calls, ctx.opts.timing)
  teacher = {'num_updates': config.train.num_steps,
             'batch_size': config.train.batch_size,
             'step_s': t['teacher']['median_s'], 'time': t['teacher'],
             'compile_s': teacher_cs.lower_s + teacher_cs.compile_s}
  rounds = _round_rows(rounds_compiled, t)
  targets = down_to(teacher, rounds, t, len(t['teacher']['repeats_s']))
  for d in targets.values():
    d['met_step_time_only'] = d['ratio_step_time_only'] <= GOAL
    d['met_including_compile'] = d['ratio_including_compile'] <= GOAL
  value = targets['1']['ratio_including_compile']
  return report.entry(
      value, GOAL, value <= GOAL, 'ratio', __doc__.split('\n\n')[1].replace(
          '\n', ' ') + ' value = down_to["1"].ratio_including_compile. '
      'Excluded: data pipeline start-up, checkpoints, sample grids, logging.',
      teacher=teacher, rounds=rounds, down_to=targets,
      distill_batch_size=config.distill.batch_size)
