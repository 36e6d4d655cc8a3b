"""What a run is: typed sweep points, their directories, config overrides, and
runs trained together, packed into one config and unpacked.

A sweep is a list of ``Point``s, each one run: a row of the paper's tables
(a preset) with a seed, optionally a dataset, a named variant, and config
keys whose values name its directory (``point_dir``). A config with
``train.num_seeds > 1`` or ``train.vmap_key`` is several runs trained in one
program: ``pack`` makes such a config (a ``Launch``) of a family's points,
and ``unpack`` gives back each ``Run``, its single-run config and its
directory (``split``: its Point). Rows whose configs differ only in one such
scalar (the vae and beta_vae rows: ``model.beta``) pack together too
(``merge_rows``); their ``Launch`` names each run's directory.

Config files build points with these helpers; the engine reads their fields
and never parses a directory name back.
"""

import copy
import dataclasses
import os
from typing import Any, Dict, Hashable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import ml_collections

from softvq_jax.errors import InputError
from softvq_jax.launch import workdir as workdir_lib
from softvq_jax.model import autoencoder

Pairs = Tuple[Tuple[str, Any], ...]  # Dotted config keys and values, hashable.


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep (or of the runs that one config trains together)."""
  row: str = ""  # The paper's row (a preset name), "raw" for pixels; "" for none.
  seed: int = 0  # config.seed.
  dataset: str = ""  # data.name when the sweep spans datasets; "" keeps the base's.
  variant: str = ""  # A name for ``overrides`` in the directory; "" for none.
  swept: Pairs = ()  # Keys and values named in the directory, sorted by key.
  overrides: Pairs = ()  # Further overrides (the row's preset, ...), not named.

  @property
  def raw(self) -> bool:
    """The paper's "Raw Data" row: evaluate the pixels, train nothing."""
    return self.row == "raw"

  @property
  def paper_row(self) -> bool:
    """Exactly a row of the paper: no variant and no swept key."""
    return not self.variant and not self.swept

  def config_overrides(self) -> Dict[str, Any]:
    """Dotted-key overrides, applied in order: overrides, dataset, swept, seed."""
    dataset = {"data.name": self.dataset} if self.dataset else {}
    return {**dict(self.overrides), **dataset, **dict(self.swept), "seed": self.seed}


def point(row: str, seed: int, *, dataset: str = "", variant: str = "",
          swept: Mapping[str, Any] | None = None,
          overrides: Mapping[str, Any] | None = None) -> Point:
  """A ``Point`` from mappings; ``swept`` keys are sorted."""
  return Point(row=row, seed=seed, dataset=dataset, variant=variant,
               swept=tuple(sorted((swept or {}).items())),
               overrides=tuple((overrides or {}).items()))


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys (``"model.beta"``) of ``config``; unknown keys are errors."""
  for key, value in overrides.items():
    *parents, field = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if field not in node:
      raise KeyError(f"config has no key {key!r}")
    node[field] = value
  return config


def make_quick(config: ml_collections.ConfigDict) -> None:
  """Shrinks a config to a smoke test that runs in seconds."""
  config.train.num_steps = 20
  config.train.log_every = 10
  config.train.checkpoint_every = 10
  config.eval.kmeans_inits = 2
  config.eval.probe_steps = 50
  config.eval.tsne_points = 100


def point_config(base: ml_collections.ConfigDict, point: Point, quick: bool = False,
                 command_line: Optional[Mapping[str, Any]] = None
                 ) -> ml_collections.ConfigDict:
  """The config of one point: ``base`` with the point's overrides.

  ``quick`` (from ``--config=FILE:quick``) shrinks every point to a smoke
  test after the presets have set their step counts; ``command_line`` (the
  user's ``--config.*`` overrides, already in ``base``) applies last, so that
  it wins over the presets and ``quick`` as it does for a single run.

  Raises:
    InputError: ``command_line`` sets a key that the point sweeps.
  """
  command_line = dict(command_line or {})
  clash = sorted(set(command_line) & {key for key, _ in point.swept})
  if clash:
    raise InputError(f"--config.{clash[0]} is swept by this sweep; drop it from the "
                     "command line")
  config = copy.deepcopy(base)
  with config.unlocked():
    apply_overrides(config, point.config_overrides())
    if quick:
      make_quick(config)
    apply_overrides(config, {key: base[key] for key in command_line})
  return config


# The keys that the sweep sets in each launch (``plan``, ``pack``): never a
# command-line override of a sweep.
SWEEP_KEYS = ("seed", "train.num_seeds", "train.vmap_key", "train.vmap_values")


def check_command_line(points: Sequence[Point], command_line: Mapping[str, Any]) -> None:
  """Refuses a ``--config.*`` override that would erase what tells the
  sweep's points apart: one of ``SWEEP_KEYS``, or a key that the points
  (their presets, datasets, variants, swept keys) set to different values.
  Overriding it would train the same model under every row's name.

  Raises:
    InputError: naming the key and the values the rows give it.
  """
  owned = sorted(set(command_line) & set(SWEEP_KEYS))
  if owned:
    raise InputError(f"--config.{owned[0]} is set by the sweep itself (it packs seeds and "
                     "swept values into launches); drop it, and choose seeds in the "
                     "sweep's points, or shard with --shard/--num_shards")
  trained = [p for p in points if not p.raw]
  for key in sorted(command_line):
    values = {repr(p.config_overrides()[key]) if key in p.config_overrides() else None
              for p in trained}  # repr: values may be lists; None: the base's value.
    if len(values) > 1:
      shown = sorted(v for v in values if v is not None)
      shown += ["the default"] if None in values else []
      raise InputError(
          f"--config.{key} is set per row by this sweep ({', '.join(shown)}); overriding "
          "it would train one model under every row's name. Drop "
          "it, or run the rows alone (python -m softvq_jax.main --config=FILE:PRESET); "
          "--config=FILE:quick shortens every row")


def vmapped_key(point: Point) -> str:
  """The key whose values the point's family trains together, or ``""``.

  A point that sweeps exactly one key of ``autoencoder.VMAPPABLE_KEYS`` can train
  with the other values of that key (``train.vmap_key``).
  """
  if len(point.swept) == 1 and point.swept[0][0] in autoencoder.VMAPPABLE_KEYS:
    return point.swept[0][0]
  return ""


def family(point: Point) -> Tuple[Point, str]:
  """The point's family and its vmapped key: the point without its seed and
  without the value of that key. Runs of one family can train together."""
  key = vmapped_key(point)
  swept = ((key, None),) if key else point.swept
  return dataclasses.replace(point, seed=0, swept=swept), key


def split(config: ml_collections.ConfigDict
          ) -> List[Tuple[Point, ml_collections.ConfigDict]]:
  """The runs that ``config`` trains together, each with its single-run config.

  Seeds ``config.seed ... + train.num_seeds - 1`` times the values of
  ``train.vmap_key``, value-major. Each run's Point has its seed and swept
  value; its config is that of a run trained alone (``num_seeds = 1``, no
  ``vmap_key``), so that its workdir reads exactly like one.
  """
  key = config.train.vmap_key
  runs = []
  for value in config.train.vmap_values if key else (None,):
    for seed in range(config.seed, config.seed + config.train.num_seeds):
      single = copy.deepcopy(config)
      with single.unlocked():
        single.seed, single.train.num_seeds = seed, 1
        single.train.vmap_key, single.train.vmap_values = "", ()
        single.train.runs_together = "vmap"  # How it was packed is not its config.
        swept = {key: value} if key else {}
        apply_overrides(single, swept)
      runs.append((point("", seed, swept=swept), single))
  return runs


def scalars(config: ml_collections.ConfigDict,
            run_configs: List[ml_collections.ConfigDict]) -> Dict[str, List[float]]:
  """The ``train.vmap_key`` value of each run, keyed by its ``config.model``
  key (``autoencoder.make_bottleneck``'s ``scalars``); ``{}`` if none."""
  key = config.train.vmap_key
  if not key:
    return {}
  return {key.removeprefix("model."): [float(c[key]) for c in run_configs]}


# The directory part that marks a point evaluated on the validation hold-out.
VALIDATION_DIR = "validation"


def point_parts(point: Point, *, split: bool = True) -> List[str]:
  """The names of a point's directories below its sweep's workdir, the seed's
  excepted: ``[<dataset>, ][<row>, ][validation, ][<variant>, ][<key>_<value>, ...]``,
  one ``<key>_<value>`` per swept key, named by its last component.
  ``validation`` (``split``) marks a point evaluated on a hold-out of the
  training images (``data.validation_size``), so that a setting chosen on
  validation and then run on the test split gets two directories in one
  sweep workdir."""
  held_out = split and point.config_overrides().get("data.validation_size")
  validation = VALIDATION_DIR if held_out else ""
  parts = [part for part in (point.dataset, point.row, validation, point.variant) if part]
  return parts + [f"{key.rsplit('.', 1)[-1]}_{value}" for key, value in point.swept]


def point_dir(point: Point) -> str:
  """The directory of a run below its sweep's (or vmapped config's) workdir:
  ``point_parts``, then ``seed_<seed>`` (``soft_vq_vae/noise_std_0.05/seed_0``,
  ``beta_vae/validation/beta_5.0/seed_0``)."""
  return os.path.join(*point_parts(point), f"seed_{point.seed}")


class Run(NamedTuple):
  """One run: its single-run config and its workdir."""
  config: ml_collections.ConfigDict
  workdir: str


def unpack(config: ml_collections.ConfigDict, workdir: str) -> List[Run]:
  """Every run that ``config`` trains together (``split``); the inverse of
  ``pack``.

  A plain config is one run in ``workdir``. Otherwise each run (a seed of
  ``train.num_seeds``, times a value of ``train.vmap_key``) has the config
  of a run trained alone and its own workdir, ``point_dir`` of its
  point below ``workdir``: ``seed_<s>`` or ``<key>_<v>/seed_<s>``.
  """
  if config.train.num_seeds == 1 and not config.train.vmap_key:
    return [Run(config, workdir)]
  return [Run(single, os.path.join(workdir, point_dir(point)))
          for point, single in split(config)]


Member = Tuple[Point, ml_collections.ConfigDict]


@dataclasses.dataclass
class Launch:
  """One process-level run of a sweep: one point, or several trained together."""
  points: List[Point]  # The sweep points it finishes.
  config: ml_collections.ConfigDict
  workdir: str  # The runs' common parent (a single run's own directory).
  runs: List[Run]  # Each point's run, in ``split`` order: its config and directory.

  @property
  def names(self) -> List[str]:
    """The points' directories below the sweep's workdir."""
    return [point_dir(point) for point in self.points]

  @property
  def raw(self) -> bool:
    return self.points[0].raw


def row_key(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> str:
  """The one scalar that ``a``'s bottleneck reads (``autoencoder.BottleneckSpec.scalars``)
  in which the single-run configs ``a`` and ``b`` differ, their seeds aside, so
  that they can train together with ``train.vmap_key`` set to it; ``""`` if
  they differ in anything else too, or in nothing."""
  differ = [key for key, _, _ in workdir_lib.differing_keys(workdir_lib.config_dict(a),
                                                            workdir_lib.config_dict(b))
            if key != "seed"]
  scalars = autoencoder.BOTTLENECKS[a.model.bottleneck].scalars
  if len(differ) == 1 and differ[0].removeprefix("model.") in scalars:
    return differ[0]
  return ""


def merge_rows(groups: Sequence[Tuple[Hashable, str, List[Member]]]
               ) -> List[Tuple[str, List[Member]]]:
  """Groups of points, merged where their configs differ only in one scalar
  that the bottleneck reads (``row_key``), e.g. the vae and beta_vae rows
  (``model.beta``), so that they train in one program.

  Each group is ``(tag, key, members)``: members of one family
  (``family``) and its vmapped key (``""``: none). Groups merge only with
  groups of an equal tag (the sweep's: the step they resume from), never
  with a tag of None, along one key, and only with values of it that the
  other group lacks. Returns ``(key, members)`` per merged group, in the
  order of the first group of each.
  """
  merged: List[Tuple[Hashable, str, List[Member]]] = []
  for tag, key, members in groups:
    for i, (other_tag, other_key, other) in enumerate(merged):
      shared = row_key(other[0][1], members[0][1]) if tag is not None else ""
      if (tag == other_tag and shared and {key, other_key} <= {"", shared}
          and not _values(members, shared) & _values(other, shared)):
        merged[i] = (tag, shared, other + members)
        break
    else:
      merged.append((tag, key, list(members)))
  return [(key, members) for _, key, members in merged]


def _values(members: List[Member], key: str) -> set:
  return {config[key] for _, config in members}


def _consecutive(members: List[Member]) -> List[List[Member]]:
  """Members split into runs of consecutive seeds."""
  members = sorted(members, key=lambda member: member[1].seed)
  groups = [[members[0]]]
  for member in members[1:]:
    if member[1].seed == groups[-1][-1][1].seed + 1:
      groups[-1].append(member)
    else:
      groups.append([member])
  return groups


def pack(members: List[Member], workdir: str, key: str) -> List[Launch]:
  """The launches of a group of points whose configs differ only in their
  seeds and in the scalar ``key`` (``""``: none): the values of ``key`` that
  share a run of consecutive seeds train together, packed into one config
  (``train.num_seeds``, ``train.vmap_key``). Each launch's ``runs`` are
  ``split`` of its config, each in its point's directory below ``workdir``;
  for points of one family (``family``) these are ``unpack``'s."""
  by_value: Dict[Hashable, List[Member]] = {}
  for point, config in members:
    by_value.setdefault(config[key] if key else None, []).append((point, config))
  by_seeds: Dict[tuple, List[Tuple[Hashable, List[Member]]]] = {}
  for value, value_members in by_value.items():
    for seed_members in _consecutive(value_members):
      seeds = tuple(config.seed for _, config in seed_members)
      by_seeds.setdefault(seeds, []).append((value, seed_members))
  launches = []
  for seeds, entries in by_seeds.items():
    points = [point for _, seed_members in entries for point, _ in seed_members]
    config = copy.deepcopy(entries[0][1][0][1])
    dirs = [os.path.join(workdir, point_dir(point)) for point in points]
    if len(points) == 1:
      launches.append(Launch(points, config, dirs[0], [Run(config, dirs[0])]))
      continue
    with config.unlocked():
      config.train.num_seeds = len(seeds)
      if len(entries) > 1:
        config.train.vmap_key = key
        config.train.vmap_values = tuple(value for value, _ in entries)
    run_list = [Run(single, directory) for (_, single), directory in zip(split(config), dirs)]
    launches.append(Launch(points, config, os.path.commonpath(dirs), run_list))
  return launches
