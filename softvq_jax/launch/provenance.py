"""What made a result: the package versions and the device.

XLA's floats differ between versions and thread layouts, so every result
file records ``environment()`` beside its numbers (``eval.json``,
``timing.json``, a sweep's tables, the benchmarks' output), and
``constraints.txt`` pins the versions of the published ones.
"""

import importlib.metadata
import platform
from typing import Dict, Optional

import jax

# The packages whose versions can move a published number.
PACKAGES = ("jax", "jaxlib", "flax", "optax")


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def environment() -> Dict[str, object]:
  """``versions`` of ``PACKAGES`` and Python, and ``device``: the device count
  and kind of this process's backend, e.g. ``"1 x cpu"``."""
  versions = {name: _version(name) for name in PACKAGES}
  versions["python"] = platform.python_version()
  return {"versions": versions,
          "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


def describe(environment_: Dict[str, object]) -> str:
  """One line of ``environment()`` for a table's caption."""
  versions = ", ".join(f"{k} {v}" for k, v in environment_["versions"].items())
  return f"{versions}; {environment_['device']}"
