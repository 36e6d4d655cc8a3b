"""Ctrl-C and SIGTERM in a launcher: one way to stop, never mid-save.

* SIGTERM, which schedulers (SLURM, Kubernetes) send before they kill, is
  raised as ``Terminated``, a ``KeyboardInterrupt``: a run stops the way it
  stops on Ctrl-C (pending checkpoints finish first, one line), with its
  own exit status (``softvq_jax.cli``). ``install`` sets this up; only the
  launchers call it, never the library.
* ``deferred()`` holds SIGINT and SIGTERM back for the length of a block
  (a checkpoint save, waiting for one) and delivers them when it ends, so
  that no checkpoint is left half-written by an interrupt.
"""

import contextlib
import signal
import threading
from typing import Iterator, List

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated("stopped by SIGTERM")


def install() -> None:
  """Raises ``Terminated`` on SIGTERM (main thread only, as every handler)."""
  signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """Defers SIGINT and SIGTERM to the end of the block, then re-delivers
  the first that arrived to the handler that was in place before.

  Outside the main thread (where handlers cannot be set) it does nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught: List[int] = []
  previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
              for sig in _SIGNALS}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      # None: a handler set outside Python, which signal cannot reinstate.
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    if caught:
      signal.raise_signal(caught[0])
