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
                  '--coordinator_address and --num_processes.')
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


def _fail(message, code):
  """One line on stderr, and the exit code; the traceback only with -v 1."""
  if logging.get_verbosity() >= logging.DEBUG:
    raise  # pylint: disable=misplaced-bare-raise
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  # Imported here so that --help stays fast and flag errors come first.
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  # tf.data only feeds the input pipeline: keep TensorFlow off accelerators.
  tf.config.set_visible_devices([], 'GPU')
  if FLAGS.multihost or FLAGS.coordinator_address or FLAGS.num_processes:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)

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
