"""The training loop: ``train_loop`` steps a ``program.Program``'s runs to
``train.num_steps``, logging and checkpointing between chunks of steps.

A chunk ends at each log or checkpoint step; it is cut into dispatches of
at most about ``MAX_DISPATCH_SECONDS`` (``_Pace``), so that a signal
(Ctrl-C, a scheduler's SIGTERM) is seen soon enough to save the last
finished step and exit. A non-finite step raises ``Diverged``, naming it;
the last good checkpoint is kept.
"""

import math
import time
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from softvq_jax.errors import RunStopped
from softvq_jax.errors import one_line
from softvq_jax.launch import checkpoints
from softvq_jax.launch import program as program_lib
from softvq_jax.launch import runs as runs_lib
from softvq_jax.launch import signals
from softvq_jax.launch import steps
from softvq_jax.launch import training_log


class Diverged(FloatingPointError):
  """A non-finite loss or gradient in the chunk of steps from ``from_step``."""

  def __init__(self, message: str, from_step: int):
    super().__init__(message)
    self.from_step = from_step


def train_loop(state: steps.TrainState, program: program_lib.Program, runs: List[runs_lib.Run],
               train_config: ml_collections.ConfigDict,
               managers: checkpoints.Managers) -> steps.TrainState:
  """Trains from ``state.step`` to ``train.num_steps``, logging and checkpointing.

  Raises:
    FloatingPointError: a non-finite step; the last good checkpoint is kept.
    RunStopped: a checkpoint could not be saved.
    KeyboardInterrupt: Ctrl-C, once the pending saves are on disk; its
      message names the step a rerun resumes from.
  """
  step = int(state.step[0])
  logs = [training_log.MetricsLog(run.workdir, step, enabled=jax.process_index() == 0)
          for run in runs]
  try:
    state = _train_chunks(state, program, runs, train_config, managers, logs)
    managers.wait()
  except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (signals.Terminated).
    managers.wait()
    cause = str(e) or "stopped by Ctrl-C"
    raise signals.restated(e, f"{cause}. {managers.last_good()}") from None
  finally:
    for log in logs:
      log.close()
  return state


# One dispatch of jitted steps lasts about this long at most, so that the loop
# sees a signal (a scheduler's SIGTERM) soon enough to save and exit.
MAX_DISPATCH_SECONDS = 10.0
# The first dispatch's bound, before the loop has measured a step's time.
FIRST_DISPATCH_STEPS = 1024


def _chunk_end(train_config: ml_collections.ConfigDict, step: int) -> int:
  """The end of the chunk from ``step``: the next log or checkpoint step."""
  log_every, checkpoint_every = train_config.log_every, train_config.checkpoint_every
  return min(train_config.num_steps, (step // log_every + 1) * log_every,
             (step // checkpoint_every + 1) * checkpoint_every)


def first_dispatch(train_config: ml_collections.ConfigDict, step: int = 0) -> int:
  """The number of steps of a launch's first dispatch from ``step``
  (``_train_chunks`` and ``_Pace``): what to compile ahead."""
  return min(_chunk_end(train_config, step) - step, FIRST_DISPATCH_STEPS)


class _Pace:
  """Dispatch lengths of at most ``MAX_DISPATCH_SECONDS``: powers of two (few
  programs to compile), from the time per step of dispatches whose program
  was already compiled, or of any dispatch that overran (its compile time
  makes the estimate safe: shorter). The first dispatch of a launch is not
  bounded in time. Splitting a chunk into dispatches leaves its bits
  unchanged: each step is the same function of ``fold_in(rng, step)``."""

  def __init__(self):
    self.limit, self._compiled = FIRST_DISPATCH_STEPS, set()

  def record(self, num_steps: int, seconds: float) -> None:
    if seconds > 0 and (num_steps in self._compiled or seconds > MAX_DISPATCH_SECONDS):
      fits = MAX_DISPATCH_SECONDS * num_steps / seconds
      self.limit = 2 ** max(0, math.floor(math.log2(fits))) if fits >= 1 else 1
    self._compiled.add(num_steps)


def _run_chunk(state: steps.TrainState, program: program_lib.Program, runs: List[runs_lib.Run],
               chunk_end: int, pace: _Pace, managers: checkpoints.Managers
               ) -> Tuple[steps.TrainState, Dict]:
  """Steps ``state.step`` to ``chunk_end`` in dispatches of ``pace.limit``
  steps at most; the state and the chunk's stacked metrics.

  Raises:
    Diverged: a non-finite step, once the pending saves are on disk.
  """
  parts, start = [], int(state.step[0])
  step = start
  while step < chunk_end:
    length, t0 = min(chunk_end - step, pace.limit), time.time()
    try:
      state, metrics = program.run_steps(state, program.images, program.train_rngs,
                                         program.scalars, num_steps=length)
      reached = np.asarray(state.step)
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" in str(e):
        raise  # Out of memory: softvq_jax.launch.cli says so.
      # A collective whose peer died (another process, a device): no save can
      # finish either, so none is waited for.
      raise RunStopped(f"the runtime failed in steps {step}-{step + length} ({one_line(e)}); "
                       "if another process died, rerun every process. "
                       f"{managers.last_good()}") from e
    pace.record(length, time.time() - t0)
    if np.any(reached != step + length):
      managers.wait()
      bad = [(run.workdir, int(r)) for run, r in zip(runs, reached) if r != step + length]
      raise Diverged(
          "non-finite loss or gradient at step "
          + ", ".join(f"{r} ({d})" if len(runs) > 1 else str(r) for d, r in bad)
          + f"; stopped. {managers.last_good()}", from_step=start)
    step += length
    parts.append(metrics)
  return state, jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts)


def _train_chunks(state: steps.TrainState, program: program_lib.Program, runs: List[runs_lib.Run],
                  train_config: ml_collections.ConfigDict, managers: checkpoints.Managers,
                  logs: List[training_log.MetricsLog]) -> steps.TrainState:
  """``train_loop``'s loop: chunks of steps up to each log or checkpoint. On
  Ctrl-C, SIGTERM or SIGHUP it saves the last finished chunk's state first."""
  num_steps, log_every = train_config.num_steps, train_config.log_every
  checkpoint_every = train_config.checkpoint_every
  step, pace = int(state.step[0]), _Pace()
  try:
    while step < num_steps:
      signals.check()
      chunk_end = _chunk_end(train_config, step)
      t0 = time.time()
      state, metrics = _run_chunk(state, program, runs, chunk_end, pace, managers)
      rate, step = (chunk_end - step) / (time.time() - t0), chunk_end
      if step % log_every == 0 or step == num_steps:
        metrics = jax.device_get(metrics)
        for i, log in enumerate(logs):
          log.write(step, {k: float(np.mean(v[i])) for k, v in metrics.items()}, rate,
                    eta=(num_steps - step) / rate)
      if step % checkpoint_every == 0 or step == num_steps:
        managers.save(step, state)
  except KeyboardInterrupt:
    reached = int(state.step[0])  # Of the last chunk that finished.
    if reached and managers.latest_step() != reached:
      managers.save(reached, state)  # A preemption notice: keep the steps done.
    raise
  return state
