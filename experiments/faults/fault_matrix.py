"""Every fault of the reliability work, run against the real launchers.

  python -m experiments.faults.fault_matrix --out=experiments/results/fault_matrix/fault_matrix

Each case starts ``python -m softvq_jax.main`` (or ``.sweep``) on short
digits runs as a user would, breaks something (a flag, a file, the disk, a
signal at a chosen moment), and checks what the command promises
(``softvq_jax.launch.cli``): the exit status, one last line that says what
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
import numpy as np

from experiments.faults import fault_cases as fc
from experiments.faults import run_cases as rc
from experiments.faults.fault_cases import Case

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "mnist")

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "experiments/results/fault_matrix/fault_matrix",
                    "Path prefix of the table.")
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
           "Command: `python -m experiments.faults.fault_matrix`. Device: "
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


I, S = r"^error: .*", 2  # The input-error line and status.
CASES = [
    Case("reference", 0, r"eval of seed 0", fc.reference),
    Case("sweep_overrides_a_preset_key", S, I + r"--config.model.bottleneck is set per row",
         fc.sweep_preset_override),
    Case("bit_flipped_checkpoint", 0, r"eval of seed 0", fc.bit_flipped_checkpoint),
    Case("truncated_checkpoint_without_manifest", 0, r"eval of seed 0",
         fc.truncated_checkpoint_no_manifest),
    Case("checkpoints_is_a_file", S, I + r".*checkpoints should be a directory",
         fc.checkpoints_a_file, 30),
    Case("checkpoints_read_only", S, I + r".*is not writable", fc.checkpoints_read_only, 30),
    *[Case(f"sigint_while_compiling_{i}_of_3", 130, r"^interrupted: stopped by Ctrl-C",
           fc.sigint_compiling) for i in (1, 2, 3)],
    Case("sigint_during_final_save", 130, r"^interrupted: .*checkpoint is at step 300",
         fc.sigint_final_save),
    Case("sigint_during_evaluation_then_rerun", 130,
         r"^interrupted: .*step 300 is kept: rerun the same command to evaluate",
         fc.sigint_evaluating_then_rerun),
    Case("sigterm_then_rerun", 143, r"^terminated: stopped by SIGTERM\. The last good",
         fc.signal_then_rerun("sigterm", signal.SIGTERM)),
    Case("sigkill_then_rerun", 0, r"eval of seed 0", fc.sigkill_then_rerun),
    Case("sigint_while_importing", 130, r"^interrupted: stopped by Ctrl-C", fc.sigint_importing),
    Case("full_disk_while_training", 1, I + r"saving a checkpoint .*No space left on device",
         fc.full_disk_training, 60),
    Case("full_disk_while_evaluating", 1, I + r"evaluation failed .*No space left on device"
         r".*step 300 is kept", fc.full_disk_evaluating, 60),
    Case("seed_2_32", S, I + r"config.seed=4294967296 is not valid",
         fc.refused("seed32", "--config.seed=4294967296"), 30),
    Case("seed_2_64", S, I + r"config.seed=18446744073709551616 is not valid",
         fc.refused("seed64", "--config.seed=18446744073709551616"), 30),
    Case("tsne_points_0", S, I + r"config.eval.tsne_points=0 is not valid",
         fc.refused("tsne0", "--config.eval.tsne_points=0", "--config.eval.figures=True"), 30),
    Case("eval_batch_1e9", S, I + r"the model needs at least",
         fc.refused("evalbatch", "--config.eval.batch_size=1000000000"), 30),
    Case("probe_batch_1e9", S, I + r"the model needs at least",
         fc.refused("probebatch", "--config.eval.probe_batch_size=1000000000"), 30),
    Case("codewords_2_31", S, I + r"config.model.num_codewords=2147483648 is not valid",
         fc.refused("k31", "--config.model.num_codewords=2147483648"), 30),
    Case("over_the_process_memory_limit", S, I + r"the model needs at least .* has 8\.0 GiB",
         fc.refused("limit", "--config.model.num_codewords=5000000",
                 prefix=("prlimit", f"--as={8 << 30}")), 30),
    Case("mnist_with_no_training_images", S, I + r"holds 0 training and 20 test images",
         fc.mnist_files_case("empty_mnist", train_images=np.zeros((0, 28, 28))), 30),
    Case("idx_header_overflow", S, I + r"data file corrupt: .*IDX header",
         fc.mnist_files_case("idx_overflow", header=bytes([0, 0, 8, 3]) + b"\xff" * 12), 30),
    Case("gzip_bomb", S, I + r"data file truncated or corrupt: .*its header says \(10, 28, 28",
         fc.mnist_files_case("gzip_bomb", header=bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big")
                          + (28).to_bytes(4, "big") * 2, bomb=True), 60),
    Case("cifar_random_bins_of_official_size", S, I + r"cannot be checked", fc.cifar_random_bins,
         60),
    Case("download_longer_than_official", S, I + r"sent more than the official 9912422",
         fc.download_case("long_download", "long"), 60),
    Case("download_redirect_loop", S, I + r"download of .* failed: HTTP 302 .*infinite loop",
         fc.download_case("loop_download", "loop"), 30),
    Case("planted_lock_symlink", S, I + r"\.lock should be a file, not a symlink",
         fc.planted_symlink("lock_link", "lock"), 30),
    Case("planted_part_symlink", S, I + r"\.part is a symlink",
         fc.planted_symlink("part_link", "part"), 30),
    Case("config_without_keys", S, I + r"the config has no key 'model'",
         fc.config_file_case("nokeys", "def get_config():\n  c = ml_collections.ConfigDict()\n"
                          "  c.seed = 0\n  return c\n"), 30),
    Case("config_raises", S, I + r"--config: RuntimeError: boom",
         fc.config_file_case("raises", "def get_config():\n  raise RuntimeError('boom')\n"), 30),
    Case("config_returns_none", S, I + r"--config: get_config\(\) returned None, not a ConfigDict",
         fc.config_file_case("none", "def get_config():\n  return None\n"), 30),
    Case("config_calls_sys_exit_0", S, I + r"--config: the config file called sys.exit\(0\)",
         fc.config_file_case("exits", "import sys\ndef get_config():\n  sys.exit(0)\n"), 30),
    Case("corrupt_config_json", S, I + r".*config.json is not valid JSON",
         fc.prepared(fc._write(("corrupt_config", "config.json"), "{torn"),
                  fc.refused("corrupt_config")), 30),
    Case("config_json_a_directory", S, I + r".*config.json should be a file",
         fc.prepared(fc._write(("config_dir", "config.json"), directory=True),
                  fc.refused("config_dir")), 30),
    Case("corrupt_eval_json", S, I + r".*eval.json is not valid JSON", fc.corrupt_eval, 30),
    Case("dangling_symlink_workdir", S, I + r"--workdir=.* is a symlink to .*, which does not",
         fc.prepared(lambda ctx: os.symlink(ctx.path("nowhere"), ctx.path("dangling")),
                  fc.refused("dangling")), 30),
    Case("newline_in_workdir_is_a_file", S, I + r"--workdir=.* is a file, not a directory$",
         fc.prepared(fc._write(("new\nline",), "mine"), fc.refused("new\nline")), 30),
    Case("results_under_a_file", S, I + r"--results=.* is a file, not a directory",
         fc.results_under_a_file, 30),
    Case("latents_with_a_pickle", S, I + r"pickled objects are never loaded",
         fc.latents_with_a_pickle, 60),
    Case("another_launcher_holds_the_workdir", S, I + r"workdir .* is in use by pid",
         fc.second_launcher, 30),
    Case("workdir_of_another_config", S, I + r"holds a run of another config",
         fc.refused("reference", "--config.train.learning_rate=0.1"), 30),
    Case("finished_run_is_not_retrained", 0, r"", fc.finished_rerun, 60),
    Case("unknown_key", S, I + r"--config: the config has no key 'num_step'; did you mean",
         fc.refused("unknown", "--config.train.num_step=5"), 30),
    Case("file_url_refused", S, I + r"download_url='file:///etc' is not an http",
         fc.refused("file_url", "--config.data.name=mnist", "--config.data.source=files",
                 "--config.data.dir={ctx.scratch}/file_url_data", "--config.data.download=True",
                 "--config.data.download_url=file:///etc"), 30),
    Case("other_config_without_config_json", S, I + r"holds checkpoints of another run "
         r"\(step 200: train.learning_rate: 0.0003 in the checkpoint, 0.001 now\)",
         rc.other_config_without_config_json, 60),
    Case("other_data_on_resume", S, I + r"holds checkpoints of another run \(step 200: "
         r"training images float32\[50, 28, 28, 1\]", rc.other_data_on_resume),
    Case("sweep_num_seeds_override", S, I + r"--config.train.num_seeds is set by the sweep",
         fc.refused("sweep_num_seeds", "--sweep=table1", "--config.train.num_seeds=2",
                    module="softvq_jax.sweep"), 30),
    Case("probe_learning_rate_3e38", S, I + r"probe_learning_rate=3e\+38 is not valid",
         fc.refused("probe_lr", "--config.eval.probe_learning_rate=3e38"), 30),
    Case("lost_latents_made_again", 0, r"made again from the checkpoint at step 300",
         rc.lost_latents_made_again),
    Case("sighup_then_rerun", 129, r"^terminated: stopped by SIGHUP\. The last good",
         fc.signal_then_rerun("sighup", signal.SIGHUP)),  # Repro 9: a closed terminal.
    Case("empty_workdir_string", S, I + r"--workdir is empty", rc.workdir_string("wd_empty", ""),
         30),
    Case("workdir_over_path_max", S, I + r"--workdir is \d+ bytes long",
         rc.workdir_string("wd_long", "{cwd}/" + "/".join(["d" * 200] * 25)), 30),
    Case("aggregate_only_without_runs", S, I + r"no finished run of sweep table1",
         fc.refused("aggregate_empty", "--sweep=table1", "--aggregate_only",
                    module="softvq_jax.sweep"), 30),
    Case("sigterm_between_checkpoints", 143, r"^terminated: stopped by SIGTERM\. The last "
         r"good checkpoint is at step [1-9]", rc.sigterm_between_checkpoints),
]


def run_case(case: fc.Case, ctx, launch) -> dict:
  """Runs ``case`` and judges it: a row of the table."""
  ctx.root = ROOT
  t0 = time.time()
  outcome, disk_ok, note = case.act(ctx, launch)
  if outcome is None:
    return {"case": case.name, "expects": str(case.status), "exit": "", "stderr_lines": 0,
            "foreign_lines": 0, "last_line": note, "verdict": "skipped", "seconds": 0.0}
  checks = {"exit": outcome.status == case.status,
            "last line": re.search(case.last, outcome.last) is not None,
            "one line": outcome.foreign == 0,
            "disk": disk_ok, "time": outcome.seconds <= case.max_seconds}
  failed = [name for name, ok in checks.items() if not ok]
  return {"case": case.name, "expects": str(case.status), "exit": outcome.status,
          "stderr_lines": len(outcome.lines), "foreign_lines": outcome.foreign,
          "last_line": outcome.last, "seconds": round(time.time() - t0, 1),
          "verdict": "holds" if not failed else "BROKEN: " + ", ".join(failed)
                     + (f" ({note})" if note else "")}


def main(argv):
  del argv
  scratch = tempfile.mkdtemp(prefix="fault_matrix_")
  mirror = MirrorServer(MNIST)
  context = Context(scratch, mirror)
  rows, t0 = [], time.time()
  try:
    for case in CASES:
      if FLAGS.only and case.name not in FLAGS.only and case.name != "reference":
        continue
      row = run_case(case, context, launch)
      print(f"{row['verdict']:8s} {case.name}: exit {row['exit']}, {row['stderr_lines']} "
            f"lines ({row['foreign_lines']} foreign): {row['last_line'][:120]}", flush=True)
      rows.append(row)
  finally:
    mirror.close()
    fc.unmount_all(context)
    shutil.rmtree(scratch, ignore_errors=True)
  write_table(rows, FLAGS.out, time.time() - t0)


if __name__ == "__main__":
  app.run(main)
