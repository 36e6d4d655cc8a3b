"""Every GPU figure in one call of 9 minutes or less.

  python -m experiments.gpu_check --out=experiments/results/gpu_check/gpu_check_<gpu>.jsonl
  python -m experiments.gpu_check --smoke --out=/tmp/smoke.jsonl   # CPU, about 2 minutes

Runs the parts below in this order, most important first, each a child
process with its own time budget (``--budgets=part=seconds,...``), so that
one slow part never hides the rest. Every JSON line a part prints goes into
``--out`` at once with a ``part`` field; each part ends with a line
``{"part", "status": "done" | "failed" | "cut", "seconds", "tail"}`` (a cut
part keeps what it printed). The sweep tables go beside ``--out``.

* ``table1``: the table1 sweep with figures on MNIST (``--mnist_dir``), its
  wall time, its table (whose JSON keeps ``protocol.launcher_seconds``) and
  each run's ``train_seconds`` / ``eval_seconds`` / ``compile_seconds``;
* ``training``: the paper's MLP step (the soft VQ-VAE row of
  ``configs/mnist.py``), one run, 3 and 21 vmapped, with compile times
  (``step_timing.py``);
* ``cifar10``: the headline config's CNN at its batch size on random images,
  one run and 3 seeds vmapped, with compile times (``step_timing.py``);
* ``torch``: ``torch_reference.py``, eager and compiled, on the same device;
* ``quantizers``: ``quantizer_timing.py``, both libraries on the device;
* ``large_k``: ``chunk_size`` against dense up to K = N = 65536;
* ``tests``: the fast test tier on the device.

``--smoke`` runs every part tiny (digits for the sweep, a few steps) so that
the script is known to work before a GPU is lent; a slow-tier test runs it.

On a machine without ml_collections (the GPU image), carry its wheel and
install it first, e.g. ``pip install --no-index --find-links=wheels
ml_collections``, with the MNIST files beside the repository
(``../shared/datasets/mnist``) or named by ``--mnist_dir``. Reading MNIST
from its files needs no tensorflow-datasets.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("table1", "training", "cifar10", "torch", "quantizers", "large_k", "tests")
# Seconds per part: 530 in all, with the children's starts inside them.
BUDGETS = {"table1": 200, "training": 75, "cifar10": 45, "torch": 45, "quantizers": 60,
           "large_k": 45, "tests": 60}
SMOKE_BUDGETS = {part: 90 for part in PARTS}

flags.DEFINE_string("out", None, "The JSONL to write; the sweep tables go beside it.")
flags.DEFINE_bool("smoke", False, "Every part tiny, on any device: checks the script.")
flags.DEFINE_list("parts", list(PARTS), "A subset of the parts, run in PARTS order.")
flags.DEFINE_list("budgets", [], "part=seconds overrides of the parts' time budgets.")
flags.DEFINE_string("mnist_dir", os.path.join(os.path.dirname(ROOT), "shared", "datasets",
                                              "mnist"), "The official MNIST files.")
flags.DEFINE_string("torch_python", sys.executable,
                    "A Python with torch and vector-quantize-pytorch.")
flags.DEFINE_string("workdir", None, "The sweep's workdir; default beside --out.")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Part:
  """A part: the command of its child process, from the repository's root."""
  name: str
  argv: List[str]


def _module(module: str, *args: str, python: Optional[str] = None) -> List[str]:
  return [python or sys.executable, "-m", module, *args]


def _table1(smoke: bool, prefix: str, workdir: str) -> List[str]:
  config = (["--config=configs/digits.py:quick", "--config.eval.kmeans_inits=2"] if smoke
            else ["--config=configs/mnist.py", "--config.data.source=files",
                  f"--config.data.dir={FLAGS.mnist_dir}"])
  return _module("softvq_jax.sweep", *config, "--sweep=table1", f"--workdir={workdir}",
                 f"--results={prefix}_table1")


def parts(smoke: bool, prefix: str, workdir: str) -> Dict[str, Part]:
  """The command of every part, tiny with ``smoke``."""
  tiny = lambda *args: list(args) if smoke else []
  torch = FLAGS.torch_python
  return {part.name: part for part in [
      Part("table1", _table1(smoke, prefix, workdir)),
      Part("training", _module("experiments.benchmarks.step_timing", "--config=mnist",
                               *(["--steps=5", "--repeats=1", "--num_images=256",
                                  "--seeds=1,3"] if smoke else
                                 ["--steps=500", "--seeds=1,3,21"]))),
      Part("cifar10", _module("experiments.benchmarks.step_timing", "--config=cifar10",
                              *tiny("--steps=2", "--repeats=1", "--num_images=64",
                                    "--batch_size=2", "--seeds=1,2"))),
      Part("torch", _module("experiments.benchmarks.torch_reference",
                            *(["--steps=5", "--repeats=1"] if smoke else []), python=torch)),
      Part("quantizers", _module("experiments.benchmarks.quantizer_timing",
                                 f"--torch_python={torch}",
                                 *tiny("--quantizers=vq,fsq", "--timing_calls=2",
                                       "--timing_repeats=1"))),
      Part("large_k", _module("experiments.benchmarks.large_k_benchmark",
                              *(["--sizes=256x512x8", "--repeats=1", "--chunk_size=128"]
                                if smoke else []))),
      Part("tests", _module("pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider",
                            *(["tests/test_layout.py"] if smoke else ["tests"]))),
  ]}


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


def run_timings(workdir: str, out: Output) -> None:
  """Each run's timing.json of the sweep in ``workdir``."""
  for root, _, names in sorted(os.walk(workdir)):
    if "timing.json" in names:
      with open(os.path.join(root, "timing.json")) as f:
        timing = json.load(f)
      out.write({"part": "table1", "run": os.path.relpath(root, workdir),
                 **{k: timing.get(k) for k in ("train_seconds", "eval_seconds",
                                               "compile_seconds", "runs_trained_together")}})


def budgets() -> Dict[str, float]:
  chosen = dict(SMOKE_BUDGETS if FLAGS.smoke else BUDGETS)
  for item in FLAGS.budgets:
    part, _, seconds = item.partition("=")
    if part not in PARTS or not seconds.replace(".", "", 1).isdigit():
      raise app.UsageError(f"--budgets: {item!r} is not part=seconds with a part of "
                           f"{', '.join(PARTS)}")
    chosen[part] = float(seconds)
  return chosen


def main(argv):
  del argv
  if not FLAGS.out:
    raise app.UsageError("--out=FILE.jsonl is required")
  unknown = sorted(set(FLAGS.parts) - set(PARTS))
  if unknown:
    raise app.UsageError(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
  limits = budgets()
  prefix = os.path.splitext(os.path.abspath(FLAGS.out))[0]
  workdir = FLAGS.workdir or prefix + "_workdir"
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  out = Output(os.path.abspath(FLAGS.out))
  out.write({"part": "start", "smoke": FLAGS.smoke, "parts": FLAGS.parts, "budgets": limits,
             "argv": sys.argv})
  commands = parts(FLAGS.smoke, prefix, workdir)
  for name in PARTS:
    if name in FLAGS.parts:
      run_part(commands[name], limits[name], out)
      if name == "table1":
        run_timings(workdir, out)


if __name__ == "__main__":
  app.run(main)
