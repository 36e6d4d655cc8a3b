"""The tables of a sweep: per-seed values per row, mean ± std, t-SNE panels.

``aggregate`` collects the finished runs of a sweep's points into rows;
``write_tables`` writes them as ``PREFIX.json`` (per-seed values, each
run's last logged training metrics, the protocol), ``PREFIX.md`` (mean ±
population std over seeds next to the paper's numbers) and ``PREFIX.csv``
(one line per run); ``write_tsne`` draws one t-SNE panel per row (the
paper's Fig. 4); ``write_figure`` shows every seed's value of every metric
per row, as curves over the swept value when the rows differ in one
numeric key (``curve_key``: the K curve).
"""

import csv
import dataclasses
import io
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from softvq_jax.errors import InputError
from softvq_jax.errors import one_line
from softvq_jax.launch import figures
from softvq_jax.launch import provenance
from softvq_jax.launch import runs
from softvq_jax.launch import training_log
from softvq_jax.launch import workdir as workdir_lib

METRICS = ("clustering_acc", "nmi", "probe_acc")
TITLES = {"clustering_acc": "clustering ACC (%)", "nmi": "NMI", "probe_acc": "probe acc (%)"}


def model_label(point: runs.Point) -> str:
  """A point's row in the tables: its directory names without dataset, seed
  and ``validation`` (the tables' eval_split says it): ``ae``,
  ``soft_vq_vae/noise_std_0.05``."""
  return "/".join(runs.point_parts(dataclasses.replace(point, dataset=""), split=False))


def aggregate(points: Sequence[runs.Point], workdir: str,
              paper: Dict[str, Dict[str, tuple]]) -> Dict[str, Any]:
  """Collects the finished runs into rows of per-seed values.

  A row is a dataset and a ``model_label``; the paper's numbers are attached
  to the rows that are exactly a row of the paper (``Point.paper_row``).
  ``missing`` lists the run directories of the points not finished.
  """
  rows: Dict[tuple, Dict[str, Any]] = {}
  missing = []
  for point in points:
    run_dir = os.path.join(workdir, runs.point_dir(point))
    results = workdir_lib.read_json(os.path.join(run_dir, workdir_lib.EVAL_FILE))
    if results is None:
      missing.append(runs.point_dir(point))
      continue
    config = workdir_lib.read_json(os.path.join(run_dir, workdir_lib.CONFIG_FILE))
    timing = workdir_lib.read_json(os.path.join(run_dir, workdir_lib.TIMING_FILE)) or {}
    dataset = config["data"]["name"]
    key = (dataset, model_label(point))
    overrides = {k: v for k, v in point.config_overrides().items() if k != "seed"}
    row = rows.setdefault(key, {"dataset": key[0], "model": key[1], "overrides": overrides,
                                "swept": dict(point.swept), "seeds": [],
                                "train_seconds": [], "eval_seconds": [],
                                "last_train_metrics": [], "environments": [],
                                **{m: [] for m in METRICS}})
    row["seeds"].append(config["seed"])
    row["last_train_metrics"].append((training_log.read_metrics(run_dir) or [None])[-1])
    row["train_seconds"].append(timing.get("train_seconds"))
    row["eval_seconds"].append(timing.get("eval_seconds"))
    for metric in METRICS:
      row[metric].append(results[metric])
    row["eval_split"] = results["eval_split"]
    row["environments"].append(results.get("environment"))
    reference = paper.get(dataset, {}).get(point.row)
    if reference is not None and point.paper_row:
      row["paper"] = dict(zip(METRICS, reference))
  return {"rows": list(rows.values()), "missing": missing}


def missing_line(table: Dict[str, Any], shown: int = 8) -> str:
  """One sentence naming the points left out of ``table`` (not finished);
  ``""`` when none is."""
  missing = table.get("missing", [])
  if not missing:
    return ""
  more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
  return (f"{len(missing)} runs not finished, left out of the table: "
          f"{', '.join(missing[:shown])}{more}.")


def _stats(values: List[float], digits: int) -> str:
  """Mean ± (population) std over seeds."""
  return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


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
  made_with = {provenance.describe(e) if e else "versions not recorded (older runs)"
               for row in table["rows"] for e in row["environments"]}
  lines += [""] + [f"Made with: {line}." for line in sorted(made_with)]
  lines += [missing_line(table)] if table.get("missing") else []
  return "\n".join(lines) + "\n"


def write_tables(table: Dict[str, Any], prefix: str) -> None:
  """``PREFIX.json``, ``PREFIX.md`` and ``PREFIX.csv`` (module docstring)."""
  workdir_lib.write_json(prefix + ".json", table)
  workdir_lib.write_atomic(prefix + ".md", markdown(table))
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["dataset", "model", "seed", *METRICS])
  for row in table["rows"]:
    for i, seed in enumerate(row["seeds"]):
      writer.writerow([row["dataset"], row["model"], seed, *(row[m][i] for m in METRICS)])
  workdir_lib.write_atomic(prefix + ".csv", out.getvalue())


def curve_key(rows: Sequence[Dict[str, Any]]) -> Optional[str]:
  """The one swept config key whose numeric values tell the rows of one
  dataset apart, the rows sweeping the same keys and agreeing on the others,
  or None: such rows are points of a curve over it."""
  keys = {tuple(sorted(row["swept"])) for row in rows}
  if len(rows) < 2 or len(keys) != 1:
    return None
  varying = [key for key in next(iter(keys))
             if len({repr(row["swept"][key]) for row in rows}) > 1]
  if len(varying) != 1:
    return None
  key, = varying
  values = [row["swept"][key] for row in rows]
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  distinct = len(set(values)) == len(values)
  one_dataset = len({row["dataset"] for row in rows}) == 1
  return key if numeric and distinct and one_dataset else None


def write_figure(table: Dict[str, Any], path: str) -> None:
  """Each row's per-seed values of every metric, the paper's marked; a curve
  over the swept value where ``curve_key`` finds one."""
  rows = table["rows"]
  key = curve_key(rows)
  if key is not None:
    title = os.path.commonpath([os.path.dirname(row["model"]) for row in rows])
    figures.curve(path, title=title, xlabel=key, xs=[row["swept"][key] for row in rows],
                  panels=[(TITLES[m], [row[m] for row in rows]) for m in METRICS])
    return
  models = [row["model"] for row in rows]
  common = os.path.commonpath(models) if len(rows) > 1 else ""
  # The directories' shared start is said once, in the title.
  labels = [os.path.relpath(m, common) if common and m != common else m for m in models]
  if len({row["dataset"] for row in rows}) > 1:
    labels = [f"{row['dataset']} {label}" for row, label in zip(rows, labels)]
  figures.per_seed(path, labels, title=common, panels=[
      (TITLES[m], [row[m] for row in rows], [row.get("paper", {}).get(m) for row in rows])
      for m in METRICS])


def write_tsne(points: Sequence[runs.Point], workdir: str, path: str,
               num_points: int) -> None:
  """One t-SNE panel per trained row of the table (``model_label``: a preset,
  or a swept value of one), from its first finished seed's latents: the
  embedding of that run's own figure where it has one of ``num_points``
  points (``outputs.write``), else one made now with seed 0."""
  panels, seen = [], set()
  for point in points:
    name, label = runs.point_dir(point), model_label(point)
    latents = os.path.join(workdir, name, "latents.npz")
    if label in seen or not os.path.exists(latents):
      continue
    seen.add(label)
    try:
      with np.load(latents) as f:  # Written by this package; no pickles allowed.
        z, labels = f["latents"], f["labels"]
        xy = f["tsne"] if "tsne" in f else None
    except (ValueError, KeyError, OSError, EOFError) as e:
      raise InputError(f"{latents} cannot be read as this package's latents ({one_line(e)})"
                       "; pickled objects are never loaded. Move it away and rerun") from None
    if xy is None or len(xy) != min(num_points, len(z)):
      xy = figures.tsne_embedding(z, num_points, seed=0)
    panels.append((name, xy, labels))
  if panels:
    figures.tsne(path, panels)
