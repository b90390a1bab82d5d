"""The offline quickstart: digits teacher -> distillation 16 -> 1 step -> evaluation.

  python main.py --config=configs/digits.py --workdir=/tmp/digits

Runs on a laptop CPU with no download (the digits ship with scikit-learn).
WORKDIR/timing.json records what each stage took; README.md and
BENCHMARKS.md give the measured time and table
(benchmarks/results/quickstart_digits.json).
Writes a sample grid for the teacher and for each round's student under
WORKDIR/teacher/samples and WORKDIR/distill/student_NNNNN/samples, then the
FD-digits table and plot (teacher DDIM/ancestral over step counts, each
student with DDIM and stochastic sampling) under WORKDIR/eval.
"""

from configs import digits_teacher


def get_config():
  config = digits_teacher.get_config()
  config.stages = ('teacher', 'distill', 'eval')
  return config
