"""SIGTERM and Ctrl-C as a clean stop: a flag the training loop polls.

The loop finishes the current step, saves a checkpoint of it and exits (main's status
128 + the signal: 143 for SIGTERM, 130 for Ctrl-C). A second Ctrl-C aborts at once
(Python's KeyboardInterrupt).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("mambaswelu_jax.training.stop_signals")


class StopSignals:
  """SIGTERM or Ctrl-C (SIGINT) -> a flag the loop polls; the loop saves and exits
  cleanly. A second Ctrl-C aborts at once (Python's KeyboardInterrupt).

  Only for one process: across processes every one must stop at the same step, so
  there JAX's own preemption notifier (set up by jax.distributed) catches SIGTERM and
  the loop asks Orbax's `reached_preemption`, a synchronised decision.
  """

  def __init__(self, install: bool = True):
    self.signal = None
    self._old = {}
    self._install = install

  def __enter__(self):
    if self._install and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.signal is None:
      self.signal = signum
    if signum == signal.SIGINT:  # the next Ctrl-C is Python's own: abort at once
      signal.signal(signal.SIGINT, signal.default_int_handler)
      log.warning("Ctrl-C: saving a checkpoint of the current step and stopping (Ctrl-C "
                  "again aborts at once, losing the steps since the last checkpoint)")
    else:
      log.warning("received signal %d: saving a checkpoint and stopping", signum)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False


def signal_name(signum: int) -> str:
  return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
