"""Sweep launcher: runs a named sweep of a config file, then tabulates it.

  python -m softvq_jax.sweep --config=configs/mnist.py --sweep=table1 \
      --config.data.source=files --config.data.dir=../shared/datasets/mnist \
      --workdir=/tmp/table1 --results=experiments/results/table1/table1_mnist

Sweeps live beside a config file ``DIR/NAME.py`` in ``DIR/sweeps/NAME.py``
(``load_sweeps``), whose ``SWEEPS`` gives each name its list of
``runs.Point``s. The command-line ``--config.*`` overrides apply to every
point, after its preset (a key that the sweep varies cannot be overridden).
Each point runs in ``WORKDIR/<runs.point_dir(point)>``. Finished
runs are skipped and unfinished ones resume, so re-running the command
continues an interrupted sweep. Every point's config is validated before the
first run starts.

Points of one family (``runs.family``: they differ only by seed, and by the
value of one swept key of ``autoencoder.VMAPPABLE_KEYS`` such as
``model.noise_std``) train together in one vmapped program
(``--vmap_seeds``; ``train.num_seeds``, ``train.vmap_key``), and so do rows
whose configs differ only in one such key (``--pack_rows``: vae and beta_vae;
off by default, so that a table's recorded command repeats its bits).
``--num_shards=N --shard=i`` gives the i-th launcher every N-th family, so
that N launchers (processes, or machines sharing the workdir) split one
sweep; each writes the tables of all runs finished so far
(``softvq_jax.launch.tables``), and ``--aggregate_only`` rewrites them at the end.

The ``raw`` row evaluates the pixels themselves (the paper's "Raw Data").
Each point's run holds its workdir's lock while it runs: a second sweep
over the same workdir skips the points that the first one is running, and
says so (``locks.lock``).
"""

import concurrent.futures
import contextlib
import dataclasses
import importlib
import os
import sys
import threading
import time
import types
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence

from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError
from softvq_jax.errors import RunStopped
from softvq_jax.errors import one_line
from softvq_jax.launch import background
from softvq_jax.launch import checkpoints
from softvq_jax.launch import compilation
from softvq_jax.launch import distributed
from softvq_jax.launch import locks
from softvq_jax.launch import program as program_lib
from softvq_jax.launch import provenance
from softvq_jax.launch import runs
from softvq_jax.launch import tables
from softvq_jax.launch import train
from softvq_jax.launch import validation
from softvq_jax.launch import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file of the sweep.",
                                lock_config=True)
flags.DEFINE_string("sweep", None, "Name of a sweep of the config file's sweeps/ module.")
flags.DEFINE_string("workdir", None, "Parent directory of the runs' workdirs.")
flags.DEFINE_string("results", None, "Path prefix of the tables; default WORKDIR/SWEEP.")
flags.DEFINE_bool("aggregate_only", False, "Only tabulate the finished runs.")
flags.DEFINE_integer("num_shards", 1, "Split the points over this many launchers.")
flags.DEFINE_integer("shard", 0, "This launcher's shard, in [0, num_shards).")
flags.DEFINE_bool("vmap_seeds", True, "Train the seeds and swept scalar values of a "
                  "family together (train.num_seeds, train.vmap_key).")
flags.DEFINE_bool("pack_rows", False, "Train rows whose configs differ only in one "
                  "scalar of the bottleneck (vae and beta_vae: model.beta) together too; "
                  "their runs then round like vmapped seeds, not bit for bit as alone.")
flags.DEFINE_bool("compile_ahead", True, "Compile each launch's program while the one "
                  "before it trains (one-process runs).")
flags.DEFINE_bool("overlap_eval", True, "Evaluate each launch in a worker thread while "
                  "the next one trains (one-process runs).")
distributed.define_flags()
flags.mark_flags_as_required(["config", "sweep", "workdir"])

def load_sweeps(config_path: str) -> types.ModuleType:
  """The sweeps of the config file ``DIR/NAME.py``: the module ``DIR/sweeps/NAME.py``,
  imported as ``<DIR's name>.sweeps.NAME`` with DIR's parent on ``sys.path`` (so that it
  imports its config file as ``configs.NAME``). It holds ``SWEEPS`` (name: a function
  of no arguments returning the points) and, for the tables, ``PAPER_RESULTS``."""
  folder, filename = os.path.split(os.path.abspath(config_path))
  if not os.path.isfile(os.path.join(folder, "sweeps", filename)):
    raise InputError(f"{config_path} has no sweeps: they live in "
                     f"{os.path.join(os.path.dirname(config_path), 'sweeps', filename)}")
  if os.path.dirname(folder) not in sys.path:
    sys.path.insert(0, os.path.dirname(folder))
  module_name = f"{os.path.basename(folder)}.sweeps.{filename[:-3]}"
  try:
    return importlib.import_module(module_name)
  except Exception as e:  # A broken sweeps file is bad input, named as such.
    raise InputError(f"{module_name}: {type(e).__name__}: {e}") from e


def sweep_points(sweeps: types.ModuleType, name: str) -> List[runs.Point]:
  """The points of ``sweeps.SWEEPS[name]``; an unknown name lists the known ones."""
  if name not in sweeps.SWEEPS:
    *rest, last = sweeps.SWEEPS
    raise InputError(f"unknown sweep {name!r}; choose "
                     + (f"{', '.join(rest)} or {last}" if rest else last))
  return sweeps.SWEEPS[name]()


def shard_points(points: Sequence[runs.Point], shard: int,
                 num_shards: int) -> List[runs.Point]:
  """The points of one shard: every ``num_shards``-th family (``runs.family``),
  so that all seeds and swept values of a family can train together."""
  families = list(dict.fromkeys(runs.family(p) for p in points))
  mine = set(families[shard::num_shards])
  return [p for p in points if runs.family(p) in mine]


@dataclasses.dataclass(frozen=True)
class Options:
  """How a sweep runs its points (the flags of the same names)."""
  quick: bool = False  # Every point shrunk to a smoke test (--config=FILE:quick).
  vmap_seeds: bool = True  # A family's seeds and swept scalar values in one program.
  pack_rows: bool = False  # Rows that differ in one scalar in one program too.
  overlap_eval: bool = True  # Evaluate in a worker thread while the next launch trains.
  compile_ahead: bool = True  # Compile the next launch while one trains.


def plan(base: ml_collections.ConfigDict, points: Sequence[runs.Point], workdir: str,
         options: Options = Options(),
         command_line: Optional[Mapping[str, Any]] = None) -> List[runs.Launch]:
  """The launches of a sweep, in the order of its points.

  Unfinished points of one family (``runs.family``) whose latest checkpoints
  are at the same step (none for unstarted points) are grouped; with
  ``options.pack_rows``, groups whose configs differ only in one scalar of the
  bottleneck (``runs.merge_rows``: the vae and beta_vae rows) merge. Within
  a group, consecutive seeds and the values of its vmapped key become one
  launch with ``train.num_seeds`` and ``train.vmap_key`` (``options.vmap_seeds``)
  that resumes them together; ``train`` writes each run into the point's own
  workdir. Finished points (skipped) and ``raw`` points are launches alone.
  ``command_line`` (the ``--config.*`` overrides) applies to every point
  after its own overrides (``runs.point_config``); a key that the points
  set to different values cannot be overridden (``runs.check_command_line``).
  """
  runs.check_command_line(points, command_line or {})
  groups: Dict[Hashable, List[runs.Member]] = {}
  for i, point in enumerate(points):
    config = runs.point_config(base, point, options.quick, command_line)
    run_dir = os.path.join(workdir, runs.point_dir(point))
    alone = not options.vmap_seeds or point.raw or workdir_lib.finished(run_dir)
    group = ("alone", i) if alone else (runs.family(point), checkpoints.latest_step(run_dir))
    groups.setdefault(group, []).append((point, config))
  tagged = [(None if group[0] == "alone" or not options.pack_rows else group[1],
             runs.vmapped_key(members[0][0]), members) for group, members in groups.items()]
  return [launch for key, members in runs.merge_rows(tagged)
          for launch in runs.pack(members, workdir, key)]


def _data_key(data_config: ml_collections.ConfigDict) -> str:
  """Which dataset a launch trains on: its ``config.data``, as sorted JSON."""
  return data_config.to_json(sort_keys=True)


class Datasets:
  """A loader that keeps the last dataset it loaded, so that consecutive
  launches on the same ``config.data`` load it once per sweep; a launch
  being compiled ahead in another thread shares it (``load`` is locked)."""

  def __init__(self):
    self._key, self._splits, self._lock = None, None, threading.Lock()

  def load(self, data_config: ml_collections.ConfigDict) -> input_pipeline.Splits:
    key = _data_key(data_config)
    with self._lock:
      if key != self._key:
        self._key, self._splits = None, None  # The last one is freed first.
        self._splits, self._key = input_pipeline.load(data_config), key
      return self._splits


def _build_ahead(launch: runs.Launch, datasets: Datasets) -> Optional[program_lib.Program]:
  """The launch's program, compiled (``train.build_ahead``) on the data that
  ``datasets`` gives it; None if it fails: the launch then builds its own
  and reports the error."""
  try:
    data = datasets.load(launch.config.data)
    validation.validate_data(launch.config, data, len(launch.runs))
    return train.build_ahead(launch.config, data, launch.runs)
  except Exception as e:  # pylint: disable=broad-except
    logging.info("sweep: compiling %s ahead failed (%s); it compiles when it starts",
                 ", ".join(launch.names), one_line(e))
    return None


def _ahead(launches: Sequence[runs.Launch], i: int) -> bool:
  """Whether launch i is worth compiling while launch i-1 trains: it trains
  (neither raw nor finished) on launch i-1's data."""
  if not 0 < i < len(launches) or launches[i].raw:
    return False
  finished = all(workdir_lib.finished(run.workdir) for run in launches[i].runs)
  same_data = _data_key(launches[i].config.data) == _data_key(launches[i - 1].config.data)
  return not finished and same_data


def run(base: ml_collections.ConfigDict, points: Sequence[runs.Point], workdir: str,
        options: Options = Options(),
        command_line: Optional[Mapping[str, Any]] = None) -> List[str]:
  """Runs every point of the sweep that is not finished yet (see ``plan``).

  A run whose loss turns non-finite, or whose workdir another launcher holds,
  does not stop the sweep: it is logged, left out of the tables, and its
  names returned among the failures. In a one-process run, with
  ``options.overlap_eval`` each launch's evaluation runs in a worker thread while
  the next launch trains (``background.Evaluations``; an error there is
  raised once the next launch has trained, or at the end), and with
  ``options.compile_ahead`` the next launch's program compiles in another thread
  meanwhile (``train.build_ahead``).
  """
  validation.validate_workdir(workdir)
  launches = plan(base, points, workdir, options, command_line)
  for launch in launches:
    validation.validate_config(launch.config, jax.device_count())
  failed, pending, datasets = [], [], Datasets()
  one_process = jax.process_count() == 1
  ahead: Dict[int, concurrent.futures.Future] = {}  # Launches compiling ahead, by index.
  with contextlib.ExitStack() as stack:
    evaluations = stack.enter_context(
        background.Evaluations() if options.overlap_eval and one_process
        else background.InLine())
    compiles = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1, "compile_ahead"))
    stack.callback(lambda: [future.cancel() for future in ahead.values()])
    for i, launch in enumerate(launches):
      logging.info("sweep launch %d/%d: %s", i + 1, len(launches), ", ".join(launch.names))
      program = ahead.pop(i).result() if i in ahead else None
      if options.compile_ahead and one_process and _ahead(launches, i + 1):
        ahead[i + 1] = compiles.submit(_build_ahead, launches[i + 1], datasets)
      try:
        if launch.raw:
          train.evaluate_pixels(launch.config, launch.workdir, validated=True,
                                load=datasets.load)
        else:
          pending.append(train.launch(launch.config, launch.workdir, evaluations,
                                      validated=True, runs=launch.runs, program=program,
                                      load=datasets.load))
      except (FloatingPointError, locks.Locked) as e:
        logging.error("sweep launch %s not finished: %s", ", ".join(launch.names), e)
        failed.extend(launch.names)
      pending = _settle(pending, wait=False)
    _settle(pending, wait=True)
  return failed


def _settle(pending: List[concurrent.futures.Future],
            wait: bool) -> List[concurrent.futures.Future]:
  """Raises the error of any evaluation that ended with one (a diverged
  probe is a ``RunStopped``); returns those still running (``wait``: none)."""
  if wait:
    concurrent.futures.wait(pending)
  done = [future for future in pending if future.done()]
  for future in done:
    future.result()
  return [future for future in pending if future not in done]


def main(argv):
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {' '.join(argv[1:])!r}; every option is a "
                     "--flag")
  path, _, args = FLAGS["config"].config_filename.partition(":")
  sweeps = load_sweeps(path)
  failed, t_start = [], time.time()
  distributed.initialize_from_flags()
  compilation.enable_cache()
  distributed.check_same("config, sweep and workdir", "\n".join((
      FLAGS.config.to_json_best_effort(sort_keys=True), FLAGS.sweep,
      os.path.abspath(FLAGS.workdir), f"{FLAGS.shard}/{FLAGS.num_shards}")))
  points = sweep_points(sweeps, FLAGS.sweep)
  prefix = FLAGS.results or os.path.join(FLAGS.workdir, FLAGS.sweep)
  validation.writable(os.path.dirname(os.path.abspath(prefix)), "--results")
  if not FLAGS.aggregate_only:
    if not 0 <= FLAGS.shard < FLAGS.num_shards:
      raise InputError(f"--shard={FLAGS.shard} must be in [0, --num_shards={FLAGS.num_shards})")
    options = Options(quick="quick" in args.split(","), vmap_seeds=FLAGS.vmap_seeds,
                      pack_rows=FLAGS.pack_rows, overlap_eval=FLAGS.overlap_eval,
                      compile_ahead=FLAGS.compile_ahead)
    failed = run(FLAGS.config, shard_points(points, FLAGS.shard, FLAGS.num_shards),
                 FLAGS.workdir, options,
                 command_line=config_flags.get_override_values(FLAGS["config"]))
  table = tables.aggregate(points, FLAGS.workdir, getattr(sweeps, "PAPER_RESULTS", {}))
  if FLAGS.aggregate_only and not table["rows"]:
    raise InputError(f"no finished run of sweep {FLAGS.sweep} in {FLAGS.workdir}: nothing "
                     "to tabulate; run the sweep without --aggregate_only first")
  if table["missing"]:
    logging.warning("%s", tables.missing_line(table))
  table["protocol"] = {
      "command": " ".join(sys.argv),
      "config": workdir_lib.config_dict(FLAGS.config),
      "sweep": FLAGS.sweep,
      **provenance.environment(),
      "launcher_seconds": time.time() - t_start,  # This launcher's wall time, all runs.
  }
  if jax.process_index() == 0:
    tables.write_tables(table, prefix)
    if table["rows"]:
      tables.write_figure(table, prefix + "_metrics.png")
    tables.write_tsne(points, FLAGS.workdir, prefix + "_tsne.png",
                      FLAGS.config.eval.tsne_points)
    print(tables.markdown(table))
  if failed:
    raise RunStopped(f"{len(failed)} runs not finished (a non-finite loss, or another "
                     f"launcher holds them; see the log): {', '.join(failed)}")

