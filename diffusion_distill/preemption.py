"""Preemption: on SIGTERM, save at the next step and stop, on every process.

TPU VM maintenance and Spot GPUs send SIGTERM and give a grace period. The
training loop asks `requested()` after every step; when it says yes, the
loop saves a checkpoint and raises `Preempted`, and main.py exits 0. The same
command then resumes from that checkpoint.

With one process a Python SIGTERM handler sets a flag (`install_handler`).
With several (`jax.distributed` initialized), JAX's coordination service
owns SIGTERM: it tells every process, and
`multihost_utils.reached_preemption_sync_point` says yes on all of them at
the same step, so that they save the same step together.
"""

import itertools
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
  """The run was asked to stop (SIGTERM) and saved what it had."""


_received = threading.Event()
# One id per call, increasing across stages, the same sequence on every
# process (the sync point needs increasing ids).
_calls = itertools.count()


def _on_sigterm(signum, frame):
  del signum, frame
  logging.warning('SIGTERM received: saving at the next step, then exiting.')
  _received.set()


def install_handler():
  """Catches SIGTERM in a single-process run (call from the main thread).

  With several processes this leaves SIGTERM to JAX's preemption notifier,
  which a Python handler would replace.
  """
  if jax.process_count() == 1:
    signal.signal(signal.SIGTERM, _on_sigterm)


def requested() -> bool:
  """Whether to save and stop now; call it at the same points on all processes."""
  call = next(_calls)
  if jax.process_count() > 1:
    return multihost_utils.reached_preemption_sync_point(call)
  return _received.is_set()


def reset():
  """Forgets a received SIGTERM (tests run several stages in one process)."""
  _received.clear()
