"""Runs main.py (same arguments) and SIGKILLs itself at a chosen point.

  DD_FAULT=step:teacher:3 python tests/fault_runner.py --config=... --workdir=...

The point is the environment variable DD_FAULT, one of:

  step:STAGE:K      after step K of the stage named STAGE (its step_hook runs
                    after the step's checkpoint, if one was due)
  save:SUFFIX       in the middle of the checkpoint write whose final directory
                    ends with SUFFIX (e.g. teacher/checkpoints/4): its files
                    are written, Orbax's atomic rename has not happened yet
  between:STAGE     once the stage named STAGE has returned, before the next
                    one is built (e.g. between two distillation rounds)
  timer:SECONDS     SECONDS after the first stage started (imports done),
                    wherever the run is then
  fsize:BYTES       no kill: every write past BYTES in a file fails (EFBIG),
                    as on a full disk (RLIMIT_FSIZE, SIGXFSZ ignored)

No DD_FAULT (or an empty one): plain main.py. Stage names are trainer.Stage
names ('teacher', 'distill to 2 steps'). Used by tests/test_faults.py.
"""

import os
import runpy
import signal
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _die(where):
  print(f'fault_runner: SIGKILL {where}', file=sys.stderr, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


def _install(fault):
  kind, _, arg = fault.partition(':')
  if kind == 'timer':
    from diffusion_distill import trainer  # pylint: disable=g-import-not-at-top
    run_stage = trainer.run_stage
    timer = threading.Timer(float(arg), _die, args=(f'after {arg} s',))
    timer.daemon = True

    def timed_run_stage(stage):
      if timer.ident is None:  # Not started yet.
        timer.start()
      return run_stage(stage)

    trainer.run_stage = timed_run_stage
    return
  if kind == 'fsize':
    import resource  # pylint: disable=g-import-not-at-top
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), hard))
    return
  if kind == 'save':
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def killing_finalize(self, *args, **kwargs):
      final = os.fspath(self.get_final())
      if final.endswith(os.sep + arg.strip(os.sep)):
        _die(f'before the rename of {self.get()} to {final}')
      return await finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
    return
  if kind in ('step', 'between'):
    from diffusion_distill import trainer  # pylint: disable=g-import-not-at-top
    run_stage = trainer.run_stage
    if kind == 'step':
      name, _, k = arg.rpartition(':')
      k = int(k)

    def killing_run_stage(stage):
      if kind == 'step' and stage.name == name:
        previous = stage.step_hook

        def hook(step):
          if previous is not None:
            previous(step)
          if step == k:
            _die(f'after step {step} of {stage.name}')

        stage.step_hook = hook
      out = run_stage(stage)
      if kind == 'between' and stage.name == arg:
        _die(f'after {stage.name} returned')
      return out

    trainer.run_stage = killing_run_stage
    return
  raise SystemExit(f'fault_runner: unknown DD_FAULT={fault!r}')


def main():
  sys.path.insert(0, REPO)
  fault = os.environ.get('DD_FAULT', '')
  if fault:
    _install(fault)
  sys.argv = [os.path.join(REPO, 'main.py')] + sys.argv[1:]
  runpy.run_path(sys.argv[0], run_name='__main__')


if __name__ == '__main__':
  main()
