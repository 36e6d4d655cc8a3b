"""Orbax checkpoints of the runs trained together, one manager per run.

Each run keeps ``checkpoints/<step>`` in its own workdir, holding the
``TrainState`` of that run alone, so that a run trained with others reads
exactly like one trained alone and can be resumed either way.

* Each finished checkpoint gets a manifest of its files' sha256 sums,
  ``checksums/<step>.json`` in the run's workdir, written once orbax has
  finalised it. A checkpoint whose files do not match its manifest, or
  that orbax cannot read (a torn or damaged file; orbax raises a bare
  ``Exception`` for some), is set aside: moved, never deleted, to
  ``set_aside/checkpoint_<step>``, with a warning; the next older one is
  tried. ``set_aside`` also takes a checkpoint that ``train`` finds
  diverging in its first steps. Every later error line names what was set
  aside (``last_good``). A checkpoint without a manifest (one from before
  manifests, or a run killed between orbax's finalisation and the
  manifest) is restored unverified.
* Saves and waits run with Ctrl-C and SIGTERM deferred to their end
  (``signals.deferred``), so that no checkpoint is left half-written.
* A save that fails (a full disk) stops the run with ``RunStopped`` naming
  the last good checkpoint; training never goes on past it.
* Each checkpoint records the device count that wrote it: resuming on
  another count is allowed (data parallelism computes the same sums) but
  warned about, since the rest of the run is then not bit-identical.
* Each checkpoint records its run's provenance: the resolved config and
  the fingerprint of the training images (``input_pipeline.fingerprint``).
  ``check_provenance`` refuses, before anything is written, checkpoints
  of another config (even with config.json gone) or of other data (even
  where no md5 guards it). Checkpoints from before provenance was recorded
  resume unchecked.
"""

import contextlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from softvq_jax.data import download
from softvq_jax.errors import InputError
from softvq_jax.errors import RunStopped
from softvq_jax.errors import one_line
from softvq_jax.launch import signals
from softvq_jax.launch import steps
from softvq_jax.launch import workdir as workdir_lib

CHECKPOINTS_DIR = "checkpoints"
CHECKSUMS_DIR = "checksums"
SET_ASIDE_DIR = "set_aside"

# The usual causes of a failed save, as the OS words them inside orbax's errors.
_OS_ERRORS = re.compile(r"No space left on device|Disk quota exceeded|"
                        r"Read-only file system|Permission denied")


def latest_step(workdir: str) -> int:
  """The step of the newest checkpoint directory of a run, 0 if none."""
  directory = os.path.join(workdir, CHECKPOINTS_DIR)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return max([int(name) for name in names if name.isdigit()], default=0)


def _file_sums(directory: str) -> Dict[str, str]:
  """The sha256 of every file below ``directory``, keyed by relative path."""
  return {os.path.relpath(os.path.join(root, name), directory):
          download.digest_of(os.path.join(root, name))
          for root, _, names in os.walk(directory) for name in names}


class _Run:
  """The checkpoint files of one run: step directories, manifests, set-asides."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.workdir, CHECKPOINTS_DIR, str(step))

  def manifest(self, step: int) -> str:
    return os.path.join(self.workdir, CHECKSUMS_DIR, f"{step}.json")

  def seal(self, steps_on_disk: List[int]) -> None:
    """Writes the manifest of every finished step that lacks one, and drops
    the manifests of steps orbax has deleted (``max_to_keep``)."""
    os.makedirs(os.path.join(self.workdir, CHECKSUMS_DIR), exist_ok=True)
    for step in steps_on_disk:
      if not os.path.exists(self.manifest(step)):
        tmp = self.manifest(step) + ".tmp"
        with open(tmp, "w") as f:
          json.dump(_file_sums(self.step_dir(step)), f, indent=1, sort_keys=True)
        os.replace(tmp, self.manifest(step))
    for name in os.listdir(os.path.join(self.workdir, CHECKSUMS_DIR)):
      step = name.removesuffix(".json")
      if step.isdigit() and int(step) not in steps_on_disk:
        os.remove(os.path.join(self.workdir, CHECKSUMS_DIR, name))

  def damage(self, step: int) -> Optional[str]:
    """Why the files of ``step`` do not match its manifest; None if they do
    (or there is no manifest)."""
    if not os.path.exists(self.manifest(step)):
      return None
    try:
      with open(self.manifest(step)) as f:
        expected = json.load(f)
    except ValueError:
      return f"its manifest {self.manifest(step)} is not JSON"
    found = _file_sums(self.step_dir(step))
    changed = sorted(p for p in set(expected) | set(found) if expected.get(p) != found.get(p))
    return f"sha256 mismatch in {changed[0]}" if changed else None

  def set_aside(self, step: int) -> str:
    """Moves ``step``'s directory (and manifest) to ``set_aside/``; its new path."""
    directory = os.path.join(self.workdir, SET_ASIDE_DIR)
    os.makedirs(directory, exist_ok=True)
    target, n = os.path.join(directory, f"checkpoint_{step}"), 1
    while os.path.exists(target):
      n += 1
      target = os.path.join(directory, f"checkpoint_{step}.{n}")
    os.replace(self.step_dir(step), target)
    if os.path.exists(self.manifest(step)):
      os.replace(self.manifest(step), target + ".checksums.json")
    return target


def provenance_changes(recorded: Dict[str, Any], expected: Dict[str, Any]) -> List[str]:
  """How a checkpoint's recorded provenance (``{"config", "data"}``, either
  absent in older checkpoints) differs from the command's, one phrase each."""
  changes = []
  if "config" in recorded and "config" in expected:
    changes += workdir_lib.differences(recorded["config"], expected["config"],
                                       where="in the checkpoint")
  if recorded.get("data", expected.get("data")) != expected.get("data"):
    changes.append(f"training images {recorded['data']} in the checkpoint, "
                   f"{expected['data']} now")
  return changes


class Managers:
  """The checkpoint managers of runs whose states share a leading run axis.

  ``provenance``: each run's ``{"config": ..., "data": ...}``, recorded in
  its checkpoints and checked by ``check_provenance``.
  """

  def __init__(self, workdirs: List[str], max_to_keep: int,
               provenance: Optional[Sequence[Dict[str, Any]]] = None):
    self._runs = [_Run(workdir) for workdir in workdirs]
    self._provenance = list(provenance or [{} for _ in workdirs])
    self.set_aside_paths: List[str] = []
    # Each manager saves the same steps at once: in a multi-process run their
    # barriers need names of their own (orbax keys them by step otherwise).
    self._managers = [ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, CHECKPOINTS_DIR)),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=f"run{i}")))
        for i, workdir in enumerate(workdirs)]

  def restore(self, state: steps.TrainState, sharding) -> steps.TrainState:
    """The latest step that every run's checkpoints hold, match their
    manifests and can be read.

    Sets aside the steps that fail, for older ones; returns ``state`` (the
    initial state, with the run axis) when there is none.
    """
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype,
                                                         sharding=sharding), state)
    common = set.intersection(*(set(m.all_steps()) for m in self._managers))
    for step in sorted(common, reverse=True):
      damage = next(filter(None, (run.damage(step) for run in self._runs)), None)
      if damage:
        self.set_aside(step, damage)
        continue
      try:
        restored = [m.restore(step, args=ocp.args.StandardRestore(target))
                    for m in self._managers]
      except Exception as e:  # pylint: disable=broad-except
        # Orbax reports a damaged array file with a bare Exception.
        self.set_aside(step, f"unreadable: {one_line(e)}")
        continue
      logging.info("resumed from the checkpoints at step %d", step)
      self._warn_on_device_change(step)
      stack = lambda *xs: jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs)
      return jax.jit(stack, out_shardings=sharding)(*restored)
    return state

  def check_provenance(self) -> None:
    """Refuses checkpoints that another config or other data wrote.

    Raises:
      InputError: one line naming the run, the step and what differs.
    """
    for run, manager, expected in zip(self._runs, self._managers, self._provenance):
      for step in sorted(manager.all_steps(), reverse=True):
        changes = provenance_changes(self._custom_metadata(manager, step), expected)
        if changes:
          raise InputError(f"{run.workdir} holds checkpoints of another run (step {step}: "
                           + "; ".join(changes) + "); rerun the command that wrote them, "
                           "or use a new --workdir")

  @staticmethod
  def _custom_metadata(manager: ocp.CheckpointManager, step: int) -> Dict[str, Any]:
    """What ``save`` recorded beside ``step``; {} for an older or unreadable
    checkpoint (``restore`` sets an unreadable one aside)."""
    try:
      return manager.metadata(step).custom_metadata or {}
    except Exception:  # pylint: disable=broad-except
      return {}

  def set_aside(self, step: int, reason: str) -> None:
    """Moves every run's checkpoint at ``step`` to its ``set_aside/``
    (process 0 alone), so that they resume together from an older step."""
    if jax.process_index() == 0:
      paths = [run.set_aside(step) for run in self._runs]
      self.set_aside_paths += paths
      logging.warning("checkpoint %d set aside (%s): moved to %s; trying an older one",
                      step, reason, ", ".join(paths))
    for manager in self._managers:
      manager.reload()

  def _warn_on_device_change(self, step: int) -> None:
    saved = self._custom_metadata(self._managers[0], step).get("devices")
    if saved is not None and saved != jax.device_count():
      logging.warning("the checkpoint at step %d was written on %d devices and resumes on "
                      "%d: the rest of the run is not bit-identical to an uninterrupted "
                      "one", step, saved, jax.device_count())

  def save(self, step: int, state: steps.TrainState) -> None:
    """Saves each run's slice of ``state`` (asynchronously) at ``step``.

    Raises:
      RunStopped: this save, or the previous one, failed.
    """
    with signals.deferred(), self._stop_on_failure():
      self._seal()
      for i, manager in enumerate(self._managers):
        manager.save(step, args=ocp.args.StandardSave(steps.run_slice(state, i)),
                     custom_metadata={"devices": jax.device_count(),
                                      **self._provenance[i]})

  def wait(self) -> None:
    """Blocks until every pending save is on disk.

    Raises:
      RunStopped: a pending save failed.
    """
    with signals.deferred(), self._stop_on_failure():
      self._seal()

  def _seal(self) -> None:
    """Waits for the saves in flight, then writes the finished steps'
    manifests (process 0 alone)."""
    for manager in self._managers:
      manager.wait_until_finished()
    if jax.process_index() == 0:
      for run, manager in zip(self._runs, self._managers):
        run.seal(list(manager.all_steps()))

  @contextlib.contextmanager
  def _stop_on_failure(self):
    """Turns a failed save (this one, or an earlier asynchronous one) into
    ``RunStopped``, once every save still in flight has ended."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      for manager in self._managers:
        try:
          manager.wait_until_finished()
          manager.close()
        except Exception:  # pylint: disable=broad-except
          pass  # The failure reported below covers it.
      cause = _OS_ERRORS.search(str(e))
      cause = cause[0] if cause else one_line(e)
      raise RunStopped(f"saving a checkpoint in {self._managers[0].directory} failed "
                       f"({cause}); check the space and permissions of its disk. "
                       f"{self.last_good()}") from e

  def latest_step(self) -> Optional[int]:
    """The newest step that every run's checkpoints hold, None if none."""
    common = set.intersection(*(set(m.all_steps()) for m in self._managers))
    return max(common, default=None)

  def last_good(self) -> str:
    """Where a rerun of the same command resumes, as a sentence."""
    step = self.latest_step()
    set_aside = (f" Set aside as damaged: {', '.join(self.set_aside_paths)}."
                 if self.set_aside_paths else "")
    if step is None:
      return f"No checkpoint was saved yet: a rerun starts from step 0.{set_aside}"
    return (f"The last good checkpoint is at step {step}: rerun the same command to "
            f"resume.{set_aside}")
