"""Parts of a long measurement, each a child process with a time budget,
whose JSON lines reach one output file as they come (``gpu_check.py``)."""

import dataclasses
import json
import os
import signal
import subprocess
import time
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Part:
  """A part: the command of its child process, from the repository's root."""
  name: str
  argv: List[str]


class Output:
  """``--out``, one JSON line at a time, flushed as it comes."""

  def __init__(self, path: str):
    self.file = open(path, "a")

  def write(self, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    self.file.write(line + "\n")
    self.file.flush()


def run_part(part: Part, budget: float, out: Output) -> str:
  """Runs ``part`` for at most ``budget`` seconds, passing its JSON lines to
  ``out`` with ``"part"``; its status."""
  t0, tail = time.time(), []
  process = subprocess.Popen(part.argv, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
  deadline = t0 + budget
  status = None
  os.set_blocking(process.stdout.fileno(), False)
  while status is None:
    line = process.stdout.readline()
    if line:
      if line.startswith("{"):
        try:
          out.write({"part": part.name, **json.loads(line)})
          continue
        except ValueError:
          pass
      tail = (tail + [line.rstrip()])[-5:]
    elif process.poll() is not None:
      status = "done" if process.returncode == 0 else f"failed ({process.returncode})"
    elif time.time() > deadline:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
      status = "cut"
    else:
      time.sleep(0.05)
  out.write({"part": part.name, "status": status, "seconds": round(time.time() - t0, 1),
             "budget": budget, "tail": tail})
  return status
