"""train_and_evaluate: the stages of `config.stages`, in order, in a workdir.

  WORKDIR/config.json, WORKDIR/teacher/, WORKDIR/distill/student_NNNNN/,
  WORKDIR/eval/, WORKDIR/timing.json (layout.py has the whole layout)

The stages and their order are the registry's (stages/__init__.py).

Every check runs first (preflight.check); config.json is written only when
all have passed, so a rejected run leaves the workdir as it was. Each stage
resumes where it stopped.
"""

import logging
import time

from etils import epath
import jax

from diffusion_distill import preflight
from diffusion_distill import stages as stages_lib
from diffusion_distill.stages import evaluate
from diffusion_distill import timing
from diffusion_distill import layout

log = logging.getLogger(__name__)


class _Teachers:
  """Each stage's teacher, resolved once (one object for one checkpoint)."""

  def __init__(self, config, workdir, resolved):
    self.config, self.workdir = config, workdir
    self._by_stage = dict(resolved)

  def __call__(self, stage):
    if stage not in self._by_stage:
      self._by_stage[stage] = preflight.stage_teacher(
          self.config, self.workdir, stage, self._by_stage.values())
    return self._by_stage[stage]


def train_and_evaluate(config, workdir, plan=None):
  """Runs the stages of `config.stages` in order; each resumes where it stopped.

  `plan` is preflight.check's result when the caller ran it already.
  """
  t0 = time.time()
  timing.run_machine()
  plan = plan or preflight.check(config, workdir)
  if jax.process_index() == 0:
    layout.write_config(workdir, config)
  teachers = _Teachers(config, workdir, plan.teachers)
  for stage in plan.stages:
    stages_lib.REGISTRY[stage].run(config, workdir, teachers(stage))
  timing.record(layout.timing_path(workdir), 'run', time.time() - t0,
                stages=list(plan.stages))
  if jax.process_index() == 0:
    for line in outputs_summary(workdir):
      log.info('%s', line)


def outputs_summary(workdir):
  """The run's last log lines: where its results, grids and plots are, and
  how long each stage took (timing.json)."""
  eval_dir = epath.Path(evaluate.directory(workdir))
  lines = [f'results: {p}' for p in [eval_dir / 'results.csv'] if p.exists()]
  lines += [f'plot: {p}' for p in sorted(eval_dir.glob('*.png'))]
  stage_dirs = [d for stage in stages_lib.REGISTRY.values()
                for d in stage.directories(workdir)]
  for stage_dir in stage_dirs:
    grids = epath.Path(layout.sample_grid_path(stage_dir, 0)).parent
    last = sorted(grids.glob('*.png'))[-1:] if grids.exists() else []
    lines += [f'last sample grid: {p}' for p in last]
  timing_path = layout.timing_path(workdir)
  lines += [f'time: {line}' for line in timing.summary_lines(timing_path)]
  if epath.Path(timing_path).exists():
    lines.append(f'timing and machine: {timing_path}')
  return lines
