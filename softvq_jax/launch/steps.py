"""The jittable core of training: state, optimizer, init and the train step.

* The dataset lives on the devices; each step draws its batch on device,
  uniformly with replacement, from ``fold_in(rng, step)``, so data order and
  noise are functions of (seed, step) and a resumed run is identical to an
  uninterrupted one.
* ``train_step`` is a module-level function; ``train_steps`` scans it over
  ``train.log_every`` steps per dispatch so that small models (the paper's
  batch-32 MLP) are not bound by Python. jit, sharding and the run axis
  (``over_runs``) are applied by the caller (``program.build``).
* A NaN guard: a step whose loss or gradients are not finite is not
  applied, so ``state.step`` stops at the first bad step. A chunk of steps
  runs with a cheap guard first and with the full one only where it did not
  stay finite (``train_chunk``).
"""

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from softvq_jax.model import autoencoder


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any  # Non-trainable collections, e.g. {'ema': ...}; {} if none.


LR_SCHEDULES = ("constant", "cosine")


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with a constant or cosine-decayed learning rate."""
  lr = train_config.learning_rate
  if train_config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(lr, train_config.num_steps)
  return optax.adam(lr)


# Training images per codeword that model.codebook_init='kmeans' clusters.
KMEANS_IMAGES_PER_CODEWORD = 16


def init_images(rng: jax.Array, images: jax.Array,
                model_config: ml_collections.ConfigDict) -> jax.Array:
  """The batch the model is initialised on: one blank image, or training
  images drawn without replacement for a data-dependent codebook
  (``model.codebook_init``): K for ``data`` (the codebook starts at their
  encodings), ``KMEANS_IMAGES_PER_CODEWORD`` x K (at most all) for
  ``kmeans`` (at k-means centres of their encodings); the paper's layers read
  it at ``init`` (``quantizers.linen.linen_hard_forward``'s ``first_batch=False``)."""
  init = model_config.codebook_init
  if init == "uniform":
    return jnp.zeros((1,) + images.shape[1:], images.dtype)
  count = model_config.num_codewords
  if init == "kmeans":
    count = min(images.shape[0], KMEANS_IMAGES_PER_CODEWORD * count)
  pick = jax.random.choice(jax.random.fold_in(rng, 1), images.shape[0], (count,),
                           replace=False)
  return images[pick]


def init_state(rng: jax.Array, model: autoencoder.Autoencoder,
               optimizer: optax.GradientTransformation, images: jax.Array,
               first_batch: Optional[jax.Array] = None) -> TrainState:
  """Initial parameters, optimizer state and model state.

  Args:
    images: the batch the model is initialised on (``init_images``);
      the paper's layers' data-dependent initialisers read it.
    first_batch: the first training batch (``step_batch`` at step 0), on
      which the library's quantizers start (``Autoencoder.initialize``).
  """
  variables = model.init({"params": rng, "noise": rng}, images, train=False)
  if first_batch is not None:
    variables = model.apply(variables, first_batch, method=autoencoder.Autoencoder.initialize,
                            mutable=True, rngs={"params": rng})[1]
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), model_state=dict(variables))


def step_batch(rng: jax.Array, step: jax.Array, images: jax.Array,
               batch_size: int) -> Tuple[jax.Array, jax.Array]:
  """Step ``step``'s batch of ``images`` and noise key, from ``fold_in(rng, step)``."""
  data_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, step))
  return images[jax.random.randint(data_rng, (batch_size,), 0, images.shape[0])], noise_rng


def loss_fn(params, model_state, x, noise_rng, *, model: autoencoder.Autoencoder,
            pixel_var: float):
  """The model's loss of a batch x (``Autoencoder.loss``) and its metrics."""
  (loss, metrics), new_model_state = model.apply(
      {"params": params, **model_state}, x, pixel_var=pixel_var,
      rngs={"noise": noise_rng}, mutable=list(model_state), method=autoencoder.Autoencoder.loss)
  return loss, (metrics, dict(new_model_state))


def train_step(state: TrainState, images: jax.Array, rng: jax.Array,
               scalars: Dict[str, jax.Array], *,
               model_fn: Callable[[Dict[str, jax.Array]], autoencoder.Autoencoder],
               optimizer: optax.GradientTransformation, batch_size: int,
               pixel_var: float, batch_sharding=None,
               guard: Optional[str] = "gradients") -> Tuple[Tuple[TrainState, Dict], jax.Array]:
  """One Adam update at ``state.step``.

  Args:
    state: the train state.
    images: the whole training split, ``(N, H, W, C)``.
    rng: the run's training key; the step's key is ``fold_in(rng, step)``.
    scalars: bottleneck scalars of this run, e.g. ``{"noise_std": 0.05}``
      (``train.vmap_key``); ``{}`` for none.
    model_fn: builds the model with those scalars (``autoencoder.make_model``).
    optimizer: the optimizer.
    batch_size: global batch size.
    pixel_var: the nmse normaliser.
    batch_sharding: sharding of the batch over the mesh's data axis.
    guard: the NaN guard, ``"gradients"``: a step whose loss or gradients are
      not finite is not applied (the state is returned unchanged).
      ``"loss"``: only the loss is checked, in the same cond, so that XLA
      fuses the step as guarded and a finite step computes the same bits
      without waiting for every gradient's check. ``None``: every step is
      applied; vmapped, where a cond is a select anyway, the same bits again.

  Returns:
    ((the new state, its metrics), whether the loss was finite).
  """
  x, noise_rng = step_batch(rng, state.step, images, batch_size)
  if batch_sharding is not None:
    x = jax.lax.with_sharding_constraint(x, batch_sharding)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (metrics, model_state)), grads = grad_fn(
      state.params, state.model_state, x, noise_rng, model=model_fn(scalars),
      pixel_var=pixel_var)

  def apply(state):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                      opt_state, model_state)
  loss_finite = jnp.isfinite(loss)
  if guard is None:
    return (apply(state), metrics), loss_finite
  applied = loss_finite
  if guard == "gradients":
    applied &= jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  # A cond, not a select over the state: the update is memory-bound at small
  # batches and a select would read and write every parameter and moment again.
  return (jax.lax.cond(applied, apply, lambda state: state, state), metrics), loss_finite


def train_steps(state: TrainState, images: jax.Array, rng: jax.Array,
                scalars: Dict[str, jax.Array], num_steps: int,
                **step_kwargs) -> Tuple[Tuple[TrainState, Dict], jax.Array]:
  """``num_steps`` train steps in one ``lax.scan``; metrics are stacked.

  With the guard (``train_step``), after a non-finite step the state no
  longer advances (the same step is retried with the same key and fails
  again), so ``state.step`` ends at the first bad step.

  Returns:
    ((the final state, the stacked metrics), whether every loss was finite).
  """
  def body(carry, _):
    state, finite = carry
    (state, metrics), loss_finite = train_step(state, images, rng, scalars, **step_kwargs)
    return (state, finite & loss_finite), metrics
  (state, finite), metrics = jax.lax.scan(body, (state, jnp.array(True)), None,
                                          length=num_steps)
  return (state, metrics), finite


# How runs trained in one program share it (train.runs_together).
RUNS_TOGETHER = ("vmap", "loop")


def vmapped(num_runs: int, runs_together: str) -> bool:
  """Whether ``over_runs`` vmaps ``num_runs`` runs trained together as ``runs_together``."""
  return num_runs > 1 and runs_together == "vmap"


def over_runs(fn, num_runs: int, in_axes: Sequence[Any], runs_together: str = "vmap"):
  """``fn`` mapped over a leading run axis of the arguments with in_axes 0.

  Several runs are vmapped (``runs_together="vmap"``: batched matmuls), or run one
  after another in the program (``"loop"``: ``lax.map``). At the paper's
  batch-32 MLP on a 2-core CPU both are about as fast per run as a run alone
  with XLA's default threads; on one pinned thread vmapping is 1.1-1.2x
  slower per run and looping is not (``experiments/results/cpu_speed/README.md``).
  A single run is squeezed around ``fn`` instead.
  """
  if vmapped(num_runs, runs_together):
    return jax.vmap(fn, in_axes=tuple(in_axes))

  def looped(*args):
    shared = {i: a for i, (a, axis) in enumerate(zip(args, in_axes)) if axis is None}

    def one(slices):
      slices = iter(slices)
      return fn(*[shared[i] if i in shared else next(slices) for i in range(len(args))])
    return jax.lax.map(one, [a for i, a in enumerate(args) if i not in shared])

  def single(*args):
    args = [a if axis is None else jax.tree.map(lambda x: x[0], a)
            for a, axis in zip(args, in_axes)]
    return jax.tree.map(lambda x: x[None], fn(*args))
  return looped if num_runs > 1 else single


def chunk_guard(num_runs: int, runs_together: str) -> Optional[str]:
  """The cheap guard (``train_step``'s) of a chunk of ``num_runs`` runs
  trained together as ``runs_together``: none where vmapped, else ``"loss"``."""
  return None if vmapped(num_runs, runs_together) else "loss"


def train_chunk(state: TrainState, images: jax.Array, rngs: jax.Array,
                scalars: Dict[str, jax.Array], *, num_steps: int, num_runs: int,
                runs_together: str, guard: Optional[str],
                **step_kwargs) -> Tuple[Tuple[TrainState, Dict], jax.Array]:
  """``train_steps`` of ``num_runs`` runs (``over_runs``, ``runs_together``), and
  whether they stayed finite.

  The caller runs a chunk with the cheap guard (``chunk_guard``) and, only
  where it did not stay finite, again from ``state`` with the full guard
  (``"gradients"``), which stops at the first bad step (``program.build``).
  Finite steps compute the same bits with either, and the full guard is
  dear: its cond waits for every gradient's check before the update, and
  vmapped it is a select over the whole state (on the paper's MLP on CPU, a
  fifth of a step alone and a third vmapped). The check, every loss and the
  final state finite, is sound for Adam: its first moment
  mu <- b1 mu + (1 - b1) g keeps a non-finite gradient's NaN or inf to the
  end of the chunk.

  Returns:
    ((the runs' states after the chunk, their stacked metrics), whether
    every loss and the final states are finite).
  """
  out, losses_finite = over_runs(
      functools.partial(train_steps, num_steps=num_steps, guard=guard, **step_kwargs),
      num_runs, [0, None, 0, 0], runs_together)(state, images, rngs, scalars)
  finite = jnp.all(jnp.stack([jnp.all(losses_finite)] + [
      jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(out[0])]))
  return out, finite


def run_slice(tree, i: int):
  """Run ``i`` of a tree with a leading run axis."""
  return jax.tree.map(lambda x: x[i], tree)
