"""Training and evaluation of one run: ``train_and_evaluate(config, workdir)``.

Design:
* The dataset lives on the devices; each step draws its batch on device,
  uniformly with replacement, from ``fold_in(rng, step)``, so data order and
  noise are functions of (seed, step) and a resumed run is identical to an
  uninterrupted one.
* ``train_step`` is a module-level function; ``train_steps`` scans it over
  ``train.log_every`` steps per dispatch so that small models (the paper's
  batch-32 MLP) are not bound by Python. jit and sharding are applied at the
  call site.
* Data parallelism uses a 1-D ``jax.sharding.Mesh`` over all devices: state
  and data are replicated, the global batch is sharded over the ``data``
  axis and XLA inserts the gradient all-reduce. The same code runs on many
  hosts after ``jax.distributed.initialize()`` (see README).
* ``train.num_seeds`` seeds, times the ``train.vmap_values`` of one scalar
  ``train.vmap_key`` (e.g. ``model.noise_std``), train together, vmapped over
  a leading run axis of the state; the scalar enters the step as a traced
  value. Each run keeps its own workdir, checkpoints and results.
* A NaN guard: a step whose loss or gradients are not finite is not
  applied; the run stops with an error naming the step, and the last good
  checkpoint is kept.

Workdir contents: ``config.json``, ``checkpoints/`` (orbax), ``metrics.jsonl``,
``tensorboard/``, and at the end ``eval.json``, ``latents.npz``,
``timing.json`` and figures.
"""

import copy
import functools
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from softvq_jax import evaluation
from softvq_jax import figures
from softvq_jax import input_pipeline
from softvq_jax import models
from softvq_jax import validation
from softvq_jax import workdir as workdir_lib
from softvq_jax.configs import default
from softvq_jax.errors import InputError

# Scalar diagnostics copied from a bottleneck's aux into the metrics.
AUX_METRICS = ("kl", "penalty", "codebook_loss", "commitment_loss",
               "perplexity", "usage")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any  # Non-trainable collections, e.g. {'ema': ...}; {} if none.


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with a constant or cosine-decayed learning rate."""
  lr = train_config.learning_rate
  if train_config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(lr, train_config.num_steps)
  return optax.adam(lr)


def init_state(rng: jax.Array, model: models.Autoencoder,
               optimizer: optax.GradientTransformation,
               image_shape: Tuple[int, ...],
               codebook_pool: Optional[jax.Array] = None) -> TrainState:
  """Initial parameters, optimizer state and model state.

  Args:
    codebook_pool: training images ``(N, H, W, C)``, N >= K, for
      ``model.codebook_init = 'data'``: the codebook ``(K, d)`` of a vq or
      soft_vq bottleneck then starts as the initial encoder's z_e of K of them,
      drawn without replacement, so that every codeword starts among the
      encodings (the default is TF1's U(+-sqrt(3/K)), the authors' choice).
  """
  variables = model.init({"params": rng, "noise": rng},
                         jnp.zeros((1,) + tuple(image_shape)), train=False)
  params = variables.pop("params")
  if codebook_pool is not None:
    num_codewords = params["bottleneck"]["codebook"].shape[0]
    pick = jax.random.choice(jax.random.fold_in(rng, 1), codebook_pool.shape[0],
                             (num_codewords,), replace=False)
    codebook = model.apply({"params": params, **variables}, codebook_pool[pick],
                           method=models.Autoencoder.encode)
    params = {**params, "bottleneck": {**params["bottleneck"], "codebook": codebook}}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), model_state=dict(variables))


def loss_fn(params, model_state, x, noise_rng, *, model: models.Autoencoder,
            model_config: ml_collections.ConfigDict, pixel_var: float):
  """Loss (reconstruction + bottleneck term) and its metrics for a batch x."""
  (outputs, aux), new_model_state = model.apply(
      {"params": params, **model_state}, x, train=True,
      rngs={"noise": noise_rng}, mutable=list(model_state))
  recon = models.reconstruction_loss(
      outputs, x, kind=model_config.recon,
      output_activation=model_config.output_activation, pixel_var=pixel_var)
  loss = recon + aux["loss"]
  metrics = {"loss": loss, "recon": recon, "bottleneck_loss": aux["loss"]}
  metrics.update({k: aux[k] for k in AUX_METRICS if k in aux})
  return loss, (metrics, dict(new_model_state))


def train_step(state: TrainState, images: jax.Array, rng: jax.Array,
               scalars: Dict[str, jax.Array], *, model: models.Autoencoder,
               optimizer: optax.GradientTransformation,
               model_config: ml_collections.ConfigDict, batch_size: int,
               pixel_var: float, batch_sharding=None) -> Tuple[TrainState, Dict]:
  """One Adam update at ``state.step``; a non-finite step is not applied.

  Args:
    state: the train state.
    images: the whole training split, ``(N, H, W, C)``.
    rng: the run's training key; the step's key is ``fold_in(rng, step)``.
    scalars: bottleneck attributes of this run, e.g. ``{"noise_std": 0.05}``
      (``train.vmap_key``), replacing those of ``model``; ``{}`` for none.
    model, optimizer, model_config: what to train and how.
    batch_size: global batch size.
    pixel_var: the nmse normaliser.
    batch_sharding: sharding of the batch over the mesh's data axis.

  Returns:
    The new state (unchanged if the step was not finite) and its metrics.
  """
  data_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, state.step))
  x = images[jax.random.randint(data_rng, (batch_size,), 0, images.shape[0])]
  if batch_sharding is not None:
    x = jax.lax.with_sharding_constraint(x, batch_sharding)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (metrics, model_state)), grads = grad_fn(
      state.params, state.model_state, x, noise_rng,
      model=models.with_bottleneck_scalars(model, scalars),
      model_config=model_config, pixel_var=pixel_var)
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))

  def apply(state):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                      opt_state, model_state)
  # A cond, not a select over the state: the update is memory-bound at small
  # batches and a select would read and write every parameter and moment again.
  return jax.lax.cond(finite, apply, lambda state: state, state), metrics


def train_steps(state: TrainState, images: jax.Array, rng: jax.Array,
                scalars: Dict[str, jax.Array], num_steps: int,
                **step_kwargs) -> Tuple[TrainState, Dict]:
  """``num_steps`` train steps in one ``lax.scan``; metrics are stacked.

  After a non-finite step the state no longer advances (the same step is
  retried with the same key and fails again), so ``state.step`` ends at the
  first bad step.
  """
  def body(state, _):
    return train_step(state, images, rng, scalars, **step_kwargs)
  return jax.lax.scan(body, state, None, length=num_steps)


def encode(model: models.Autoencoder, variables, images: np.ndarray,
           batch_size: int) -> np.ndarray:
  """Downstream latents ``(N, d)`` of ``images`` in batches."""
  fn = jax.jit(functools.partial(model.apply, method=models.Autoencoder.encode))
  return np.concatenate([np.asarray(fn(variables, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def runs_of(config: ml_collections.ConfigDict,
            workdir: str) -> List[Tuple[ml_collections.ConfigDict, str]]:
  """The ``(config, workdir)`` of every run that ``config`` trains together.

  A plain config is one run in ``workdir``. With ``train.num_seeds = S > 1``
  seed ``s`` (``config.seed ... config.seed + S - 1``) runs in
  ``workdir/seed_<s>``; with ``train.vmap_key`` every value ``v`` of
  ``train.vmap_values`` runs with every seed in
  ``workdir/<key>_<v>/seed_<s>`` (``default.value_dir``). Each gets the config
  of a single run (that seed and value, ``num_seeds = 1``, no ``vmap_key``),
  so that its workdir reads exactly like one trained alone. Value-major order.
  """
  key = config.train.vmap_key
  if config.train.num_seeds == 1 and not key:
    return [(config, workdir)]
  runs = []
  for value in config.train.vmap_values if key else (None,):
    for seed in range(config.seed, config.seed + config.train.num_seeds):
      single = copy.deepcopy(config)
      with single.unlocked():
        single.seed, single.train.num_seeds = seed, 1
        single.train.vmap_key, single.train.vmap_values = "", ()
        if key:
          default.apply_overrides(single, {key: value})
      parts = [default.value_dir(key, value)] if key else []
      runs.append((single, os.path.join(workdir, *parts, f"seed_{seed}")))
  return runs


def run_scalars(config: ml_collections.ConfigDict,
                runs: Sequence[Tuple[ml_collections.ConfigDict, str]]) -> Dict[str, jax.Array]:
  """The ``train.vmap_key`` value of each run, ``{attribute: (R,)}``; ``{}`` if none."""
  key = config.train.vmap_key
  if not key:
    return {}
  return {key.rsplit(".", 1)[-1]: jnp.asarray([c[key] for c, _ in runs], jnp.float32)}


def over_runs(fn, num_runs: int, in_axes: Sequence[Any]):
  """``fn`` mapped over a leading run axis of the arguments with in_axes 0.

  Several runs are vmapped; a single one is squeezed around ``fn`` instead,
  which on CPU is about 30% faster at the paper's batch-32 MLP than vmap.
  """
  if num_runs > 1:
    return jax.vmap(fn, in_axes=tuple(in_axes))

  def single(*args):
    args = [a if axis is None else jax.tree.map(lambda x: x[0], a)
            for a, axis in zip(args, in_axes)]
    return jax.tree.map(lambda x: x[None], fn(*args))
  return single


def _run_slice(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def _restore(managers: Sequence[ocp.CheckpointManager], state: TrainState,
             sharding) -> TrainState:
  """The latest step that every seed's checkpoints hold and can read.

  Falls back to older steps when a checkpoint is unreadable; returns
  ``state`` unchanged when there is none.
  """
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype,
                                                       sharding=sharding), state)
  common = set.intersection(*(set(m.all_steps()) for m in managers))
  for step in sorted(common, reverse=True):
    try:
      restored = [m.restore(step, args=ocp.args.StandardRestore(target)) for m in managers]
    except (OSError, ValueError, KeyError) as e:
      logging.warning("checkpoint %d unreadable (%s); trying an older one", step, e)
      continue
    logging.info("resumed from the checkpoints at step %d", step)
    stack = lambda *xs: jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs)
    return jax.jit(stack, out_shardings=sharding)(*restored)
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains the model of ``config`` in ``workdir``, then evaluates it.

  ``train.num_seeds = S > 1`` seeds and the ``train.vmap_values`` of
  ``train.vmap_key`` train in one vmapped program, each run in its own
  workdir below ``workdir`` (see ``runs_of``). Resumes from the latest
  checkpoint; a finished run of the same config is not retrained.

  Returns:
    The metrics of eval.json; for several runs a list, in ``runs_of`` order.
  """
  validation.validate_config(config, jax.device_count())
  runs = runs_of(config, workdir)
  for run_config, _ in runs:
    validation.validate_config(run_config, jax.device_count())
  finished = [workdir_lib.check(c, d) for c, d in runs]
  if all(f is not None for f in finished):
    logging.info("%s already holds finished runs of this config", workdir)
    return finished if len(runs) > 1 else finished[0]
  if any(f is not None for f in finished):
    raise InputError(f"{workdir} holds finished runs for some of its runs only; train "
                     "the others alone (--config.seed, the swept key), or use a new --workdir")
  data = input_pipeline.load(config.data)
  if (config.model.codebook_init == "data"
      and config.model.num_codewords > len(data.train_images)):
    raise InputError(f"config.model.num_codewords={config.model.num_codewords} is more than "
                     f"the {len(data.train_images)} training images that "
                     "model.codebook_init='data' draws the codebook from")
  is_main = jax.process_index() == 0
  if is_main:
    for run_config, run_dir in runs:
      workdir_lib.write_config(run_config, run_dir)

  num_runs = len(runs)
  scalars = run_scalars(config, runs)
  model = models.make_model(config.model, data.image_shape)
  optimizer = make_optimizer(config.train)
  keys = jnp.stack([jnp.stack(jax.random.split(jax.random.key(c.seed))) for c, _ in runs])
  init_rngs, train_rngs = keys[:, 0], keys[:, 1]
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  # Every process holds the whole (small) split; this works across hosts too.
  images = jax.make_array_from_callback(data.train_images.shape, replicated,
                                        lambda index: data.train_images[index])
  def init(rng, codebook_pool):
    return init_state(rng, model, optimizer, data.image_shape, codebook_pool)
  codebook_pool = images if config.model.codebook_init == "data" else None
  state = jax.jit(over_runs(init, num_runs, [0, None]),
                  out_shardings=replicated)(init_rngs, codebook_pool)

  managers = [ocp.CheckpointManager(
      os.path.abspath(os.path.join(run_dir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.train.max_checkpoints,
                                           create=True)) for _, run_dir in runs]
  state = _restore(managers, state, replicated)
  start_step = int(state.step[0])
  logs = [workdir_lib.MetricsLog(run_dir, start_step, enabled=is_main) for _, run_dir in runs]
  steps_fn = functools.partial(
      train_steps, model=model, optimizer=optimizer, model_config=config.model,
      batch_size=config.train.batch_size, pixel_var=data.pixel_variance,
      batch_sharding=batch_sharding)
  run_steps = jax.jit(
      lambda state, images, rngs, scalars, num_steps: over_runs(
          functools.partial(steps_fn, num_steps=num_steps), num_runs, [0, None, 0, 0])(
              state, images, rngs, scalars),
      static_argnames="num_steps", out_shardings=(replicated, replicated))

  num_steps, t_start = config.train.num_steps, time.time()
  step = start_step
  while step < num_steps:
    chunk_end = min(num_steps, (step // config.train.log_every + 1) * config.train.log_every,
                    (step // config.train.checkpoint_every + 1) * config.train.checkpoint_every)
    t0 = time.time()
    state, metrics = run_steps(state, images, train_rngs, scalars, num_steps=chunk_end - step)
    reached = np.asarray(state.step)
    if np.any(reached != chunk_end):
      for manager in managers:
        manager.wait_until_finished()
      bad = [(d, int(r)) for (_, d), r in zip(runs, reached) if r != chunk_end]
      raise FloatingPointError(
          "non-finite loss or gradient at step "
          + ", ".join(f"{r} ({d})" if num_runs > 1 else str(r) for d, r in bad)
          + f"; stopped, the last good checkpoint is at step {managers[0].latest_step()}")
    rate = (chunk_end - step) / (time.time() - t0)
    step = chunk_end
    if step % config.train.log_every == 0 or step == num_steps:
      metrics = jax.device_get(metrics)
      for i, log in enumerate(logs):
        log.write(step, {k: float(np.mean(v[i])) for k, v in metrics.items()}, rate,
                  eta=(num_steps - step) / rate)
    if step % config.train.checkpoint_every == 0 or step == num_steps:
      for i, manager in enumerate(managers):
        manager.save(step, args=ocp.args.StandardSave(_run_slice(state, i)))
  for manager, log in zip(managers, logs):
    manager.wait_until_finished()
    log.close()
  train_seconds = time.time() - t_start

  results = [evaluate_run(models.make_model(run_config.model, data.image_shape),
                          _run_slice(state, i), data, run_config, run_dir,
                          {"train_seconds": train_seconds, "runs_trained_together": num_runs,
                           "trained_steps": num_steps - start_step}, is_main)
             for i, (run_config, run_dir) in enumerate(runs)]
  return results if num_runs > 1 else results[0]


def evaluate_run(model: models.Autoencoder, state: TrainState, data: input_pipeline.Splits,
                 config: ml_collections.ConfigDict, workdir: str, timing: Dict[str, Any],
                 is_main: bool) -> Dict[str, Any]:
  """Evaluates one trained seed and writes its results into ``workdir``."""
  t0 = time.time()
  variables = {"params": state.params, **state.model_state}
  bs = config.eval.batch_size
  train_z = encode(model, variables, data.train_images, bs)
  eval_z = encode(model, variables, data.eval_images, bs)
  results = evaluation.evaluate(train_z, data.train_labels, eval_z, data.eval_labels,
                                config.eval, data.num_classes, config.seed)
  results["eval_split"] = data.eval_split
  if is_main:
    if config.eval.figures:
      figures.write_all(workdir, model, variables, data, eval_z, config)
    np.savez(os.path.join(workdir, "latents.npz"), latents=eval_z,
             labels=data.eval_labels, split=data.eval_split)
    workdir_lib.write_results(workdir, results, {
        **timing, "eval_seconds": time.time() - t0, "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind})
  logging.info("eval of seed %d on %s: %s", config.seed, data.eval_split, json.dumps(results))
  return results
