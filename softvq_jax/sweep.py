"""Sweep launcher: runs a named sweep of a config file, then tabulates it.

  python -m softvq_jax.sweep --config=configs/mnist.py --sweep=table1 \
      --config.data.source=files --config.data.dir=../shared/datasets/mnist \
      --workdir=/tmp/table1 --results=experiments/results/table1_mnist

Sweeps are defined in the config file by ``get_sweep(name)``, a list of
points ``{"name", "row", "overrides"}`` (see ``default.sweep_point``); the
command-line ``--config.*`` overrides apply to every point. Each point runs
in ``WORKDIR/<name>``. Finished runs are skipped and unfinished ones resume,
so re-running the command continues an interrupted sweep. Every point's
config is validated before the first run starts. Points that differ only by
seed, or also by a scalar such as ``model.noise_std`` when named
``<row>/noise_std_<v>/seed_<s>``, train together in one vmapped program
(``--vmap_seeds``; ``train.num_seeds``, ``train.vmap_key``).
``--num_shards=N --shard=i`` gives the i-th launcher every N-th family
(``_family``), so that N launchers (processes, or machines
sharing the workdir) split one sweep; each writes the tables of all runs
finished so far, and ``--aggregate_only`` rewrites them at the end.

The ``raw`` row evaluates the pixels themselves (the paper's "Raw Data").

Results: ``RESULTS.json`` (per-seed values per row), ``RESULTS.md`` (mean +-
std over seeds next to the paper's numbers), ``RESULTS.csv`` and
``RESULTS_tsne.png`` (one t-SNE panel per model, the paper's Fig. 4).
"""

import copy
import csv
import dataclasses
import importlib.util
import io
import json
import os
import sys
import time
from typing import Any, Dict, List, Tuple

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
flags.DEFINE_integer("shard", 0, "This launcher's shard, in [0, num_shards).")
flags.DEFINE_bool("vmap_seeds", True, "Train the seeds and swept scalar values of a "
                  "family together (train.num_seeds, train.vmap_key).")
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
  workdir_lib.write_results(workdir, results,
                            {"train_seconds": 0.0, "eval_seconds": time.time() - t0})
  return results


def _family(name: str) -> Tuple[str, str]:
  """The family of a point's name and the key it sweeps, or ``""``.

  ``<row>/<key>_<value>/seed_<s>`` with a key of ``default.VMAPPABLE_KEYS``
  (e.g. ``soft_vq_vae/noise_std_0.05/seed_0``) belongs to ``<row>`` with
  that key; any other name to its directory, ``<row>`` of ``<row>/seed_<s>``.
  """
  directory = os.path.dirname(name)
  parent, tag = os.path.split(directory)
  for key in default.VMAPPABLE_KEYS:
    prefix = key.rsplit(".", 1)[-1] + "_"
    if parent and tag.startswith(prefix) and _is_number(tag[len(prefix):]):
      return parent, key
  return directory, ""


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def shard_points(points: List[Dict[str, Any]], shard: int,
                 num_shards: int) -> List[Dict[str, Any]]:
  """The points of one shard: every ``num_shards``-th family and swept key.

  All seeds and values of a family's swept key (``_family``) land in one
  shard, so that they can be trained together.
  """
  families = list(dict.fromkeys(_family(p["name"]) for p in points))
  mine = set(families[shard::num_shards])
  return [p for p in points if _family(p["name"]) in mine]


@dataclasses.dataclass
class Launch:
  """One process-level run of a sweep: one point, or several trained together."""
  names: List[str]  # The sweep points it finishes.
  config: ml_collections.ConfigDict
  workdir: str
  raw: bool = False  # The "Raw Data" row: evaluate pixels, train nothing.


def _consecutive(members: List[Tuple[str, Any]]) -> List[List[Tuple[str, Any]]]:
  """``(name, config)`` pairs split into runs of consecutive seeds."""
  members = sorted(members, key=lambda member: member[1].seed)
  runs = [[members[0]]]
  for member in members[1:]:
    if member[1].seed == runs[-1][-1][1].seed + 1:
      runs[-1].append(member)
    else:
      runs.append([member])
  return runs


def _family_launches(family: str, key: str, members: List[Tuple[str, Any]],
                     workdir: str) -> List[Launch]:
  """A family's points as launches: the values of ``key`` that share a run of
  consecutive seeds train together (``train.vmap_key`` and ``num_seeds``)."""
  by_value: Dict[Any, List[Tuple[str, Any]]] = {}
  for name, config in members:
    by_value.setdefault(config[key] if key else None, []).append((name, config))
  by_seeds: Dict[tuple, List[Tuple[Any, List[Tuple[str, Any]]]]] = {}
  for value, value_members in by_value.items():
    for run_members in _consecutive(value_members):
      seeds = tuple(config.seed for _, config in run_members)
      by_seeds.setdefault(seeds, []).append((value, run_members))
  launches = []
  for seeds, entries in by_seeds.items():
    names = [name for _, run_members in entries for name, _ in run_members]
    config = copy.deepcopy(entries[0][1][0][1])
    if len(names) == 1:
      launches.append(Launch(names, config, os.path.join(workdir, names[0])))
      continue
    with config.unlocked():
      config.train.num_seeds = len(seeds)
      if len(entries) > 1:
        config.train.vmap_key = key
        config.train.vmap_values = tuple(value for value, _ in entries)
    directory = family if len(entries) > 1 else os.path.dirname(names[0])
    launches.append(Launch(names, config, os.path.join(workdir, directory)))
  return launches


def _latest_checkpoint(run_dir: str) -> int:
  """The step of the newest checkpoint directory of a run, 0 if none."""
  directory = os.path.join(run_dir, "checkpoints")
  steps = os.listdir(directory) if os.path.isdir(directory) else []
  return max([int(step) for step in steps if step.isdigit()], default=0)


def plan(base: ml_collections.ConfigDict, points: List[Dict[str, Any]], workdir: str,
         quick: bool = False, vmap_seeds: bool = True) -> List[Launch]:
  """The launches of a sweep, in the order of its points.

  Unfinished points of one family (``_family``) that differ only in
  consecutive seeds and in the value of the family's swept scalar, and whose
  latest checkpoints are at the same step (none for unstarted points), become
  one launch with ``train.num_seeds`` and ``train.vmap_key`` (``vmap_seeds``)
  that resumes them together; ``train`` writes each run into the point's own
  workdir. Finished points (skipped) and ``raw`` points are launches alone.
  """
  order, families = [], {}
  for point in points:
    config = point_config(base, point, quick)
    name = point["name"]
    run_dir = os.path.join(workdir, name)
    family, key = _family(name)
    if key and (key not in point["overrides"] or name != os.path.join(
        family, default.value_dir(key, config[key]), f"seed_{config.seed}")):
      family, key = os.path.dirname(name), ""
    if (not vmap_seeds or point["row"] == "raw"
        or os.path.exists(os.path.join(run_dir, workdir_lib.EVAL_FILE))
        or os.path.basename(name) != f"seed_{config.seed}"):
      order.append(Launch([name], config, run_dir, point["row"] == "raw"))
      continue
    rest = {k: v for k, v in point["overrides"].items() if k not in ("seed", key)}
    group = (family, key, json.dumps(rest, sort_keys=True, default=str),
             _latest_checkpoint(run_dir))
    if group not in families:
      families[group] = []
      order.append(group)
    families[group].append((name, config))
  launches = []
  for entry in order:
    if isinstance(entry, Launch):
      launches.append(entry)
    else:
      launches.extend(_family_launches(entry[0], entry[1], families[entry], workdir))
  return launches


def run(base: ml_collections.ConfigDict, points: List[Dict[str, Any]], workdir: str,
        quick: bool = False, vmap_seeds: bool = True) -> List[str]:
  """Runs every point of the sweep that is not finished yet (see ``plan``).

  A run whose loss turns non-finite does not stop the sweep: it is logged,
  left out of the tables, and its names returned among the failures.
  """
  launches = plan(base, points, workdir, quick, vmap_seeds)
  for launch in launches:
    validation.validate_config(launch.config, jax.device_count())
  failed = []
  for i, launch in enumerate(launches):
    logging.info("sweep launch %d/%d: %s", i + 1, len(launches), ", ".join(launch.names))
    if launch.raw:
      evaluate_pixels(launch.config, launch.workdir)
      continue
    try:
      train.train_and_evaluate(launch.config, launch.workdir)
    except FloatingPointError as e:
      logging.error("sweep launch %s failed: %s", ", ".join(launch.names), e)
      failed.extend(launch.names)
  return failed


def _stats(values: List[float], digits: int) -> str:
  """Mean ± (population) std over seeds."""
  return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def aggregate(points: List[Dict[str, Any]], workdir: str,
              paper: Dict[str, Dict[str, tuple]]) -> Dict[str, Any]:
  """Collects the finished runs into rows of per-seed values.

  A row is a family of points, their name up to ``/seed_<s>`` without the
  dataset (``ae``, ``soft_vq_vae/noise_std_0.05``); the paper's numbers are
  attached to the rows that are exactly a row of the paper.
  """
  rows: Dict[tuple, Dict[str, Any]] = {}
  for point in points:
    run_dir = os.path.join(workdir, point["name"])
    results = workdir_lib.read_json(os.path.join(run_dir, workdir_lib.EVAL_FILE))
    if results is None:
      continue
    config = workdir_lib.read_json(os.path.join(run_dir, workdir_lib.CONFIG_FILE))
    timing = workdir_lib.read_json(os.path.join(run_dir, workdir_lib.TIMING_FILE)) or {}
    dataset = config["data"]["name"]
    model = os.path.dirname(point["name"])
    key = (dataset, model[len(dataset) + 1:] if model.startswith(dataset + "/") else model)
    overrides = {k: v for k, v in point["overrides"].items() if k != "seed"}
    row = rows.setdefault(key, {"dataset": key[0], "model": key[1], "overrides": overrides,
                                "seeds": [], "train_seconds": [], "eval_seconds": [],
                                **{m: [] for m in METRICS}})
    row["seeds"].append(config["seed"])
    row["train_seconds"].append(timing.get("train_seconds"))
    row["eval_seconds"].append(timing.get("eval_seconds"))
    for metric in METRICS:
      row[metric].append(results[metric])
    row["eval_split"] = results["eval_split"]
    reference = paper.get(dataset, {}).get(point["row"])
    if reference is not None and key[1] == point["row"]:
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
      failed = run(FLAGS.config, shard_points(points, FLAGS.shard, FLAGS.num_shards),
                   FLAGS.workdir, quick="quick" in args.split(","),
                   vmap_seeds=FLAGS.vmap_seeds)
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
