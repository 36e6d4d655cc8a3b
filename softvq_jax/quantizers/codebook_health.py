"""Codebook health as pure, jit-safe functions: k-means initialisation, dead
codewords and their restart.

The quantizer core (``softvq_jax.quantizers.core``) wires them in:
``codebook_init="kmeans"`` runs ``kmeans_codebook`` on the encodings that
``initialize`` is given (the initialisation batch for the paper's layers), and
``dead_code_threshold`` restarts the codewords whose EMA count falls under
it with ``restart_dead_codes``.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from softvq_jax.quantizers import functional
from softvq_jax.quantizers import kmeans
from softvq_jax.quantizers import streaming

Array = jax.Array


def kmeans_codebook(rng: Array, z: Array, num_codewords: int, num_iters: int = 10,
                    chunk_size: Optional[int] = None,
                    weights: Optional[Array] = None) -> Array:
  """A codebook from k-means on encodings: k-means++ seeding (one candidate
  per centre, unlike the evaluation's greedy ``kmeans.kmeans_plus_plus``),
  then ``num_iters`` of ``kmeans.lloyd_step``.

  Traceable (fixed shapes and loop counts), so it can run inside a
  module's initialiser under jit.

  Args:
    rng: PRNG key of the seeding.
    z: encodings, shape ``(..., d)``, at least ``num_codewords`` of them.
    num_codewords: K.
    num_iters: Lloyd iterations after the seeding.
    chunk_size: None, or codewords per chunk of a streamed nearest-codeword
      search (``streaming.nearest_codewords``): no ``(N, K)`` temporaries.
    weights: None, or ``(...)`` non-negative weights of the encodings (0:
      left out, e.g. padding), in the seeding and the means.

  Returns:
    Float32 centres, shape ``(K, d)``. A centre left without points keeps
    its previous position.
  """
  z = functional.as_float32(jax.lax.stop_gradient(z)).reshape(-1, z.shape[-1])
  if weights is None:
    first = jax.random.randint(jax.random.fold_in(rng, 0), (), 0, z.shape[0])
    log_weights = 0.0
  else:
    log_weights = jnp.log(functional.as_float32(weights).reshape(-1))
    first = jax.random.categorical(jax.random.fold_in(rng, 0), log_weights)
  centres = jnp.zeros((num_codewords, z.shape[-1]), jnp.float32).at[0].set(z[first])
  nearest = jnp.sum(jnp.square(z - z[first]), axis=-1)

  def seed(k, carry):  # k-means++: the next centre with probability ~ D(x)^2.
    centres, nearest = carry
    logits = jnp.log(jnp.maximum(nearest, 1e-30)) + log_weights
    pick = jax.random.categorical(jax.random.fold_in(rng, k), logits)
    nearest = jnp.minimum(nearest, jnp.sum(jnp.square(z - z[pick]), axis=-1))
    return centres.at[k].set(z[pick]), nearest

  centres, _ = jax.lax.fori_loop(1, num_codewords, seed, (centres, nearest))

  if chunk_size is None and weights is None:
    step = kmeans.lloyd_step
  else:
    step = lambda z, c: _general_lloyd_step(z, c, chunk_size, weights)
  return jax.lax.fori_loop(0, num_iters, lambda _, c: step(z, c), centres)


def _general_lloyd_step(z: Array, centres: Array, chunk_size: Optional[int],
                        weights: Optional[Array]) -> Array:
  """``kmeans.lloyd_step`` with a streamed nearest-centre search and weights."""
  if chunk_size is None:
    labels = functional.nearest_indices(functional.squared_distances(z, centres))
  else:
    labels = streaming.nearest_codewords(z, centres, chunk_size)[0]
  counts, sums = functional.index_sums(z, labels, centres.shape[0], weights)
  return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-30)[:, None], centres)


def kmeans_inertia(z: Array, codebook: Array) -> Array:
  """Mean squared distance of encodings ``(..., d)`` to their nearest codeword."""
  return jnp.mean(jnp.min(functional.squared_distances(z, codebook), axis=-1))


def restart_dead_codes(rng: Array, codebook: Array, dead: Array, z: Array,
                       axis_name: Optional[str] = None) -> Array:
  """Replaces the ``dead`` codewords by random encodings of the batch.

  Args:
    rng: PRNG key of the draw (the step's), the same on every device.
    codebook: shape ``(K, d)``.
    dead: boolean mask, shape ``(K,)``.
    z: the batch's encodings, shape ``(..., d)``.
    axis_name: under ``shard_map``/``pmap``, the batch axis (equal shards in
      axis order): each codeword draws a row of the whole batch and takes it
      from the shard that holds it, so every device gets the same codebook,
      and the same one as a single device on the whole batch.

  Returns:
    The codebook, dead rows replaced, in the codebook's dtype.
  """
  z = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1])
  rows = z.shape[0]
  total = rows * jax.lax.psum(1, axis_name) if axis_name is not None else rows
  picks = jax.random.randint(rng, codebook.shape[:1], 0, total)
  candidates = z[picks % rows]
  if axis_name is not None:
    mine = (picks // rows == jax.lax.axis_index(axis_name))[:, None]
    candidates = jax.lax.psum(jnp.where(mine, candidates, 0), axis_name)
  return jnp.where(dead[:, None], candidates.astype(codebook.dtype), codebook)


def dead_codes(cluster_size: Array, threshold: float) -> Array:
  """The codewords whose EMA count (``cluster_size``, ``(K,)``) is under
  ``threshold``: a boolean mask, shape ``(K,)``."""
  return cluster_size < threshold
