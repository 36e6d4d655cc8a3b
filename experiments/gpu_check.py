"""Every GPU figure in one call of 9 minutes or less.

  python -m experiments.gpu_check --out=experiments/results/gpu_check/gpu_check_<gpu>.jsonl
  python -m experiments.gpu_check --smoke --out=/tmp/smoke.jsonl   # CPU, about 2 minutes

Runs the parts below in this order, most important first, each a child
process with its own time budget (``--budgets=part=seconds,...``), so that
one slow part never hides the rest. Every JSON line a part prints goes into
``--out`` at once with a ``part`` field; each part ends with a line
``{"part", "status": "done" | "failed" | "cut", "seconds", "tail"}`` (a cut
part keeps what it printed). The sweep tables go beside ``--out``.

* ``table1``: the table1 sweep with figures on MNIST (``--mnist_dir``), with
  every speed-up on (evaluation overlapped, the next launch compiled ahead,
  vae and beta_vae packed: ``--pack_rows``), its wall time, its table (whose
  JSON keeps ``protocol.launcher_seconds``) and each run's
  ``train_seconds`` / ``eval_seconds`` / ``compile_seconds`` /
  ``compile_ahead_seconds``;
* ``training``: the paper's MLP step (the soft VQ-VAE row of
  ``configs/mnist.py``), one run, 3 and 21 vmapped, with compile times
  (``step_timing.py``);
* ``cifar10``: the headline config's CNN at its batch size on random images,
  one run and 3 seeds vmapped, with compile times (``step_timing.py``);
* ``torch``: ``torch_reference.py``, eager and compiled, on the same device;
* ``quantizers``: ``quantizer_timing.py``, both libraries on the device;
* ``large_k``: ``chunk_size`` against dense up to K = N = 65536;
* ``tests``: the fast test tier on the device.

``--smoke`` runs every part tiny (digits' table1 ae row, a few steps)
so that the script is known to work before a GPU is lent; a slow-tier test
runs it. On the GPU machine, keep the sweep's workdir out of what comes
back: ``--out=$OUT/gpu_check.jsonl --workdir=/tmp/gpu_check``.

On a machine without ml_collections (the GPU image), carry its wheel and
install it first, e.g. ``pip install --no-index --find-links=wheels
ml_collections``, with the MNIST files beside the repository
(``../shared/datasets/mnist``) or named by ``--mnist_dir``. Reading MNIST
from its files needs no tensorflow-datasets.
"""

import json
import os
import sys
from typing import Dict, List, Optional

from absl import app
from absl import flags

from experiments.common import parts as parts_lib

PARTS = ("table1", "training", "cifar10", "torch", "quantizers", "large_k", "tests")
# Seconds per part: 530 in all, with the children's starts inside them.
BUDGETS = {"table1": 200, "training": 75, "cifar10": 45, "torch": 45, "quantizers": 60,
           "large_k": 45, "tests": 60}
SMOKE_BUDGETS = {part: 90 for part in PARTS}

flags.DEFINE_string("out", None, "The JSONL to write; the sweep tables go beside it.")
flags.DEFINE_bool("smoke", False, "Every part tiny, on any device: checks the script.")
flags.DEFINE_list("parts", list(PARTS), "A subset of the parts, run in PARTS order.")
flags.DEFINE_list("budgets", [], "part=seconds overrides of the parts' time budgets.")
flags.DEFINE_string("mnist_dir", os.path.join(os.path.dirname(parts_lib.ROOT), "shared",
                                              "datasets", "mnist"), "The official MNIST files.")
flags.DEFINE_string("torch_python", sys.executable,
                    "A Python with torch and vector-quantize-pytorch.")
flags.DEFINE_string("workdir", None, "The sweep's workdir; default beside --out.")
FLAGS = flags.FLAGS


def _module(module: str, *args: str, python: Optional[str] = None) -> List[str]:
  return [python or sys.executable, "-m", module, *args]


def _table1(smoke: bool, prefix: str, workdir: str) -> List[str]:
  """The table1 sweep on MNIST; on digits, its ae row alone, with ``smoke``."""
  config = (["--config=configs/digits.py:quick", "--config.eval.kmeans_inits=2",
             "--num_shards=8", "--shard=1"] if smoke
            else ["--config=configs/mnist.py", "--config.data.source=files",
                  f"--config.data.dir={FLAGS.mnist_dir}", "--pack_rows"])
  return _module("softvq_jax.sweep", *config, "--sweep=table1", f"--workdir={workdir}",
                 f"--results={prefix}_table1")


def _steps(config: str, smoke: bool, full: List[str], tiny: List[str]) -> List[str]:
  return _module("experiments.benchmarks.step_timing", f"--config={config}",
                 *(tiny if smoke else full))


def parts(smoke: bool, prefix: str, workdir: str) -> Dict[str, parts_lib.Part]:
  """The command of every part, tiny with ``smoke``."""
  either = lambda full, tiny: tiny if smoke else full
  torch = FLAGS.torch_python
  commands = {
      "table1": _table1(smoke, prefix, workdir),
      "training": _steps("mnist", smoke, ["--steps=500", "--seeds=1,3,21"],
                         ["--steps=2", "--repeats=1", "--num_images=64", "--seeds=3"]),
      "cifar10": _steps("cifar10", smoke, [], ["--steps=1", "--repeats=1", "--num_images=8",
                                                "--batch_size=2", "--seeds=1"]),
      "torch": _module("experiments.benchmarks.torch_reference",
                       *either([], ["--steps=5", "--repeats=1"]), python=torch),
      "quantizers": _module("experiments.benchmarks.quantizer_timing", f"--torch_python={torch}",
                            *either([], ["--quantizers=fsq", "--timing_calls=2",
                                         "--timing_repeats=1"])),
      "large_k": _module("experiments.benchmarks.large_k_benchmark",
                         *either([], ["--sizes=256x512x8", "--repeats=1", "--chunk_size=128"])),
      "tests": _module("pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider",
                       *either(["tests"], ["tests/test_layout.py"])),
  }
  return {name: parts_lib.Part(name, argv) for name, argv in commands.items()}


def run_timings(workdir: str, out: parts_lib.Output) -> None:
  """Each run's timing.json of the sweep in ``workdir``."""
  for root, _, names in sorted(os.walk(workdir)):
    if "timing.json" in names:
      with open(os.path.join(root, "timing.json")) as f:
        timing = json.load(f)
      out.write({"part": "table1", "run": os.path.relpath(root, workdir),
                 **{k: timing.get(k) for k in ("train_seconds", "eval_seconds",
                                               "compile_seconds", "compile_ahead_seconds",
                                               "runs_trained_together")}})


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
  out = parts_lib.Output(os.path.abspath(FLAGS.out))
  out.write({"part": "start", "smoke": FLAGS.smoke, "parts": FLAGS.parts, "budgets": limits,
             "argv": sys.argv})
  commands = parts(FLAGS.smoke, prefix, workdir)
  for name in PARTS:
    if name in FLAGS.parts:
      parts_lib.run_part(commands[name], limits[name], out)
      if name == "table1":
        run_timings(workdir, out)


if __name__ == "__main__":
  app.run(main)
