"""Orbax checkpoints of the runs trained together, one manager per run.

Each run keeps ``checkpoints/<step>`` in its own workdir, holding the
``TrainState`` of that run alone, so that a run trained with others reads
exactly like one trained alone and can be resumed either way.
"""

import os
from typing import List

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from softvq_jax import steps


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
      except (OSError, ValueError, KeyError) as e:
        logging.warning("checkpoint %d unreadable (%s); trying an older one", step, e)
        continue
      logging.info("resumed from the checkpoints at step %d", step)
      stack = lambda *xs: jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs)
      return jax.jit(stack, out_shardings=sharding)(*restored)
    return state

  def save(self, step: int, state: steps.TrainState) -> None:
    """Saves each run's slice of ``state`` (asynchronously) at ``step``."""
    for i, manager in enumerate(self._managers):
      manager.save(step, args=ocp.args.StandardSave(steps.run_slice(state, i)))

  def wait(self) -> None:
    """Blocks until every pending save is on disk."""
    for manager in self._managers:
      manager.wait_until_finished()

  def latest_step(self):
    """The newest saved step of the first run, None if none."""
    return self._managers[0].latest_step()
