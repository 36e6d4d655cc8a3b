"""The launcher's jitted training chunk (``steps.train_chunk``) outside the
launcher: how the speed benchmarks build a model's runs and their programs."""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from softvq_jax.launch import steps as steps_lib
from softvq_jax.model import autoencoder


def chunk_programs(config, init_batch, num_runs: int, step_counts: Sequence[int], *,
                   pixel_var: float, runs_together: str = "vmap", swept: str = ""):
  """``config``'s model and optimizer for ``num_runs`` runs trained together
  (``steps.over_runs``, ``runs_together``), initialised on ``init_batch``
  (``(1, H, W, C)``): their initial state, keys and swept scalars (``swept``, a
  key of ``autoencoder.VMAPPABLE_KEYS``, takes values from 0 to 0.07), and one
  jitted ``steps.train_chunk`` of ``config.train.batch_size`` per step count,
  with the cheap NaN guard that a finite chunk runs."""
  model_fn = functools.partial(autoencoder.make_model, config.model, init_batch.shape[1:])
  optimizer = steps_lib.make_optimizer(config.train)
  init = lambda rng: steps_lib.init_state(rng, model_fn({}), optimizer, init_batch)
  rngs = jax.random.split(jax.random.key(0), num_runs)
  scalars = {swept: jnp.linspace(0.0, 0.07, num_runs)} if swept else {}
  state = jax.jit(steps_lib.over_runs(init, num_runs, [0], runs_together))(rngs)
  programs = tuple(jax.jit(functools.partial(
      steps_lib.train_chunk, num_steps=n, num_runs=num_runs, runs_together=runs_together,
      guard=steps_lib.chunk_guard(num_runs, runs_together), model_fn=model_fn,
      optimizer=optimizer, batch_size=config.train.batch_size, pixel_var=pixel_var))
                   for n in step_counts)
  return state, rngs, scalars, programs
