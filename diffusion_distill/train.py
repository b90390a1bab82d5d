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
from diffusion_distill import preflight
from diffusion_distill import teacher as teacher_lib
from diffusion_distill import teacher_stage
from diffusion_distill import trainer
from diffusion_distill import layout


def train_and_evaluate(config, workdir, plan=None):
  """Runs the stages of `config.stages` in order; each resumes where it stopped.

  `plan` is preflight.check's result when the caller ran it already.
  """
  plan = plan or preflight.check(config, workdir)
  if jax.process_index() == 0:
    layout.write_config(workdir, config)
  teacher = plan.teacher
  for stage in plan.stages:
    if stage == 'teacher':
      trainer.run_stage(teacher_stage.teacher_stage(config, workdir))
      continue
    if teacher is None and teacher_lib.exists(config, workdir):
      # Trained by this run: checked and loaded once, for both stages.
      teacher = teacher_lib.resolve(config, workdir)
    if stage == 'distill':
      distill.distill(config, workdir, teacher)
    elif stage == 'eval':
      evaluate.evaluate(config, workdir, teacher)
