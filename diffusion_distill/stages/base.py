"""What several stages declare alike (stages/__init__.py lists the names).

A stage without a plan (the teacher, guide and evaluation: their length is
a config field) declares `phase_plan = base.no_plan` and `student_steps =
base.no_students`; one that reads no other file, `check_files =
base.no_files`; a stage of students in WORKDIR/NAME/student_NNNNN (the
rounds, consistency) finds them with student_resume_dirs and student_dirs.
"""

import os

from diffusion_distill import layout


def no_files(config):
  """A stage that reads no file besides the data and checkpoints."""
  del config


def no_plan(config, teacher_num_steps):
  """A stage whose length is a config field has no plan."""
  del config, teacher_num_steps


def no_students(plan):
  """A stage without a plan makes no students."""
  del plan
  return []


def student_resume_dirs(workdir, name, label):
  """[(label % steps, checkpoint dir, None)] of the students of stage `name`
  started in `workdir`; None: their length is the one their checkpoint
  recorded."""
  return [(label % n, d, None)
          for n, d in layout.round_checkpoint_dirs(workdir, name)]


def student_dirs(workdir, name):
  """The directories of the students of stage `name` in `workdir`."""
  return [os.path.dirname(d)
          for _, d in layout.round_checkpoint_dirs(workdir, name)]
