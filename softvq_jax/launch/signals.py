"""Ctrl-C and SIGTERM in a launcher: one way to stop, never mid-save.

* SIGTERM, which schedulers (SLURM, Kubernetes) send before they kill, is
  raised as ``Terminated``, a ``KeyboardInterrupt``: a run stops the way it
  stops on Ctrl-C (pending checkpoints finish first, one line), with its
  own exit status (``softvq_jax.launch.cli``). ``install`` sets this up; only the
  launchers call it, never the library.
* ``deferred()`` holds SIGINT and SIGTERM back for the length of a block
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

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


_received: List[int] = []  # The signals the installed handlers have taken.


def _error(signum: int) -> KeyboardInterrupt:
  if signum == signal.SIGTERM:
    return Terminated("stopped by SIGTERM")
  return KeyboardInterrupt("stopped by Ctrl-C")


def _handler(signum, frame):
  del frame
  _received.append(signum)
  raise _error(signum)


def _record(signum, frame):
  del frame
  _received.append(signum)


def install(record_only: bool = False) -> None:
  """Raises ``KeyboardInterrupt`` on SIGINT and ``Terminated`` on SIGTERM,
  and records them for ``check()`` (main thread only, as every handler).
  ``record_only``: records them and raises nothing, for while C extensions
  initialise (an exception inside one can leave it half-made, and crash the
  interpreter later); ``check()`` raises them afterwards. A SIGINT that the
  parent shell ignores (a background job) stays ignored."""
  handler = _record if record_only else _handler
  if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, handler)
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
  """Defers SIGINT and SIGTERM to the end of the block, then re-delivers
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
