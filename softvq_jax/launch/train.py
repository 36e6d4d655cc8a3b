"""Training and evaluation of one run: ``train_and_evaluate(config, workdir)``.

Design (the jittable step itself is ``softvq_jax.launch.steps``):
* ``train_and_evaluate`` composes named steps: ``prepare_runs`` (validate
  the config and the workdir, check the runs' workdirs), ``load_data`` (load,
  check the config against the data), then under the workdirs' locks
  (``locks.lock``) ``write_configs``, ``build_program`` (model, optimizer,
  mesh and keys; the jitted init and steps), restore or init
  (``checkpoints``), ``train_loop`` and ``evaluate_run`` per run. Nothing is
  written before the locks are held and every check has passed.
* Data parallelism uses a 1-D ``jax.sharding.Mesh`` over all devices: state
  and data are replicated, the global batch is sharded over the ``data``
  axis and XLA inserts the gradient all-reduce. The same code runs on many
  hosts after ``jax.distributed.initialize()`` (see README).
* ``train.num_seeds`` seeds, times the ``train.vmap_values`` of one scalar
  ``train.vmap_key`` (e.g. ``model.noise_std``), train together, vmapped over
  a leading run axis of the state; the scalar enters the step as a traced
  value. Each run keeps its own workdir, checkpoints and results.
* A non-finite step stops the run with an error naming the step; the last
  good checkpoint is kept.

Workdir contents: ``config.json``, ``checkpoints/`` (orbax), ``metrics.jsonl``,
``tensorboard/``, and at the end ``eval.json``, ``latents.npz``,
``timing.json`` and figures.
"""

import dataclasses
import functools
import json
import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from softvq_jax import evaluation
from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError
from softvq_jax.errors import RunStopped
from softvq_jax.errors import one_line
from softvq_jax.launch import checkpoints
from softvq_jax.launch import compilation
from softvq_jax.launch import locks
from softvq_jax.launch import outputs
from softvq_jax.launch import provenance
from softvq_jax.launch import runs as runs_lib
from softvq_jax.launch import signals
from softvq_jax.launch import steps
from softvq_jax.launch import training_log
from softvq_jax.launch import validation
from softvq_jax.launch import workdir as workdir_lib
from softvq_jax.model import autoencoder


class Diverged(FloatingPointError):
  """A non-finite loss or gradient in the chunk of steps from ``from_step``."""

  def __init__(self, message: str, from_step: int):
    super().__init__(message)
    self.from_step = from_step


def prepare_runs(config: ml_collections.ConfigDict, workdir: str, validated: bool = False
                 ) -> Tuple[List[runs_lib.Run], Optional[List[Dict[str, Any]]]]:
  """Validates ``config`` (unless ``validated``: the sweep validates every
  launch before the first) and the workdirs, and checks the runs' workdirs.
  The runs' single-run configs need no check of their own: they differ from
  ``config`` only in values that its validation covers (seeds, vmap values).

  Returns:
    The runs, and the stored results of each when every run is finished
    (None otherwise).

  Raises:
    InputError: an invalid config or workdir, a workdir of another config,
      or only some of the runs finished.
  """
  if not validated:
    validation.validate_config(config, jax.device_count())
  runs = runs_lib.unpack(config, workdir)
  # A single run's workdir is ``workdir`` itself: each directory is checked once.
  for path in dict.fromkeys([workdir] + [run.workdir for run in runs]):
    validation.validate_workdir(path)
  return runs, finished_results(runs, workdir)


def finished_results(runs: List[runs_lib.Run], workdir: str) -> Optional[List[Dict[str, Any]]]:
  """The stored results of every run, None if none is finished.

  Raises:
    InputError: a workdir of another config, or only some runs finished.
  """
  finished = [workdir_lib.check(run.config, run.workdir) for run in runs]
  if all(f is not None for f in finished):
    logging.info("%s already holds finished runs of this config", workdir)
    return finished
  if any(f is not None for f in finished):
    raise InputError(f"{workdir} holds finished runs for some of its runs only; train "
                     "the others alone (--config.seed, the swept key), or use a new --workdir")
  return None


def load_data(config: ml_collections.ConfigDict, num_runs: int) -> input_pipeline.Splits:
  """Loads the data and checks the config against it (nothing is written)."""
  data = input_pipeline.load(config.data)
  validation.validate_data(config, data, num_runs)
  return data


def write_configs(runs: List[runs_lib.Run]) -> None:
  """Each run's config.json: the first write of a run (process 0 alone)."""
  if jax.process_index() == 0:
    for run in runs:
      workdir_lib.write_config(run.config, run.workdir)


@dataclasses.dataclass(frozen=True)
class Program:
  """What the runs trained together share: data on device, keys, jitted steps."""
  images: jax.Array  # The training split, replicated over the mesh.
  init_rngs: jax.Array  # (R,) keys of the runs' initialisation.
  train_rngs: jax.Array  # (R,) keys of the runs' data order and noise.
  scalars: Dict[str, jax.Array]  # The runs' train.vmap_key values, (R,) each.
  init: Callable[..., steps.TrainState]  # (init_rngs, images) -> state, run axis first.
  run_steps: Callable[..., Tuple[steps.TrainState, Dict]]  # (state, images, rngs,
  # scalars, num_steps) -> (state, stacked metrics).
  sharding: jax.sharding.Sharding  # Of the state: replicated.


def build_program(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
                  runs: List[runs_lib.Run]) -> Program:
  """The model, optimizer, mesh and keys, and the jitted init and steps."""
  num_runs = len(runs)
  model_fn = functools.partial(autoencoder.make_model, config.model, data.image_shape,
                                    compute_dtype=config.train.compute_dtype)
  optimizer = steps.make_optimizer(config.train)
  keys = jnp.stack([jnp.stack(jax.random.split(jax.random.key(run.config.seed)))
                    for run in runs])
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  # Every process holds the whole (small) split; this works across hosts too.
  images = jax.make_array_from_callback(data.train_images.shape, replicated,
                                        lambda index: data.train_images[index])

  def init(rng, train_rng, images):
    first_batch = steps.step_batch(train_rng, 0, images, config.train.batch_size)[0]
    return steps.init_state(rng, model_fn({}), optimizer,
                            steps.init_images(rng, images, config.model), first_batch)
  runs_together = config.train.runs_together
  chunk = functools.partial(
      steps.train_chunk, num_runs=num_runs, runs_together=runs_together, model_fn=model_fn,
      optimizer=optimizer,
      batch_size=config.train.batch_size, pixel_var=data.pixel_variance,
      batch_sharding=batch_sharding)
  cheap, guarded = (jax.jit(functools.partial(chunk, guard=guard), static_argnames="num_steps",
                            out_shardings=((replicated, replicated), replicated))
                    for guard in (steps.chunk_guard(num_runs, runs_together), "gradients"))

  def run_steps(state, images, rngs, scalars, num_steps):
    # The full guard is compiled and run only where a chunk was not finite.
    out, finite = cheap(state, images, rngs, scalars, num_steps=num_steps)
    return out if finite else guarded(state, images, rngs, scalars, num_steps=num_steps)[0]
  scalars = runs_lib.scalars(config, [run.config for run in runs])
  return Program(
      images=images, init_rngs=keys[:, 0], train_rngs=keys[:, 1],
      scalars={k: jnp.asarray(v, jnp.float32) for k, v in scalars.items()},
      init=jax.jit(steps.over_runs(init, num_runs, [0, 0, None], runs_together),
                   out_shardings=replicated),
      run_steps=run_steps, sharding=replicated)


def train_loop(state: steps.TrainState, program: Program, runs: List[runs_lib.Run],
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


def _run_chunk(state: steps.TrainState, program: Program, runs: List[runs_lib.Run],
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


def _train_chunks(state: steps.TrainState, program: Program, runs: List[runs_lib.Run],
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
      chunk_end = min(num_steps, (step // log_every + 1) * log_every,
                      (step // checkpoint_every + 1) * checkpoint_every)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       validated: bool = False):
  """Trains the model of ``config`` in ``workdir``, then evaluates it.

  ``train.num_seeds = S > 1`` seeds and the ``train.vmap_values`` of
  ``train.vmap_key`` train in one vmapped program, each run in its own
  workdir below ``workdir`` (see ``runs.unpack``). Resumes from the latest
  checkpoint; a finished run of the same config is not retrained.
  ``validated``: the caller has validated ``config`` (``prepare_runs``).

  Returns:
    The metrics of eval.json; for several runs a list, in ``runs.unpack`` order.
    In a multi-process run only process 0 evaluates; the others get None.
  """
  runs, finished = prepare_runs(config, workdir, validated)
  if finished is None or any(outputs.missing(run) for run in runs):
    data = load_data(config, len(runs))
    with locks.lock([run.workdir for run in runs], enabled=jax.process_index() == 0):
      # Another launcher may have finished them since prepare_runs looked.
      finished = finished_results(runs, workdir)
      if finished is None:
        finished = _train_and_evaluate(config, data, runs)
      else:
        _remake_outputs(config, data, runs)
  return finished if len(runs) > 1 else finished[0]


def _managers(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
              runs: List[runs_lib.Run]) -> checkpoints.Managers:
  """The runs' checkpoints, recording and checking what made them (before
  anything is written)."""
  images = input_pipeline.fingerprint(data.train_images)
  managers = checkpoints.Managers(
      [run.workdir for run in runs], config.train.max_checkpoints,
      provenance=[{"config": workdir_lib.config_dict(run.config), "data": images}
                  for run in runs])
  managers.check_provenance()
  return managers


def _remake_outputs(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
                    runs: List[runs_lib.Run]) -> None:
  """Writes again what finished runs lack (``outputs.missing``) from their
  final checkpoints; their eval.json stays as it was."""
  managers = _managers(config, data, runs)
  lacking = {run.workdir: outputs.missing(run) for run in runs}
  if managers.latest_step() != config.train.num_steps:
    raise InputError(f"{runs[0].workdir} is a finished run without "
                     f"{', '.join(next(filter(None, lacking.values())))} and without its "
                     f"final checkpoint (step {config.train.num_steps}) to make it from; "
                     "use a new --workdir")
  program = build_program(config, data, runs)
  state = managers.restore(program.init(program.init_rngs, program.train_rngs,
                                        program.images), program.sharding)
  model = autoencoder.make_model(config.model, data.image_shape,
                                 compute_dtype=config.train.compute_dtype)
  for i, run in enumerate(runs):
    if lacking[run.workdir] and jax.process_index() == 0:
      logging.info("%s lacks %s: made again from the checkpoint at step %d", run.workdir,
                   ", ".join(lacking[run.workdir]), config.train.num_steps)
      run_state = steps.run_slice(state, i)
      outputs.remake(run, model, {"params": run_state.params, **run_state.model_state}, data)


def _train_and_evaluate(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
                        runs: List[runs_lib.Run]) -> List:
  """``train_and_evaluate`` of runs that are not finished, under their locks."""
  managers = _managers(config, data, runs)
  write_configs(runs)
  program = build_program(config, data, runs)
  t_start = time.time()
  with compilation.Seconds() as compile_time:
    state, start_step = _resume_and_train(config, program, runs, managers)
  timing = {"train_seconds": time.time() - t_start, "runs_trained_together": len(runs),
            "compile_seconds": compile_time.total,
            "runs_together": config.train.runs_together,
            "trained_steps": config.train.num_steps - start_step}
  # Evaluation is local work: process 0 does it and writes the results.
  try:
    return [evaluate_run(run, data, steps.run_slice(state, i), timing)
            if jax.process_index() == 0 else None for i, run in enumerate(runs)]
  except (OSError, FloatingPointError) as e:  # A full disk, a diverged probe.
    raise RunStopped(f"evaluation failed ({one_line(e)}); {_kept(config)}") from e
  except KeyboardInterrupt as e:
    raise signals.restated(e, f"{str(e) or 'stopped by Ctrl-C'} while evaluating; "
                           f"{_kept(config)}") from None


def _kept(config: ml_collections.ConfigDict) -> str:
  return (f"training is finished and its checkpoint at step {config.train.num_steps} is "
          "kept: rerun the same command to evaluate")


def _resume_and_train(config: ml_collections.ConfigDict, program: Program, runs: List[runs_lib.Run],
                      managers: checkpoints.Managers) -> Tuple[steps.TrainState, int]:
  """Restores the newest good checkpoint and trains; a checkpoint whose first
  steps diverge is set aside for the one before. Returns the trained state
  and the step training resumed from."""
  initial = program.init(program.init_rngs, program.train_rngs, program.images)
  while True:
    state = managers.restore(initial, program.sharding)
    start_step = int(state.step[0])
    try:
      return train_loop(state, program, runs, config.train, managers), start_step
    except Diverged as e:
      if not start_step or e.from_step != start_step:
        raise
      managers.set_aside(start_step, "a non-finite loss in its first steps")


def _write_results(run: runs_lib.Run, results: Dict[str, Any], timing: Dict[str, Any]) -> None:
  """Writes ``results`` (to which it adds ``environment``: the versions and
  device) and ``timing`` into the run's workdir."""
  signals.check()  # A Ctrl-C that Python dropped never leaves a finished run.
  logging.info("eval of seed %d: %s", run.config.seed, json.dumps(results))
  results["environment"] = provenance.environment()
  workdir_lib.write_results(run.workdir, results, {**timing, **results["environment"]})


def evaluate_run(run: runs_lib.Run, data: input_pipeline.Splits, state: steps.TrainState,
                 timing: Dict[str, Any]) -> Dict[str, Any]:
  """Evaluates one trained run and writes its results, latents and figures
  (on process 0 alone in a multi-process run)."""
  t0, config = time.time(), run.config
  model = autoencoder.make_model(config.model, data.image_shape,
                                 compute_dtype=config.train.compute_dtype)
  variables = {"params": state.params, **state.model_state}
  train_z = outputs.encode(model, variables, data.train_images, config.eval.batch_size)
  eval_z = outputs.encode(model, variables, data.eval_images, config.eval.batch_size)
  results = evaluation.evaluate(train_z, data.train_labels, eval_z, data.eval_labels,
                                config.eval, data.num_classes, config.seed)
  results["eval_split"] = data.eval_split
  outputs.write(run, model, variables, data, eval_z)
  _write_results(run, results, {
      **timing, "eval_seconds": time.time() - t0, "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind})
  return results


def evaluate_pixels(config: ml_collections.ConfigDict, workdir: str,
                    validated: bool = False) -> Dict[str, Any]:
  """The paper's "Raw Data" row: the evaluation suite on the flattened pixels
  (process 0 alone; the others return None)."""
  runs, finished = prepare_runs(config, workdir, validated)
  if finished is not None:
    return finished[0]
  if jax.process_index() != 0:
    return None  # Process 0 evaluates and writes.
  data = load_data(config, 1)
  with locks.lock([workdir]):
    return (finished_results(runs, workdir) or [_evaluate_pixels(config, data, runs[0])])[0]


def _evaluate_pixels(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
                     run: runs_lib.Run) -> Dict[str, Any]:
  write_configs([run])
  t0 = time.time()
  results = evaluation.evaluate(data.train_images, data.train_labels, data.eval_images,
                                data.eval_labels, config.eval, data.num_classes,
                                config.seed)
  results["eval_split"] = data.eval_split
  _write_results(run, results, {"train_seconds": 0.0, "eval_seconds": time.time() - t0})
  return results
