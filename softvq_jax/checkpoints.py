"""Orbax checkpoints of the runs trained together, one manager per run.

Each run keeps ``checkpoints/<step>`` in its own workdir, holding the
``TrainState`` of that run alone, so that a run trained with others reads
exactly like one trained alone and can be resumed either way.

* A checkpoint that cannot be read (a torn or damaged file; orbax raises a
  bare ``Exception`` for some) is skipped with a warning for the one before.
* A save that fails (a full disk) stops the run with ``RunStopped`` naming
  the last good checkpoint; training never goes on past it.
* Each checkpoint records the device count that wrote it: resuming on
  another count is allowed (data parallelism computes the same sums) but
  warned about, since the rest of the run is then not bit-identical.
"""

import contextlib
import os
import re
from typing import List, Optional

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from softvq_jax import steps
from softvq_jax.errors import RunStopped, first_line

# The usual causes of a failed save, as the OS words them inside orbax's errors.
_OS_ERRORS = re.compile(r"No space left on device|Disk quota exceeded|"
                        r"Read-only file system|Permission denied")


class Managers:
  """The checkpoint managers of runs whose states share a leading run axis."""

  def __init__(self, workdirs: List[str], max_to_keep: int):
    # Each manager saves the same steps at once: in a multi-process run their
    # barriers need names of their own (orbax keys them by step otherwise).
    self._managers = [ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=f"run{i}")))
        for i, workdir in enumerate(workdirs)]

  def restore(self, state: steps.TrainState, sharding) -> steps.TrainState:
    """The latest step that every run's checkpoints hold and can read.

    Falls back to older steps when a checkpoint is unreadable; returns
    ``state`` (the initial state, with the run axis) when there is none.
    """
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype,
                                                         sharding=sharding), state)
    common = set.intersection(*(set(m.all_steps()) for m in self._managers))
    for step in sorted(common, reverse=True):
      try:
        restored = [m.restore(step, args=ocp.args.StandardRestore(target))
                    for m in self._managers]
      except Exception as e:  # pylint: disable=broad-except
        # Orbax reports a damaged array file with a bare Exception.
        logging.warning("checkpoint %d is unreadable (%s); trying an older one", step,
                        first_line(e))
        continue
      logging.info("resumed from the checkpoints at step %d", step)
      self._warn_on_device_change(step)
      stack = lambda *xs: jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs)
      return jax.jit(stack, out_shardings=sharding)(*restored)
    return state

  def _warn_on_device_change(self, step: int) -> None:
    try:
      metadata = self._managers[0].metadata(step).custom_metadata or {}
    except Exception:  # pylint: disable=broad-except
      return  # A checkpoint from before the device count was recorded.
    saved = metadata.get("devices")
    if saved is not None and saved != jax.device_count():
      logging.warning("the checkpoint at step %d was written on %d devices and resumes on "
                      "%d: the rest of the run is not bit-identical to an uninterrupted "
                      "one", step, saved, jax.device_count())

  def save(self, step: int, state: steps.TrainState) -> None:
    """Saves each run's slice of ``state`` (asynchronously) at ``step``.

    Raises:
      RunStopped: this save, or the previous one, failed.
    """
    with self._stop_on_failure():
      for i, manager in enumerate(self._managers):
        manager.save(step, args=ocp.args.StandardSave(steps.run_slice(state, i)),
                     custom_metadata={"devices": jax.device_count()})

  def wait(self) -> None:
    """Blocks until every pending save is on disk.

    Raises:
      RunStopped: a pending save failed.
    """
    with self._stop_on_failure():
      for manager in self._managers:
        manager.wait_until_finished()

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
      cause = cause[0] if cause else first_line(e)
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
    if step is None:
      return "No checkpoint was saved yet: a rerun starts from step 0."
    return f"The last good checkpoint is at step {step}: rerun the same command to resume."
