"""Training and evaluation of one run: ``train_and_evaluate(config, workdir)``,
and of a sweep's launch: ``launch(config, workdir, evaluations)``.

Design (the jittable step itself is ``softvq_jax.launch.steps``):
* ``launch`` (under ``train_and_evaluate``) composes named steps: ``prepare_runs`` (validate
  the config and the workdir, check the runs' workdirs), ``load_data`` (load,
  check the config against the data), then under the workdirs' locks
  (``locks.lock``) ``write_configs``, ``program.build`` (model, optimizer,
  mesh and keys; the jitted init and steps), restore or init
  (``checkpoints``), ``loop.train_loop`` and ``evaluate_run`` per run
  (in line, or on an executor while the caller trains its next launch:
  ``softvq_jax.launch.background``). Nothing is written before the locks
  are held and every check has passed.
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

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
import jax
import ml_collections

from softvq_jax import evaluation
from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError
from softvq_jax.errors import RunStopped
from softvq_jax.errors import one_line
from softvq_jax.launch import background
from softvq_jax.launch import checkpoints
from softvq_jax.launch import compilation
from softvq_jax.launch import locks
from softvq_jax.launch import loop
from softvq_jax.launch import outputs
from softvq_jax.launch import program as program_lib
from softvq_jax.launch import provenance
from softvq_jax.launch import runs as runs_lib
from softvq_jax.launch import signals
from softvq_jax.launch import steps
from softvq_jax.launch import validation
from softvq_jax.launch import workdir as workdir_lib
from softvq_jax.model import autoencoder


def prepare_runs(config: ml_collections.ConfigDict, workdir: str, validated: bool = False,
                 runs: Optional[Sequence[runs_lib.Run]] = None
                 ) -> Tuple[List[runs_lib.Run], Optional[List[Dict[str, Any]]]]:
  """Validates ``config`` (unless ``validated``: the sweep validates every
  launch before the first) and the workdirs, and checks the runs' workdirs
  (``runs``: ``runs.split(config)``'s configs in their directories, by
  default ``runs.unpack(config, workdir)``).
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
  runs = list(runs) if runs is not None else runs_lib.unpack(config, workdir)
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


def load_data(config: ml_collections.ConfigDict, num_runs: int,
              load: Optional[Callable[[ml_collections.ConfigDict],
                                      input_pipeline.Splits]] = None
              ) -> input_pipeline.Splits:
  """Loads the data (with ``load``, default ``input_pipeline.load``) and
  checks the config against it (nothing is written)."""
  data = (load or input_pipeline.load)(config.data)
  validation.validate_data(config, data, num_runs)
  return data


def write_configs(runs: List[runs_lib.Run]) -> None:
  """Each run's config.json: the first write of a run (process 0 alone)."""
  if jax.process_index() == 0:
    for run in runs:
      workdir_lib.write_config(run.config, run.workdir)


def build_ahead(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
                runs: List[runs_lib.Run]) -> program_lib.Program:
  """``program.build``, with its init and first dispatch compiled now: a sweep
  builds the next launch's while this one trains (``launch``'s ``program``).
  The seconds it compiled are the program's ``compile_seconds``."""
  program = program_lib.build(config, data, runs)
  with compilation.Seconds() as compile_time:
    program.compile(loop.first_dispatch(config.train))
  return dataclasses.replace(program, compile_seconds=compile_time.total)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       validated: bool = False):
  """Trains the model of ``config`` in ``workdir``, then evaluates it.

  ``train.num_seeds = S > 1`` seeds and the ``train.vmap_values`` of
  ``train.vmap_key`` train in one vmapped program, each run in its own
  workdir below ``workdir`` (see ``runs.unpack``). Resumes from the latest
  checkpoint; a finished run of the same config is not retrained.

  Args:
    config: the run's config.
    workdir: the run's folder (its runs' parent for several runs).
    validated: the caller has validated ``config`` (``prepare_runs``).

  Returns:
    The metrics of eval.json; for several runs a list, in ``runs.unpack`` order.
    In a multi-process run only process 0 evaluates; the others get None.
  """
  results = launch(config, workdir, background.InLine(), validated=validated).result()
  return results if len(results) > 1 else results[0]


def launch(config: ml_collections.ConfigDict, workdir: str,
           evaluations: concurrent.futures.Executor, *, validated: bool = False,
           runs: Optional[Sequence[runs_lib.Run]] = None,
           program: Optional[program_lib.Program] = None,
           load: Optional[Callable[[ml_collections.ConfigDict],
                                   input_pipeline.Splits]] = None) -> concurrent.futures.Future:
  """``train_and_evaluate`` as a sweep launches it: trains, then evaluates on
  ``evaluations`` (``softvq_jax.launch.background``), so that the caller can
  train its next launch meanwhile; the runs' locks are held until the
  evaluation ends.

  Args:
    config, workdir, validated: as ``train_and_evaluate``'s.
    evaluations: ``background.Evaluations``, or ``background.InLine``.
    runs: the runs' configs and directories when they are not
      ``runs.unpack``'s (a sweep's ``runs.Launch``: rows packed together).
    program: ``build_ahead(config, data, runs)`` of these runs and of the
      data ``load`` gives, compiled while the caller trained its last launch.
    load: loads ``config.data``; default ``input_pipeline.load`` (a sweep's
      keeps its last dataset).

  Returns:
    The future of the list of every run's eval.json metrics (None on a
    process other than 0), in ``runs`` order; done already for finished runs.
  """
  runs, finished = prepare_runs(config, workdir, validated, runs)
  if finished is None or any(outputs.missing(run) for run in runs):
    data = load_data(config, len(runs), load)
    with contextlib.ExitStack() as held:
      held.enter_context(locks.lock([run.workdir for run in runs],
                                    enabled=jax.process_index() == 0))
      # Another launcher may have finished them since prepare_runs looked.
      finished = finished_results(runs, workdir)
      if finished is None:
        return background.submit(evaluations, _train(config, data, runs, program),
                                 held.pop_all())
      _remake_outputs(config, data, runs)
  done = concurrent.futures.Future()
  done.set_result(finished)
  return done


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
  program = program_lib.build(config, data, runs)
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


def _train(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
           runs: List[runs_lib.Run], program: Optional[program_lib.Program] = None
           ) -> Callable[[], Any]:
  """Trains runs that are not finished, under their locks (with ``program``
  if built ahead); returns their evaluation, to call next
  (``train_and_evaluate``'s results)."""
  managers = _managers(config, data, runs)
  write_configs(runs)
  program = program or program_lib.build(config, data, runs)
  t_start = time.time()
  with compilation.Seconds() as compile_time:
    state, start_step = _resume_and_train(config, program, runs, managers)
  timing = {"train_seconds": time.time() - t_start, "runs_trained_together": len(runs),
            "compile_seconds": compile_time.total,
            "compile_ahead_seconds": program.compile_seconds,
            "runs_together": config.train.runs_together,
            "trained_steps": config.train.num_steps - start_step}
  return functools.partial(_evaluate_runs, config, data, runs, state, timing)


def _evaluate_runs(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
                   runs: List[runs_lib.Run], state: steps.TrainState,
                   timing: Dict[str, Any]):
  """Evaluates the trained runs of ``state``: ``train_and_evaluate``'s results.
  Evaluation is local work: process 0 does it and writes the results."""
  try:
    results = [evaluate_run(run, data, steps.run_slice(state, i), timing)
               if jax.process_index() == 0 else None for i, run in enumerate(runs)]
  except (OSError, FloatingPointError) as e:  # A full disk, a diverged probe.
    raise RunStopped(f"evaluation failed ({one_line(e)}); {_kept(config)}") from e
  except KeyboardInterrupt as e:
    raise signals.restated(e, f"{str(e) or 'stopped by Ctrl-C'} while evaluating; "
                           f"{_kept(config)}") from None
  return results


def _kept(config: ml_collections.ConfigDict) -> str:
  return (f"training is finished and its checkpoint at step {config.train.num_steps} is "
          "kept: rerun the same command to evaluate")


def _resume_and_train(config: ml_collections.ConfigDict, program: program_lib.Program,
                      runs: List[runs_lib.Run],
                      managers: checkpoints.Managers) -> Tuple[steps.TrainState, int]:
  """Restores the newest good checkpoint and trains; a checkpoint whose first
  steps diverge is set aside for the one before. Returns the trained state
  and the step training resumed from."""
  initial = program.init(program.init_rngs, program.train_rngs, program.images)
  while True:
    state = managers.restore(initial, program.sharding)
    start_step = int(state.step[0])
    try:
      return loop.train_loop(state, program, runs, config.train, managers), start_step
    except loop.Diverged as e:
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
                    validated: bool = False, *,
                    load: Optional[Callable[[ml_collections.ConfigDict],
                                            input_pipeline.Splits]] = None
                    ) -> Dict[str, Any]:
  """The paper's "Raw Data" row: the evaluation suite on the flattened pixels
  (process 0 alone; the others return None). ``load``: as in
  ``train_and_evaluate``."""
  runs, finished = prepare_runs(config, workdir, validated)
  if finished is not None:
    return finished[0]
  if jax.process_index() != 0:
    return None  # Process 0 evaluates and writes.
  data = load_data(config, 1, load)
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
