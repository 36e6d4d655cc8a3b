"""Ctrl-C, SIGTERM and SIGHUP in a launcher: one way to stop, never mid-save.

* SIGTERM, which schedulers (SLURM, Kubernetes, spot VMs) send before they
  kill, and SIGHUP (a closed terminal, a lost ssh session) are raised as
  ``Terminated``, a ``KeyboardInterrupt``: a run stops the way it stops on
  Ctrl-C (it saves the step it reached, pending checkpoints finish, one
  line), with its own exit status (``softvq_jax.launch.cli``). ``install``
  sets this up; only the launchers call it, never the library.
* ``deferred()`` holds these signals back for the length of a block
  (a checkpoint save, waiting for one) and delivers them when it ends, so
  that no checkpoint is left half-written by an interrupt.
* Python drops an exception raised where it cannot propagate (a garbage
  collector callback, such as jax's, or a ``__del__``): a Ctrl-C that lands
  there would be lost, and the run would finish with status 0. The
  handlers also record the signal, and ``check()``, called between steps
  and before results are written, raises it again.
"""

import contextlib
import signal
import sys
import threading
from typing import Iterator, List, Optional

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
  """SIGTERM or SIGHUP (``signum``), raised in the main thread like Ctrl-C's
  KeyboardInterrupt."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = signum


_received: List[int] = []  # The signals the installed handlers have taken.


def _error(signum: int) -> KeyboardInterrupt:
  if signum == signal.SIGINT:
    return KeyboardInterrupt("stopped by Ctrl-C")
  return Terminated(f"stopped by {signal.Signals(signum).name}", signum)


def restated(error: KeyboardInterrupt, message: str) -> KeyboardInterrupt:
  """``error`` (Ctrl-C or ``Terminated``, the same signal) with ``message``."""
  if isinstance(error, Terminated):
    return Terminated(message, error.signum)
  return type(error)(message)


def _handler(signum, frame):
  del frame
  _received.append(signum)
  raise _error(signum)


def _record(signum, frame):
  del frame
  _received.append(signum)


def install(record_only: bool = False) -> None:
  """Raises ``KeyboardInterrupt`` on SIGINT and ``Terminated`` on SIGTERM and
  SIGHUP, and records them for ``check()`` (main thread only, as every
  handler). ``record_only``: records them and raises nothing, for while C
  extensions initialise (an exception inside one can leave it half-made,
  and crash the interpreter later); ``check()`` raises them afterwards. A
  SIGINT that the parent shell ignores (a background job) and a SIGHUP that
  ``nohup`` ignores stay ignored."""
  handler = _record if record_only else _handler
  for sig in (signal.SIGINT, signal.SIGHUP):
    if signal.getsignal(sig) is not signal.SIG_IGN:
      signal.signal(sig, handler)
  signal.signal(signal.SIGTERM, handler)
  if sys.unraisablehook is not _unraisable:
    _unraisable.previous = sys.unraisablehook
    sys.unraisablehook = _unraisable


def _unraisable(unraisable) -> None:
  """Python's report of a dropped exception, without the dropped signals
  (``check()`` raises them again)."""
  if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _received):
    _unraisable.previous(unraisable)


def received() -> Optional[KeyboardInterrupt]:
  """The error of the first signal the handlers took, None if none."""
  return _error(_received[0]) if _received else None


def check() -> None:
  """Raises the first signal taken, in case its exception was dropped."""
  error = received()
  if error is not None:
    raise error


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """Defers SIGINT, SIGTERM and SIGHUP to the end of the block, then re-delivers
  the first that arrived to the handler that was in place before.

  A Python handler is called right there, so that its exception is raised
  at the block's end; a signal raised again would run that handler at some
  later bytecode, possibly inside a garbage-collector callback, where Python
  drops the exception. Other handlers (SIG_DFL, SIG_IGN) get the signal.
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
    if caught and callable(previous[caught[0]]):
      previous[caught[0]](caught[0], None)
    elif caught:
      signal.raise_signal(caught[0])
