"""Sweep launcher: runs a named sweep of a config file, then tabulates it.

  python -m softvq_jax.sweep --config=configs/mnist.py --sweep=table1 \
      --config.data.source=files --config.data.dir=../shared/datasets/mnist \
      --workdir=/tmp/table1 --results=experiments/results/table1_mnist

Sweeps are defined in the config file by ``get_sweep(name)``, a list of
points ``{"name", "row", "overrides"}`` (see ``default.sweep_point``); the
command-line ``--config.*`` overrides apply to every point. Each point runs
in ``WORKDIR/<name>``. Finished runs are skipped and unfinished ones resume,
so re-running the command continues an interrupted sweep. Every point's
config is validated before the first run starts. ``--num_shards=N --shard=i``
runs every N-th point from the i-th, so that N launchers (processes, or
machines sharing the workdir) split one sweep; each writes the tables of all
runs finished so far, and ``--aggregate_only`` rewrites them at the end.

The ``raw`` row evaluates the pixels themselves (the paper's "Raw Data").

Results: ``RESULTS.json`` (per-seed values per row), ``RESULTS.md`` (mean +-
std over seeds next to the paper's numbers), ``RESULTS.csv`` and
``RESULTS_tsne.png`` (one t-SNE panel per model, the paper's Fig. 4).
"""

import copy
import csv
import importlib.util
import io
import os
import sys
import time
from typing import Any, Dict, List

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from softvq_jax import evaluation
from softvq_jax import figures
from softvq_jax import input_pipeline
from softvq_jax import train
from softvq_jax import validation
from softvq_jax import workdir as workdir_lib
from softvq_jax.configs import default
from softvq_jax.errors import InputError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file of the sweep.",
                                lock_config=True)
flags.DEFINE_string("sweep", None, "Name of a sweep of the config file's get_sweep.")
flags.DEFINE_string("workdir", None, "Parent directory of the runs' workdirs.")
flags.DEFINE_string("results", None, "Path prefix of the tables; default WORKDIR/SWEEP.")
flags.DEFINE_bool("aggregate_only", False, "Only tabulate the finished runs.")
flags.DEFINE_integer("num_shards", 1, "Split the points over this many launchers.")
flags.DEFINE_integer("shard", 0, "This launcher runs points shard, shard + num_shards, ...")
flags.mark_flags_as_required(["config", "sweep", "workdir"])

METRICS = ("clustering_acc", "nmi", "probe_acc")


def load_config_module(path: str):
  """The config file as a module, for its ``get_sweep`` and ``PAPER_RESULTS``."""
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def point_config(base: ml_collections.ConfigDict, point: Dict[str, Any],
                 quick: bool = False) -> ml_collections.ConfigDict:
  """The config of one point: ``base`` with the point's overrides.

  ``quick`` (from ``--config=FILE:quick``) shrinks every point to a smoke test
  after the presets have set their step counts.
  """
  config = copy.deepcopy(base)
  with config.unlocked():
    default.apply_overrides(config, point["overrides"])
    if quick:
      default.make_quick(config)
  return config


def evaluate_pixels(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """The "Raw Data" row: the evaluation suite on flattened pixels."""
  finished = workdir_lib.check(config, workdir)
  if finished is not None:
    return finished
  data = input_pipeline.load(config.data)
  workdir_lib.write_config(config, workdir)
  t0 = time.time()
  results = evaluation.evaluate(data.train_images, data.train_labels, data.eval_images,
                                data.eval_labels, config.eval, data.num_classes,
                                config.seed)
  results["eval_split"] = data.eval_split
  workdir_lib.write_json(os.path.join(workdir, "timing.json"),
                         {"train_seconds": 0.0, "eval_seconds": time.time() - t0})
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.EVAL_FILE), results)
  return results


def run(base: ml_collections.ConfigDict, points: List[Dict[str, Any]], workdir: str,
        quick: bool = False) -> List[str]:
  """Runs every point of the sweep that is not finished yet.

  A run whose loss turns non-finite does not stop the sweep: it is logged,
  left out of the tables, and its name returned among the failures.
  """
  configs = [point_config(base, p, quick) for p in points]
  for config in configs:
    validation.validate_config(config, jax.device_count())
  failed = []
  for i, (point, config) in enumerate(zip(points, configs)):
    run_dir = os.path.join(workdir, point["name"])
    logging.info("sweep point %d/%d: %s", i + 1, len(points), point["name"])
    if point["row"] == "raw":
      evaluate_pixels(config, run_dir)
      continue
    try:
      train.train_and_evaluate(config, run_dir)
    except FloatingPointError as e:
      logging.error("sweep point %s failed: %s", point["name"], e)
      failed.append(point["name"])
  return failed


def _stats(values: List[float], digits: int) -> str:
  """Mean ± (population) std over seeds."""
  return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def aggregate(points: List[Dict[str, Any]], workdir: str,
              paper: Dict[str, Dict[str, tuple]]) -> Dict[str, Any]:
  """Collects the finished runs into rows of per-seed values."""
  rows: Dict[tuple, Dict[str, Any]] = {}
  for point in points:
    run_dir = os.path.join(workdir, point["name"])
    results = workdir_lib.read_json(os.path.join(run_dir, workdir_lib.EVAL_FILE))
    if results is None:
      continue
    config = workdir_lib.read_json(os.path.join(run_dir, workdir_lib.CONFIG_FILE))
    timing = workdir_lib.read_json(os.path.join(run_dir, "timing.json")) or {}
    key = (config["data"]["name"], point["row"])
    overrides = {k: v for k, v in point["overrides"].items() if k != "seed"}
    row = rows.setdefault(key, {"dataset": key[0], "model": key[1], "overrides": overrides,
                                "seeds": [], "train_seconds": [], **{m: [] for m in METRICS}})
    row["seeds"].append(config["seed"])
    row["train_seconds"].append(timing.get("train_seconds"))
    for metric in METRICS:
      row[metric].append(results[metric])
    row["eval_split"] = results["eval_split"]
    reference = paper.get(key[0], {}).get(key[1])
    if reference is not None:
      row["paper"] = dict(zip(METRICS, reference))
  return {"rows": list(rows.values())}


def markdown(table: Dict[str, Any]) -> str:
  lines = ["| dataset | model | seeds | clustering ACC (%) | NMI | probe acc (%) "
           "| paper ACC | paper NMI | paper probe |", "|---" * 9 + "|"]
  for row in table["rows"]:
    paper = row.get("paper", {})
    fmt = lambda v: "-" if v is None else f"{v:g}"
    lines.append(
        f"| {row['dataset']} | {row['model']} | {len(row['seeds'])} | "
        + " | ".join(_stats(row[m], 4 if m == "nmi" else 2) for m in METRICS) + " | "
        + " | ".join(fmt(paper.get(m)) for m in METRICS) + " |")
  return "\n".join(lines) + "\n"


def write_tsne(points: List[Dict[str, Any]], workdir: str, path: str,
               num_points: int) -> None:
  """One t-SNE panel per trained row, from the first finished seed's latents."""
  panels, seen = [], set()
  for point in points:
    latents = os.path.join(workdir, point["name"], "latents.npz")
    if point["row"] in seen or not os.path.exists(latents):
      continue
    seen.add(point["row"])
    with np.load(latents) as f:  # Written by this package; no pickles allowed.
      panels.append((f"{point['name']}", f["latents"], f["labels"]))
  if panels:
    figures.tsne(path, panels, num_points, seed=0)


def write_tables(table: Dict[str, Any], prefix: str) -> None:
  workdir_lib.write_json(prefix + ".json", table)
  with open(prefix + ".md", "w") as f:
    f.write(markdown(table))
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["dataset", "model", "seed", *METRICS])
  for row in table["rows"]:
    for i, seed in enumerate(row["seeds"]):
      writer.writerow([row["dataset"], row["model"], seed, *(row[m][i] for m in METRICS)])
  with open(prefix + ".csv", "w") as f:
    f.write(out.getvalue())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  workdir_lib.quiet_orbax_logging()
  path, _, args = FLAGS["config"].config_filename.partition(":")
  module = load_config_module(path)
  failed = []
  try:
    points = module.get_sweep(FLAGS.sweep)
    if not FLAGS.aggregate_only:
      if not 0 <= FLAGS.shard < FLAGS.num_shards:
        raise InputError(f"--shard={FLAGS.shard} must be in [0, --num_shards={FLAGS.num_shards})")
      failed = run(FLAGS.config, points[FLAGS.shard::FLAGS.num_shards], FLAGS.workdir,
                   quick="quick" in args.split(","))
  except (InputError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  table = aggregate(points, FLAGS.workdir, getattr(module, "PAPER_RESULTS", {}))
  table["protocol"] = {
      "command": " ".join(sys.argv),
      "config": workdir_lib.config_dict(FLAGS.config),
      "sweep": FLAGS.sweep,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
  }
  prefix = FLAGS.results or os.path.join(FLAGS.workdir, FLAGS.sweep)
  write_tables(table, prefix)
  write_tsne(points, FLAGS.workdir, prefix + "_tsne.png", FLAGS.config.eval.tsne_points)
  print(markdown(table))
  if failed:
    print(f"error: non-finite loss in {len(failed)} runs: {', '.join(failed)}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
