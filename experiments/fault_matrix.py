"""Every fault of the reliability work, run against the real launchers.

  python experiments/fault_matrix.py --out=experiments/results/fault_matrix

Each case starts ``python -m softvq_jax.main`` (or ``.sweep``) on short
digits runs as a user would, breaks something (a flag, a file, the disk, a
signal at a chosen moment), and checks what the command promises
(``softvq_jax.cli``): the exit status, one last line that says what
happened, no line on stderr but the launcher's own log and that last line,
and where it matters what is on disk afterwards (an identical eval.json,
nothing written, no half-written checkpoint). It writes ``OUT.md`` and
``OUT.json``: case, exit status, stderr lines (and how many are foreign:
neither the launcher's log nor its last line), the last line and the
verdict. ``--only=a,b`` runs some cases. The full-disk cases mount a small
tmpfs, which needs root; without it they report ``skipped``.
"""

import dataclasses
import http.server
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from absl import app
from absl import flags

import fault_cases  # experiments/fault_cases.py, beside this script.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "mnist")

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "experiments/results/fault_matrix", "Path prefix of the table.")
flags.DEFINE_list("only", [], "Run only these cases.")

# One absl log line of the launcher: "I1202 16:13:58.972183 140357 train.py:309] ...".
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ")


@dataclasses.dataclass
class Outcome:
  """What a launch did: its status, stderr and how long it took."""
  status: int
  stderr: str
  seconds: float

  @property
  def lines(self) -> List[str]:
    return [line for line in self.stderr.splitlines() if line.strip()]

  @property
  def last(self) -> str:
    return self.lines[-1] if self.lines else ""

  @property
  def foreign(self) -> int:
    """Lines that are neither the launcher's log nor its last line."""
    return sum(not ABSL_LINE.match(line) for line in self.lines[:-1])


def _default_sigint():
  """A child started from a background shell inherits an ignored SIGINT."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(args: Sequence[str], *, module: str = "softvq_jax.main",
           trigger: Optional[Callable[[], bool]] = None, send: int = signal.SIGINT,
           delay: float = 0.0, timeout: float = 600.0,
           prefix: Sequence[str] = ()) -> Outcome:
  """Runs a launcher; sends ``send`` ``delay`` seconds after ``trigger()``
  first holds (polled every 5 ms)."""
  t0 = time.time()
  with tempfile.TemporaryFile() as err:
    process = subprocess.Popen([*prefix, sys.executable, "-m", module, *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=err,
                               preexec_fn=_default_sigint)
    if trigger is not None:
      while process.poll() is None and not trigger():
        time.sleep(0.005)
      time.sleep(delay)
      if process.poll() is None:
        process.send_signal(send)
    try:
      status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      status = process.wait()
    err.seek(0)
    return Outcome(status, err.read().decode(errors="replace"), time.time() - t0)


class MirrorServer:
  """Serves MNIST's official files on 127.0.0.1 as a mirror: ``/ok/`` whole,
  ``/long/`` with 200 MiB more than the file, ``/loop/`` redirecting to itself."""

  def __init__(self, directory: str):
    files = {name: open(os.path.join(directory, name), "rb").read()
             for name in os.listdir(directory) if name.endswith(".gz")}

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        pass

      def do_GET(self):  # pylint: disable=invalid-name
        _, mode, name = self.path.split("/", 2)
        if mode == "loop":
          self.send_response(302)
          self.send_header("Location", self.path)
          self.end_headers()
          return
        body = files.get(name)
        if body is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.end_headers()
        try:
          self.wfile.write(body)
          if mode == "long":
            for _ in range(200):
              self.wfile.write(bytes(1 << 20))
        except (BrokenPipeError, ConnectionResetError):
          pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@dataclasses.dataclass
class Context:
  """What the cases share: a scratch folder, the reference run, the mirror."""
  scratch: str
  mirror: MirrorServer
  reference: Dict[str, bytes] = dataclasses.field(default_factory=dict)

  def path(self, *parts: str) -> str:
    return os.path.join(self.scratch, *parts)


def _versions() -> Dict[str, str]:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  return {name: importlib.metadata.version(name)
          for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")}


def write_table(rows: List[dict], prefix: str, seconds: float) -> None:
  held = sum(row["verdict"] == "holds" for row in rows)
  lines = [f"# Fault matrix: {held} of {len(rows)} cases hold", "",
           "Command: `python experiments/fault_matrix.py`. Device: "
           f"{platform.machine()} CPU, {os.cpu_count()} cores; "
           f"{', '.join(f'{k} {v}' for k, v in _versions().items())}; "
           f"{seconds:.0f} s in all.", "",
           "| case | expects | exit | stderr lines (foreign) | last line | verdict |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    last = row["last_line"].replace("|", "\\|")
    last = last if len(last) <= 160 else last[:157] + "..."
    lines.append(f"| {row['case']} | {row['expects']} | {row['exit']} | "
                 f"{row['stderr_lines']} ({row['foreign_lines']}) | `{last}` | "
                 f"{row['verdict']} |")
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  with open(prefix + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(prefix + ".json", "w") as f:
    json.dump({"rows": rows, "versions": _versions(), "seconds": seconds}, f, indent=1)


def main(argv):
  del argv
  scratch = tempfile.mkdtemp(prefix="fault_matrix_")
  mirror = MirrorServer(MNIST)
  context = Context(scratch, mirror)
  rows, t0 = [], time.time()
  try:
    for case in fault_cases.CASES:
      if FLAGS.only and case.name not in FLAGS.only and case.name != "reference":
        continue
      row = fault_cases.run_case(case, context, launch)
      print(f"{row['verdict']:8s} {case.name}: exit {row['exit']}, {row['stderr_lines']} "
            f"lines ({row['foreign_lines']} foreign): {row['last_line'][:120]}", flush=True)
      rows.append(row)
  finally:
    mirror.close()
    fault_cases.unmount_all(context)
    shutil.rmtree(scratch, ignore_errors=True)
  write_table(rows, FLAGS.out, time.time() - t0)


if __name__ == "__main__":
  app.run(main)
