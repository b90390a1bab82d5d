"""The registry of the stages, in the order config.stages runs them.

Each stage is one module that declares, in one place:
  NAME            its name in config.stages, and its directory in a workdir
  SECTION         its config section (SECTION.batch_size divides over the
                  devices; over the local ones where LOCAL_BATCH)
  RANGES, check   its fields' ranges and the checks across them
  FROZEN          what a re-run may not change once it has started
  check_files     the files it reads besides data and checkpoints
  teacher_need    the teacher it needs (teacher.Need), None if it trains
                  from the data; check_sources checks it and the workdir
  phase_plan      its plan from the teacher's step count (None if it has
                  none); student_steps, the students the plan makes
                  (MAKES_STUDENTS)
  resume_dirs, directories
                  its checkpoints to resume and its sample-grid directories
  flops_line      its line of the --check plan
  run             how it runs, given its resolved teacher
The driver (train.py), the checks (config_checks, preflight) and the
layout's stage and student directories find the stages here; none of them
names a stage.
"""

from diffusion_distill.stages import consistency
from diffusion_distill.stages import distill
from diffusion_distill.stages import evaluate
from diffusion_distill.stages import guide
from diffusion_distill.stages import teacher

REGISTRY = {stage.NAME: stage for stage in
            (teacher, guide, distill, consistency, evaluate)}
