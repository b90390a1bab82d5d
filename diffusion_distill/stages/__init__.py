"""The registry of the stages that plug in by name.

Each entry is a module that declares, in one place, its config section
(SECTION, RANGES, check, FROZEN), its teacher (check_teacher: it distils
the run's teacher, resolved like the rounds'), its directories in the
workdir (student_dir, resume_dirs), its plan (phase_plan, flops_line) and
how it runs (run). The driver (train.py), the checks (config_checks,
preflight) and, through the layout's WORKDIR/STAGE/student_NNNNN,
evaluation and sample.py find a registered stage here; none of them names
it. The teacher, 'guide', the progressive rounds ('distill') and 'eval'
are not registered yet: config_checks.STAGES places them around these.
"""

from diffusion_distill.stages import consistency

REGISTRY = {consistency.NAME: consistency}
