"""Entry point: parses flags, checks everything, hands over to train_and_evaluate.

  python main.py --config=configs/digits.py --workdir=/tmp/digits
  python main.py --config=configs/cifar10_distill.py --workdir=DIR \
      --config.distill.teacher_checkpoint=PATH
  python main.py --config=configs/cifar10_distill.py --workdir=DIR --check

Re-running the same command resumes from the workdir. A mistake (a config
value, a missing checkpoint or data set) stops the run before any work with
one `error:` line: exit code 2 for the command line and config, 1 for what
is missing or broken on disk.
"""

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from configs import base
from diffusion_distill import cli

FLAGS = flags.FLAGS
log = logging.getLogger('diffusion_distill.main')

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/digits.py.', lock_config=True)
flags.DEFINE_bool('check', False,
                  'Run every check that needs no training (config, devices, '
                  'workdir, Inception weights, data, teacher checkpoint), '
                  'print the plan and exit: 0, or 2 with the error. Writes '
                  'nothing.')
flags.DEFINE_bool('check_local', False,
                  'Like --check, without what only the machine that runs the '
                  'work can check (devices, workdir, weights, data, '
                  'checkpoints): what the launchers run before they create '
                  'anything. Joins no other process.')
flags.DEFINE_integer('device_count', None,
                     'With --check_local: check that the batches divide over '
                     'this many devices, those of the accelerator the run '
                     'will have (the launchers pass it).')
flags.DEFINE_integer('local_device_count', None,
                     'With --device_count: the devices of one host, which '
                     'the evaluation batch must divide over.')
flags.DEFINE_bool('allow_cpu', False,
                  'Run a config whose data set is not digits on a JAX without '
                  'TPU or GPU (e.g. tests on mock data).')
flags.DEFINE_bool('multihost', False,
                  'Multi-host: call jax.distributed.initialize(), which '
                  'detects the processes on TPU VMs and SLURM. Implied by '
                  '--coordinator_address, --num_processes and --process_id.')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-host: host:port of process 0 (auto-detected on TPU '
                    'VMs and SLURM when left out).')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def _join_processes(initialize):
  """jax.distributed.initialize with the flags; a mistake is one line."""
  n, i = FLAGS.num_processes, FLAGS.process_id
  if n is not None and n < 1:
    cli.exit_with(f'--num_processes={n} is invalid: must be at least 1', 2)
  address = FLAGS.coordinator_address
  if address is not None:
    host, _, port = address.rpartition(':')
    if not (host and port.isdigit() and 0 < int(port) < 65536):
      cli.exit_with(f'--coordinator_address={address} is invalid: give '
                    'HOST:PORT of process 0, e.g. 10.0.0.2:8476, with a port '
                    'in 1..65535', 2)
  if n is not None and i is not None and not 0 <= i < n:
    cli.exit_with(f'--process_id={i} is invalid: must be in 0..{n - 1} for '
                  f'--num_processes={n}', 2)
  try:
    initialize(coordinator_address=FLAGS.coordinator_address,
               num_processes=n, process_id=i)
  except ValueError as e:
    # What JAX could neither read from the flags nor detect.
    cli.fail(f'--multihost cannot tell which processes to join '
             f'({str(e).rstrip(".")}): on a TPU '
             'VM or in a SLURM job this is detected; elsewhere give '
             '--coordinator_address=HOST:PORT, --num_processes=N and '
             '--process_id=I on every process', 2)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    cli.fail(f'cannot join the other processes through '
             f'{FLAGS.coordinator_address or "the detected coordinator"}: '
             f'{type(e).__name__}: {first}; check that process 0 runs and '
             'that its address and port are reachable from this host', 1)


def _wants_processes():
  return (FLAGS.multihost or FLAGS.coordinator_address
          or FLAGS.num_processes is not None or FLAGS.process_id is not None)


def _check_device_counts():
  for name in ('device_count', 'local_device_count'):
    n = FLAGS[name].value
    if n is not None and n < 1:
      cli.exit_with(f'--{name}={n} is invalid: must be at least 1', 2)
  if FLAGS.device_count is not None and not FLAGS.check_local:
    cli.exit_with('--device_count is for --check_local (the launchers\' '
                  'check): a run counts its own devices', 2)
  if FLAGS.local_device_count is not None and FLAGS.device_count is None:
    cli.exit_with('--local_device_count needs --device_count', 2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.configure_logging()
  _check_device_counts()
  config, workdir = FLAGS.config, FLAGS.workdir
  cli.check_known_fields(config, base.get_config(), sys.argv)
  # Imported after configure_logging, which must precede TensorFlow's import.
  import jax  # pylint: disable=g-import-not-at-top
  from diffusion_distill import checkpoints  # pylint: disable=g-import-not-at-top
  from diffusion_distill import config_checks  # pylint: disable=g-import-not-at-top
  from diffusion_distill import input_pipeline  # pylint: disable=g-import-not-at-top
  from diffusion_distill import preemption  # pylint: disable=g-import-not-at-top
  from diffusion_distill import preflight  # pylint: disable=g-import-not-at-top
  from diffusion_distill import train  # pylint: disable=g-import-not-at-top
  from diffusion_distill import trainer  # pylint: disable=g-import-not-at-top

  check_only = FLAGS.check or FLAGS.check_local
  if not FLAGS.check_local:
    if _wants_processes():
      _join_processes(jax.distributed.initialize)
    log.info('%s', preflight.devices_line())
    preemption.install_handler()
  try:
    if not FLAGS.check_local:
      preflight.check_backend(config, FLAGS.allow_cpu)
    plan = preflight.check(config, workdir, target=not FLAGS.check_local)
    if FLAGS.device_count is not None:
      config_checks.check_batch_divides(config, FLAGS.device_count,
                                        FLAGS.local_device_count)
    if check_only:
      print(preflight.describe(config, workdir, plan))
      return
    train.train_and_evaluate(config, workdir, plan)
  except preemption.Preempted as e:
    # A clean stop: the scheduler restarts the same command, which resumes.
    print(f'preempted: {e}', file=sys.stderr)
    sys.exit(0)
  except config_checks.ConfigError as e:
    cli.fail(e, 2)
  except (input_pipeline.DataNotFoundError, input_pipeline.NonFiniteDataError,
          input_pipeline.BadImagesError, checkpoints.CheckpointError, trainer.NonFiniteError,
          FileNotFoundError) as e:
    cli.fail(e, 2 if check_only else 1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
