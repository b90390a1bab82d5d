"""Entry point: parses flags and hands the config to train_and_evaluate.

  python main.py --config=configs/digits.py --workdir=/tmp/digits
  python main.py --config=configs/cifar10_distill.py --workdir=DIR \
      --config.distill.teacher_checkpoint=PATH

Re-running the same command resumes from the workdir.
"""

import logging as pylogging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/digits.py.', lock_config=True)
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


class _QuietOrbax(pylogging.Filter):
  """Drops Orbax's per-save INFO chatter, keeping its warnings and errors."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or (
        '/orbax/' not in record.pathname)


def _exit(message, code):
  """One line on stderr, and the exit code."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def _fail(message, code):
  """`_exit` while handling an exception; its traceback only with -v 1."""
  if logging.get_verbosity() >= logging.DEBUG:
    raise  # pylint: disable=misplaced-bare-raise
  _exit(message, code)


def _join_processes(initialize):
  """jax.distributed.initialize with the flags; a mistake is one line."""
  n, i = FLAGS.num_processes, FLAGS.process_id
  if n is not None and n < 1:
    _exit(f'--num_processes={n} is invalid: must be at least 1', 2)
  address = FLAGS.coordinator_address
  if address is not None:
    host, _, port = address.rpartition(':')
    if not (host and port.isdigit() and 0 < int(port) < 65536):
      _exit(f'--coordinator_address={address} is invalid: give HOST:PORT of '
            'process 0, e.g. 10.0.0.2:8476, with a port in 1..65535', 2)
  if n is not None and i is not None and not 0 <= i < n:
    _exit(f'--process_id={i} is invalid: must be in 0..{n - 1} for '
          f'--num_processes={n}', 2)
  try:
    initialize(coordinator_address=FLAGS.coordinator_address,
               num_processes=n, process_id=i)
  except ValueError as e:
    # What JAX could neither read from the flags nor detect.
    _fail(f'--multihost cannot tell which processes to join '
          f'({str(e).rstrip(".")}): on a TPU '
          'VM or in a SLURM job this is detected; elsewhere give '
          '--coordinator_address=HOST:PORT, --num_processes=N and '
          '--process_id=I on every process', 2)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    _fail(f'cannot join the other processes through '
          f'{FLAGS.coordinator_address or "the detected coordinator"}: '
          f'{type(e).__name__}: {first}; check that process 0 runs and that '
          'its address and port are reachable from this host', 1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  # Imported here so that --help stays fast and flag errors come first.
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  # tf.data only feeds the input pipeline: keep TensorFlow off accelerators.
  tf.config.set_visible_devices([], 'GPU')
  if (FLAGS.multihost or FLAGS.coordinator_address
      or FLAGS.num_processes is not None or FLAGS.process_id is not None):
    _join_processes(jax.distributed.initialize)

  from diffusion_distill import checkpoints  # pylint: disable=g-import-not-at-top
  from diffusion_distill import input_pipeline  # pylint: disable=g-import-not-at-top
  from diffusion_distill import preemption  # pylint: disable=g-import-not-at-top
  from diffusion_distill import train  # pylint: disable=g-import-not-at-top
  from diffusion_distill import trainer  # pylint: disable=g-import-not-at-top
  from diffusion_distill import validation  # pylint: disable=g-import-not-at-top

  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  preemption.install_handler()
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except preemption.Preempted as e:
    # A clean stop: the scheduler restarts the same command, which resumes.
    logging.warning('%s', e)
    print(f'preempted: {e}', file=sys.stderr)
    sys.exit(0)
  except validation.ConfigError as e:
    _fail(e, 2)
  except (input_pipeline.DataNotFoundError, input_pipeline.NonFiniteDataError,
          checkpoints.CheckpointError, trainer.NonFiniteError,
          FileNotFoundError) as e:
    _fail(e, 1)


if __name__ == '__main__':
  app.run(main)
