"""XLA compilation in the launchers: a persistent cache, and its cost.

* ``enable_cache`` points JAX's persistent compilation cache at
  ``~/.cache/softvq_jax/jax`` (``$XDG_CACHE_HOME`` honoured) unless the user
  chose one (``JAX_COMPILATION_CACHE_DIR``), and caches every program
  whatever its compile time, so that a rerun, or a launch of the same
  shapes, loads its programs instead of compiling them. A cache folder that
  cannot be made leaves the cache off. Only the launchers call it, never
  the library.
* ``Seconds`` adds up the backend compile time (or cache load time) that
  JAX reports in its thread while it is open: ``timing.json``'s
  ``compile_seconds`` (an evaluation compiling in a worker thread meanwhile
  is not counted).
"""

import os
import threading
from typing import Optional

import jax
from jax import monitoring

# JAX's event for one program's backend compile (or persistent-cache load).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "softvq_jax", "jax")


def enable_cache(directory: Optional[str] = None) -> Optional[str]:
  """Turns the persistent compilation cache on in ``directory``, else the one
  the user set, else ``default_cache_dir()``; the folder it uses, or None."""
  directory = directory or jax.config.jax_compilation_cache_dir or default_cache_dir()
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:
    return None
  if not os.access(directory, os.W_OK | os.X_OK):
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


class Seconds:
  """A context that adds up JAX's compile (or cache load) seconds within it,
  in the thread that opened it: ``with Seconds() as compile_time: ...;
  compile_time.total``."""

  def __init__(self):
    self.total, self._thread = 0.0, None

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event == COMPILE_EVENT and threading.get_ident() == self._thread:
      self.total += duration

  def __enter__(self) -> "Seconds":
    self._thread = threading.get_ident()
    monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    monitoring.unregister_event_duration_listener(self._listen)
