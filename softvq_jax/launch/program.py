"""What runs trained together share: a ``Program`` (data on the device,
keys, the jitted init and steps), built by ``build``.

The steps are jitted once per program; ``Program.compile`` compiles the
init and a dispatch of n steps ahead of their first call (a sweep does it
for its next launch while one trains: ``train.build_ahead``), and the
jitted functions keep what they compiled for the loop
(``softvq_jax.launch.loop``).
"""

import dataclasses
import functools
from typing import Callable, Dict, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from softvq_jax.data import input_pipeline
from softvq_jax.launch import runs as runs_lib
from softvq_jax.launch import steps
from softvq_jax.model import autoencoder


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
  compile: Callable[[int], None]  # Compiles init and a dispatch of n steps (ahead).
  compile_seconds: float = 0.0  # Spent compiling it ahead (``train.build_ahead``).


def build(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
          runs: List[runs_lib.Run]) -> Program:
  """The model, optimizer, mesh and keys, and the jitted init and steps."""
  num_runs, runs_together = len(runs), config.train.runs_together
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
  init = jax.jit(steps.over_runs(init, num_runs, [0, 0, None], runs_together),
                 out_shardings=replicated)
  chunk = functools.partial(
      steps.train_chunk, num_runs=num_runs, runs_together=runs_together, model_fn=model_fn,
      optimizer=optimizer, batch_size=config.train.batch_size, pixel_var=data.pixel_variance,
      batch_sharding=batch_sharding)
  cheap, guarded = (jax.jit(functools.partial(chunk, guard=guard), static_argnames="num_steps",
                            out_shardings=((replicated, replicated), replicated))
                    for guard in (steps.chunk_guard(num_runs, runs_together), "gradients"))

  def run_steps(state, images, rngs, scalars, num_steps):
    # The full guard is compiled and run only where a chunk was not finite.
    out, finite = cheap(state, images, rngs, scalars, num_steps=num_steps)
    return out if finite else guarded(state, images, rngs, scalars, num_steps=num_steps)[0]
  scalars = {k: jnp.asarray(v, jnp.float32)
             for k, v in runs_lib.scalars(config, [run.config for run in runs]).items()}

  def compile_steps(num_steps):
    args = (keys[:, 0], keys[:, 1], images)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                         jax.eval_shape(init, *args))
    init.lower(*args).compile()
    cheap.lower(state, images, keys[:, 1], scalars, num_steps=num_steps).compile()
  return Program(images=images, init_rngs=keys[:, 0], train_rngs=keys[:, 1], scalars=scalars,
                 init=init, run_steps=run_steps, sharding=replicated, compile=compile_steps)
