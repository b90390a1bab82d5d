"""What made a result file: the commit, the date, the machine, the command.

Every JSON under benchmarks/results/ that a script here writes carries this
record, so that a figure quoted in README.md or BENCHMARKS.md leads back to
the code and the machine that measured it.
"""

import os
import platform
import shlex
import sys

from diffusion_distill import machine


def record(made_with: str) -> dict:
  """{commit, date, machine, command, made_with}: `made_with` says how the
  measured data came about (e.g. the main.py runs of a workdir); `command`
  is this script's own command line."""
  return {'commit': machine.commit(), 'date': machine.now(),
          'machine': f'{machine.cpu_model()}, {machine.cpu_cores()} cores, '
                     f'{platform.machine()}',
          'command': ' '.join(shlex.quote(a) for a in
                              ['python', '-m', _module()] + sys.argv[1:]),
          'made_with': made_with}


def _module():
  main = sys.modules.get('__main__')
  spec = getattr(main, '__spec__', None)
  return spec.name if spec is not None else os.path.basename(sys.argv[0])
