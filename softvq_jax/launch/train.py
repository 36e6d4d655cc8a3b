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
import os
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
from softvq_jax.launch import figures
from softvq_jax.launch import locks
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
    raise type(e)(f"{cause}. {managers.last_good()}") from None
  finally:
    for log in logs:
      log.close()
  return state


def _train_chunks(state: steps.TrainState, program: Program, runs: List[runs_lib.Run],
                  train_config: ml_collections.ConfigDict, managers: checkpoints.Managers,
                  logs: List[training_log.MetricsLog]) -> steps.TrainState:
  """``train_loop``'s loop: jitted chunks of steps up to each log or checkpoint."""
  num_steps, log_every = train_config.num_steps, train_config.log_every
  checkpoint_every = train_config.checkpoint_every
  step = int(state.step[0])
  while step < num_steps:
    signals.check()
    chunk_end = min(num_steps, (step // log_every + 1) * log_every,
                    (step // checkpoint_every + 1) * checkpoint_every)
    t0 = time.time()
    try:
      state, metrics = program.run_steps(state, program.images, program.train_rngs,
                                         program.scalars, num_steps=chunk_end - step)
      reached = np.asarray(state.step)
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" in str(e):
        raise  # Out of memory: softvq_jax.launch.cli says so.
      # A collective whose peer died (another process, a device): no save can
      # finish either, so none is waited for.
      raise RunStopped(f"the runtime failed in steps {step}-{chunk_end} ({one_line(e)}); "
                       "if another process died, rerun every process. "
                       f"{managers.last_good()}") from e
    if np.any(reached != chunk_end):
      managers.wait()
      bad = [(run.workdir, int(r)) for run, r in zip(runs, reached) if r != chunk_end]
      raise Diverged(
          "non-finite loss or gradient at step "
          + ", ".join(f"{r} ({d})" if len(runs) > 1 else str(r) for d, r in bad)
          + f"; stopped. {managers.last_good()}", from_step=step)
    rate = (chunk_end - step) / (time.time() - t0)
    step = chunk_end
    if step % log_every == 0 or step == num_steps:
      metrics = jax.device_get(metrics)
      for i, log in enumerate(logs):
        log.write(step, {k: float(np.mean(v[i])) for k, v in metrics.items()}, rate,
                  eta=(num_steps - step) / rate)
    if step % checkpoint_every == 0 or step == num_steps:
      managers.save(step, state)
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
  if finished is None:
    data = load_data(config, len(runs))
    with locks.lock([run.workdir for run in runs], enabled=jax.process_index() == 0):
      # Another launcher may have finished them since prepare_runs looked.
      finished = finished_results(runs, workdir) or _train_and_evaluate(config, data, runs)
  return finished if len(runs) > 1 else finished[0]


def _train_and_evaluate(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
                        runs: List[runs_lib.Run]) -> List:
  """``train_and_evaluate`` of runs that are not finished, under their locks."""
  write_configs(runs)
  program = build_program(config, data, runs)
  managers = checkpoints.Managers([run.workdir for run in runs],
                                  config.train.max_checkpoints)
  t_start = time.time()
  state, start_step = _resume_and_train(config, program, runs, managers)
  timing = {"train_seconds": time.time() - t_start, "runs_trained_together": len(runs),
            "runs_together": config.train.runs_together,
            "trained_steps": config.train.num_steps - start_step}
  # Evaluation is local work: process 0 does it and writes the results.
  try:
    return [evaluate_run(run, data, steps.run_slice(state, i), timing)
            if jax.process_index() == 0 else None for i, run in enumerate(runs)]
  except OSError as e:  # A full disk, say: training is safe on disk.
    raise RunStopped(f"evaluation failed ({one_line(e)}); {_kept(config)}") from e
  except KeyboardInterrupt as e:
    raise type(e)(f"{str(e) or 'stopped by Ctrl-C'} while evaluating; {_kept(config)}"
                  ) from None


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


def encode(model: autoencoder.Autoencoder, variables, images: np.ndarray,
           batch_size: int) -> np.ndarray:
  """Downstream latents ``(N, d)`` of ``images``: one jitted program that maps
  the model over batches (the last one zero-padded) on the device."""
  count = len(images)
  padded = np.concatenate([images, np.zeros(((-count) % batch_size,) + images.shape[1:],
                                            images.dtype)])
  batches = padded.reshape((-1, batch_size) + images.shape[1:])
  apply = functools.partial(model.apply, method=autoencoder.Autoencoder.encode)
  latents = jax.jit(lambda v, x: jax.lax.map(functools.partial(apply, v), x))(
      variables, batches)
  return np.asarray(latents).reshape(len(padded), -1)[:count]


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
  train_z = encode(model, variables, data.train_images, config.eval.batch_size)
  eval_z = encode(model, variables, data.eval_images, config.eval.batch_size)
  results = evaluation.evaluate(train_z, data.train_labels, eval_z, data.eval_labels,
                                config.eval, data.num_classes, config.seed)
  results["eval_split"] = data.eval_split
  if config.eval.figures:
    figures.write_all(run.workdir, model, variables, data, eval_z,
                      title=f"{config.model.bottleneck} on {config.data.name} "
                      f"({data.eval_split})", tsne_points=config.eval.tsne_points,
                      seed=config.seed)
  np.savez(os.path.join(run.workdir, "latents.npz"), latents=eval_z,
           labels=data.eval_labels, split=data.eval_split)
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
