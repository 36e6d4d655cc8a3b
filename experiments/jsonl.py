"""The experiments' output: JSON lines printed as they come and, with
``--out``, written to a file at the end, whose last line is the versions and
device that made them (``{"environment": ...}``)."""

import json
from typing import Any, List, Mapping, Optional

from softvq_jax import provenance


def emit(lines: List[str], record: Mapping[str, Any], sort_keys: bool = False) -> None:
  """Prints ``record`` as one JSON line and keeps it in ``lines``."""
  lines.append(json.dumps(record, sort_keys=sort_keys))
  print(lines[-1], flush=True)


def write(lines: List[str], path: Optional[str]) -> None:
  """Writes ``lines`` and the environment record to ``path``; does nothing
  without a path."""
  if path:
    environment = json.dumps({"environment": provenance.environment()})
    with open(path, "w") as f:
      f.write("\n".join(lines + [environment]) + "\n")
