"""What a launcher shows on the terminal: its own lines, not the libraries'.

The launchers (``softvq_jax.main``, ``softvq_jax.sweep``) print this
package's log lines and, at the end, one line (``softvq_jax.launch.cli``). What
Python libraries print on their way (orbax's and asyncio's tracebacks from
background threads, their warnings, thousands of them after a damaged
checkpoint) is kept off the terminal:

* ``capture()`` points ``sys.stderr``, which those tracebacks, warnings and
  log records are written to, at an anonymous temporary file; the terminal
  is reached through ``stream()`` alone, where absl's handler writes the
  records logged from this package. File descriptor 2 is left alone: what
  the runtime itself writes there (XLA's fatal errors, "another task died",
  a crash report) stays on the terminal, since no line of ours follows it.
* ``save(workdir)`` appends what was captured to ``WORKDIR/library.log``
  (where the workdir is a directory already) and returns that path, so
  that the last line can name it.

Without ``capture()`` (tests, library use) nothing changes: ``stream()`` is
``sys.stderr`` and every record reaches it.
"""

import logging as std_logging
import os
import sys
import tempfile
from typing import IO, Optional

from absl import logging

LOG_FILE = "library.log"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CHUNK = 1 << 20
_captured: dict = {}  # "terminal": the real stderr; "file": the capture.


def ours(record: std_logging.LogRecord) -> bool:
  """A record logged by this package (absl names every record "absl")."""
  return os.path.abspath(record.pathname).startswith(_PACKAGE + os.sep)


def stream() -> IO[str]:
  """The terminal's stderr (``sys.stderr`` unless ``capture()`` ran)."""
  return _captured.get("terminal", sys.stderr)


def capture() -> None:
  """Sends ``sys.stderr`` to a temporary file, this package's log to the terminal."""
  terminal = sys.stderr
  terminal.flush()
  capture_file = tempfile.TemporaryFile()
  sys.stderr = open(capture_file.fileno(), "w", buffering=1, encoding="utf-8",
                    errors="replace", closefd=False)
  _captured.update(terminal=terminal, file=capture_file)
  absl_handler = logging.get_absl_handler().python_handler
  absl_handler.stream = terminal
  absl_handler.addFilter(ours)
  root = std_logging.getLogger()
  for handler in list(root.handlers):  # A library's logging.basicConfig, say.
    if isinstance(handler, std_logging.StreamHandler) and handler.stream is terminal:
      root.removeHandler(handler)
  library = std_logging.StreamHandler(sys.stderr)
  library.setLevel(std_logging.WARNING)
  library.setFormatter(absl_handler.formatter)
  library.addFilter(lambda record: not ours(record))
  root.addHandler(library)


def save(workdir: Optional[str]) -> Optional[str]:
  """Appends the captured output to ``WORKDIR/library.log``; its path, or
  None when nothing was captured or the workdir is not a directory."""
  capture_file = _captured.get("file")
  if capture_file is None or not workdir:
    return None
  sys.stderr.flush()
  size = os.fstat(capture_file.fileno()).st_size
  if not size or not os.path.isdir(workdir) or os.path.islink(workdir):
    return None
  path = os.path.join(workdir, LOG_FILE)
  try:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    with os.fdopen(fd, "ab") as out:
      # pread: sys.stderr shares the capture's offset, which must not move.
      for offset in range(0, size, _CHUNK):
        out.write(os.pread(capture_file.fileno(), _CHUNK, offset))
  except OSError:
    return None  # A full or read-only disk: the line is what matters.
  return path
