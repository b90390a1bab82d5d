"""The offline quickstart: digits teacher -> distillation 64 -> 1 step -> evaluation.

  python main.py --config=configs/digits.py --workdir=/tmp/digits

Runs on a laptop CPU with no download (the digits ship with scikit-learn).
Measured on a 2-core x86_64 VM: 22.6 minutes in all (teacher 548 s, six
rounds of about 100 s each, evaluation about 3.5 minutes).
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
