"""train_and_evaluate: the stages of `config.stages`, in order, in a workdir.

  WORKDIR/config.json, WORKDIR/teacher/, WORKDIR/distill/student_NNNNN/,
  WORKDIR/eval/ (workdir.py has the whole layout)

Every check runs first (preflight.check); config.json is written only when
all have passed, so a rejected run leaves the workdir as it was. Each stage
resumes where it stopped.
"""

import jax

from diffusion_distill import distill
from diffusion_distill import evaluate
from diffusion_distill import guide_stage
from diffusion_distill import preflight
from diffusion_distill import teacher as teacher_lib
from diffusion_distill import teacher_stage
from diffusion_distill import trainer
from diffusion_distill import layout


class _Teachers:
  """Each stage's teacher, resolved once (one object for one checkpoint)."""

  def __init__(self, config, workdir, resolved):
    self.config, self.workdir = config, workdir
    self._by_stage = dict(resolved)

  def __call__(self, stage):
    if stage not in self._by_stage:
      teacher = None
      if stage != 'eval' or teacher_lib.exists(self.config, self.workdir,
                                               stage):
        teacher = teacher_lib.resolve(self.config, self.workdir, stage)
        for other in self._by_stage.values():
          if other is not None and other.checkpoint_dir and (
              other.checkpoint_dir == teacher.checkpoint_dir):
            teacher = other  # Its parameters are loaded once.
      self._by_stage[stage] = teacher
    return self._by_stage[stage]


def train_and_evaluate(config, workdir, plan=None):
  """Runs the stages of `config.stages` in order; each resumes where it stopped.

  `plan` is preflight.check's result when the caller ran it already.
  """
  plan = plan or preflight.check(config, workdir)
  if jax.process_index() == 0:
    layout.write_config(workdir, config)
  teachers = _Teachers(config, workdir, plan.teachers)
  for stage in plan.stages:
    if stage == 'teacher':
      trainer.run_stage(teacher_stage.teacher_stage(config, workdir))
    elif stage == 'guide':
      trainer.run_stage(guide_stage.guide_stage(config, workdir,
                                                teachers('guide')))
    elif stage == 'distill':
      distill.distill(config, workdir, teachers('distill'))
    elif stage == 'eval':
      evaluate.evaluate(config, workdir, teachers('eval'))
