"""One launcher at a time trains in a workdir.

The lock is an ``flock`` on ``WORKDIR/.lock``, which names its holder
(host, pid); the kernel releases it when the holder dies, so a killed run
never blocks a rerun.
"""

import contextlib
import datetime
import fcntl
import os
import socket
from typing import Iterator, Sequence

from softvq_jax.errors import InputError

LOCK_FILE = ".lock"


class Locked(InputError):
  """Another live launcher holds the workdir."""


@contextlib.contextmanager
def _lock_one(workdir: str) -> Iterator[None]:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    # O_NOFOLLOW: a planted symlink (a shared /tmp) must not get its target truncated.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
  except OSError as e:
    raise InputError(f"{path} cannot be the workdir's lock ({os.strerror(e.errno)}: "
                     "a symlink?); move it away, or use a new --workdir") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
      raise Locked(f"workdir {workdir} is in use by {holder}; wait for it to end, or "
                   "use another --workdir") from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} "
                 f"(since {started})\n".encode())
    yield
  finally:
    os.close(fd)  # Releases the flock.


@contextlib.contextmanager
def lock(workdirs: Sequence[str], enabled: bool = True) -> Iterator[None]:
  """Holds the lock of every workdir in ``workdirs`` (``enabled``: process 0
  of a multi-process run locks for all).

  Raises:
    Locked: another live process holds one of them (nothing but the lock
      files is written).
  """
  with contextlib.ExitStack() as stack:
    for workdir in workdirs if enabled else ():
      stack.enter_context(_lock_one(workdir))
    yield
