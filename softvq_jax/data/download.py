"""Downloads of official data files: verified, resumable, never half-written.

``fetch`` writes ``NAME.part`` next to the final file and renames it only
once its size and sha256 match. An interrupted download keeps its ``.part``,
which the next call resumes with an HTTP range request (or restarts, if the
server ignores ranges); a corrupt one is removed. So a file under its final
name is always complete and verified. Standard library only (urllib).
"""

import dataclasses
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request

from absl import logging

from softvq_jax.errors import InputError

PART_SUFFIX = ".part"
TIMEOUT_S = 60.0  # Seconds without a byte from the server before giving up.
_BLOCK = 1 << 16


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One file of a dataset's official distribution."""
  name: str  # File name on the server (below the base URL) and on disk.
  size: int  # Bytes.
  sha256: str  # Hex digest.


def digest_of(path: str, algorithm: str = "sha256") -> str:
  """The hex digest of a file, read in 1 MiB blocks."""
  digest = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


class Progress:
  """A one-line progress bar on stderr (a log line per 10% when it is not a
  terminal): bytes, rate and ETA."""

  def __init__(self, name: str, total: int, done: int):
    self.name, self.total, self.done, self.start_done = name, total, done, done
    self.t0 = self.last = time.time()
    self.tty = sys.stderr.isatty()
    self.logged_tenths = done * 10 // max(total, 1)

  def update(self, count: int) -> None:
    self.done += count
    now = time.time()
    tenths = self.done * 10 // max(self.total, 1)
    if self.tty and now - self.last < 0.1 and self.done < self.total:
      return
    if not self.tty and tenths == self.logged_tenths:
      return
    self.last, self.logged_tenths = now, tenths
    rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    line = (f"{self.name} {100 * self.done / self.total:3.0f}% "
            f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate / 1e6:.1f} MB/s "
            f"ETA {eta:.0f}s")
    if self.tty:
      width = 20
      filled = width * self.done // max(self.total, 1)
      sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}")
      sys.stderr.flush()
    else:
      logging.info("download %s", line)

  def close(self) -> None:
    if self.tty:
      sys.stderr.write("\n")


class _TooLong(Exception):
  """The server sent more bytes than the official file has."""


def _receive(url: str, part: str, remote: RemoteFile, timeout: float) -> None:
  """Appends the rest of ``url`` to ``part`` (all of it if the server ignores
  the range request)."""
  have = os.path.getsize(part) if os.path.exists(part) else 0
  headers = {"Range": f"bytes={have}-"} if have else {}
  with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                              timeout=timeout) as response:
    if have and response.status != 206:
      have = 0  # The server sends the whole file.
    progress = Progress(remote.name, remote.size, have)
    # O_NOFOLLOW: a planted symlink (a shared folder) must not get the bytes.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if have else os.O_TRUNC)
    with os.fdopen(os.open(part, flags, 0o666), "wb") as f:
      for block in iter(lambda: response.read(_BLOCK), b""):
        have += len(block)
        if have > remote.size:
          raise _TooLong()
        f.write(block)
        progress.update(len(block))
    progress.close()


def fetch(base_url: str, remote: RemoteFile, directory: str,
          timeout: float = TIMEOUT_S) -> str:
  """Downloads ``base_url/remote.name`` to ``directory/remote.name``.

  Returns:
    The path of the complete, verified file.

  Raises:
    InputError: a one-line reason (HTTP status, a cut or stalled connection,
      a wrong size or digest) and what a rerun does.
  """
  path = os.path.join(directory, remote.name)
  part = path + PART_SUFFIX
  url = base_url.rstrip("/") + "/" + remote.name
  if os.path.islink(part):
    raise InputError(f"{part} is a symlink (to {os.readlink(part)}); a download is never "
                     "written through one: remove it")
  if os.path.exists(path):
    return path  # Only a verified download is ever renamed to its final name.
  if os.path.exists(part) and os.path.getsize(part) > remote.size:
    os.remove(part)
  if not os.path.exists(part) or os.path.getsize(part) < remote.size:
    logging.info("downloading %s (%.1f MB) to %s", url, remote.size / 1e6, directory)
    try:
      _receive(url, part, remote, timeout)
    except _TooLong:
      os.remove(part)
      raise InputError(f"download of {url} sent more than the official {remote.size} "
                       "bytes; it is not the official file, so nothing was kept: check "
                       "config.data.download_url") from None
    except urllib.error.HTTPError as e:
      raise InputError(f"download of {url} failed: HTTP {e.code} {e.reason}; check "
                       "config.data.download_url") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
      reason = getattr(e, "reason", None) or e
      kept = os.path.getsize(part) if os.path.exists(part) else 0
      then = (f"{kept} of {remote.size} bytes are kept in {part}, and rerunning the same "
              "command resumes them" if kept else
              "nothing was written; check the network, or config.data.download_url")
      raise InputError(f"download of {url} failed ({type(e).__name__}: {reason}); "
                       + then) from None
  size = os.path.getsize(part)
  if size != remote.size:
    raise InputError(f"download of {url} ended early: {size} of {remote.size} bytes in "
                     f"{part}; rerunning the same command resumes it")
  digest = digest_of(part)
  if digest != remote.sha256:
    os.remove(part)
    raise InputError(f"download of {url} is corrupt: sha256 {digest}, expected "
                     f"{remote.sha256}; removed it, rerun to download it again")
  os.replace(part, path)
  return path
