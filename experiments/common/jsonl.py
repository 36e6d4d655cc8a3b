"""The experiments' output: JSON lines printed as they come and, with
``--out``, written to a file at the end, whose last line is the versions and
device that made them (``{"environment": ...}``); and those of a script run
by another Python (``run``)."""

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional

from softvq_jax.launch import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def run(python: str, module: str, *args: str) -> List[Dict[str, Any]]:
  """The JSON lines that ``module`` (``experiments.<group>.<script>``) prints when
  run by ``python -m`` with ``args`` from the repository's root: another
  virtualenv's Python for the torch halves (the project does not depend on
  torch). Its stderr is passed on.

  Raises:
    subprocess.CalledProcessError: the script failed (with its stderr).
  """
  result = subprocess.run([python, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, check=True)
  sys.stderr.write(result.stderr)
  return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
