"""The experiments' output: JSON lines printed as they come and, with
``--out``, written to a file at the end."""

import json
from typing import Any, List, Mapping, Optional


def emit(lines: List[str], record: Mapping[str, Any], sort_keys: bool = False) -> None:
  """Prints ``record`` as one JSON line and keeps it in ``lines``."""
  lines.append(json.dumps(record, sort_keys=sort_keys))
  print(lines[-1], flush=True)


def write(lines: List[str], path: Optional[str]) -> None:
  """Writes ``lines`` to ``path``; does nothing without a path."""
  if path:
    with open(path, "w") as f:
      f.write("\n".join(lines) + "\n")
