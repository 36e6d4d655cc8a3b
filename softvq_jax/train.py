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
* A NaN guard: a step whose loss or gradients are not finite is not
  applied; the run stops with an error naming the step, and the last good
  checkpoint is kept.

Workdir contents: ``config.json``, ``checkpoints/`` (orbax), ``metrics.jsonl``,
``tensorboard/``, and at the end ``eval.json``, ``latents.npz``,
``timing.json`` and figures.
"""

import functools
import json
import os
import time
from typing import Any, Dict, Tuple

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
               image_shape: Tuple[int, ...]) -> TrainState:
  """Initial parameters, optimizer state and model state."""
  variables = model.init({"params": rng, "noise": rng},
                         jnp.zeros((1,) + tuple(image_shape)), train=False)
  params = variables.pop("params")
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


def train_step(state: TrainState, images: jax.Array, rng: jax.Array, *,
               model: models.Autoencoder, optimizer: optax.GradientTransformation,
               model_config: ml_collections.ConfigDict, batch_size: int,
               pixel_var: float, batch_sharding=None) -> Tuple[TrainState, Dict]:
  """One Adam update at ``state.step``; a non-finite step is not applied.

  Args:
    state: the train state.
    images: the whole training split, ``(N, H, W, C)``.
    rng: the run's training key; the step's key is ``fold_in(rng, step)``.
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
      state.params, state.model_state, x, noise_rng, model=model,
      model_config=model_config, pixel_var=pixel_var)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_state = TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                         opt_state, model_state)
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  return state, metrics


def train_steps(state: TrainState, images: jax.Array, rng: jax.Array,
                num_steps: int, **step_kwargs) -> Tuple[TrainState, Dict]:
  """``num_steps`` train steps in one ``lax.scan``; metrics are stacked.

  After a non-finite step the state no longer advances (the same step is
  retried with the same key and fails again), so ``state.step`` ends at the
  first bad step.
  """
  def body(state, _):
    return train_step(state, images, rng, **step_kwargs)
  return jax.lax.scan(body, state, None, length=num_steps)


def encode(model: models.Autoencoder, variables, images: np.ndarray,
           batch_size: int) -> np.ndarray:
  """Downstream latents ``(N, d)`` of ``images`` in batches."""
  fn = jax.jit(functools.partial(model.apply, method=models.Autoencoder.encode))
  return np.concatenate([np.asarray(fn(variables, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def _restore(manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
  """The latest readable checkpoint, falling back to older ones."""
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    except (OSError, ValueError, KeyError) as e:
      logging.warning("checkpoint %d unreadable (%s); trying an older one", step, e)
      continue
    logging.info("resumed from the checkpoint at step %d", step)
    return restored
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains the model of ``config`` in ``workdir``, then evaluates it.

  Resumes from the latest checkpoint; a workdir that holds a finished run
  with the same config is not retrained. Returns the metrics of eval.json.
  """
  validation.validate_config(config, jax.device_count())
  finished = workdir_lib.check(config, workdir)
  if finished is not None:
    logging.info("%s already holds a finished run of this config", workdir)
    return finished
  data = input_pipeline.load(config.data)
  is_main = jax.process_index() == 0
  if is_main:
    workdir_lib.write_config(config, workdir)

  model = models.make_model(config.model, data.image_shape)
  optimizer = make_optimizer(config.train)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  state = jax.jit(functools.partial(init_state, model=model, optimizer=optimizer,
                                    image_shape=data.image_shape),
                  out_shardings=replicated)(init_rng)
  # Every process holds the whole (small) split; this works across hosts too.
  images = jax.make_array_from_callback(data.train_images.shape, replicated,
                                        lambda index: data.train_images[index])

  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.train.max_checkpoints,
                                           create=True))
  state = _restore(manager, state)
  start_step = int(state.step)
  log = workdir_lib.MetricsLog(workdir, start_step, enabled=is_main)
  run_steps = jax.jit(
      functools.partial(
          train_steps, model=model, optimizer=optimizer, model_config=config.model,
          batch_size=config.train.batch_size, pixel_var=data.pixel_variance,
          batch_sharding=batch_sharding),
      static_argnames="num_steps", out_shardings=(replicated, replicated))

  num_steps, t_start = config.train.num_steps, time.time()
  step = start_step
  while step < num_steps:
    chunk_end = min(num_steps, (step // config.train.log_every + 1) * config.train.log_every,
                    (step // config.train.checkpoint_every + 1) * config.train.checkpoint_every)
    t0 = time.time()
    state, metrics = run_steps(state, images, train_rng, num_steps=chunk_end - step)
    reached = int(state.step)
    if reached != chunk_end:
      manager.wait_until_finished()
      raise FloatingPointError(
          f"non-finite loss or gradient at step {reached}; stopped, the last good "
          f"checkpoint is at step {manager.latest_step()}")
    rate = (chunk_end - step) / (time.time() - t0)
    step = chunk_end
    if step % config.train.log_every == 0 or step == num_steps:
      record = {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}
      log.write(step, record, rate, eta=(num_steps - step) / rate)
    if step % config.train.checkpoint_every == 0 or step == num_steps:
      manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  log.close()
  train_seconds = time.time() - t_start

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
    workdir_lib.write_json(os.path.join(workdir, "timing.json"), {
        "train_seconds": train_seconds, "eval_seconds": time.time() - t0,
        "trained_steps": num_steps - start_step, "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind})
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.EVAL_FILE), results)
  logging.info("eval on %s: %s", data.eval_split, json.dumps(results))
  return results
