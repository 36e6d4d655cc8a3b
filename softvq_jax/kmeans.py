"""K-means in JAX: k-means++ seeding and Lloyd iterations, all inits at once.

The evaluation's K-means (``eval.kmeans_backend='jax'``) as one jitted
program: the ``num_inits`` initialisations are vmapped, each seeded by greedy
k-means++ (``2 + log K`` candidates per centre, as scikit-learn does) and
refined by Lloyd iterations until the squared centre shift falls under
``tol`` times the mean per-feature variance (scikit-learn's criterion); the
init with the lowest inertia wins. Squared distances come from one matmul,
``|x|^2 - 2 x c^T + |c|^2``, in float32 at the highest matmul precision.
A cluster that loses all its points keeps its centre.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class KMeans(NamedTuple):
  """The best of the inits: its labels, inertia and centres."""
  labels: Array  # (N,) int32 cluster ids.
  inertia: Array  # () float32: sum of squared distances to the closest centre.
  centres: Array  # (K, d) float32.


def squared_distances(x: Array, centres: Array, x_sq: Array) -> Array:
  """``(N, K)`` squared distances, clipped at 0, from one matmul."""
  cross = jnp.dot(x, centres.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(x_sq[:, None] - 2.0 * cross + jnp.sum(centres**2, -1)[None], 0.0)


def kmeans_plus_plus(rng: Array, x: Array, num_clusters: int, x_sq: Array) -> Array:
  """Greedy k-means++: each new centre is the best of ``2 + log K`` candidates
  drawn in proportion to the squared distance to the closest centre so far."""
  trials = 2 + int(math.log(num_clusters))
  first_rng, rng = jax.random.split(rng)
  first = jax.random.randint(first_rng, (), 0, x.shape[0])
  centres = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
  closest = squared_distances(x, x[first][None], x_sq)[:, 0]

  def add_centre(i, carry):
    centres, closest = carry
    logits = jnp.log(jnp.maximum(closest, 1e-30))
    candidates = jax.random.categorical(jax.random.fold_in(rng, i), logits, shape=(trials,))
    # (trials, N): each candidate's closest distances if it were added.
    with_candidate = jnp.minimum(closest[None], squared_distances(x, x[candidates], x_sq).T)
    best = jnp.argmin(with_candidate.sum(-1))
    return centres.at[i].set(x[candidates[best]]), with_candidate[best]

  centres, _ = jax.lax.fori_loop(1, num_clusters, add_centre, (centres, closest))
  return centres


def _assign(x, centres, x_sq):
  distances = squared_distances(x, centres, x_sq)
  return jnp.argmin(distances, -1), jnp.min(distances, -1)


def lloyd(x: Array, centres: Array, x_sq: Array, max_iter: int, tol: float) -> KMeans:
  """Lloyd iterations from ``centres`` until the squared shift is <= ``tol``."""
  num_clusters = centres.shape[0]

  def update(carry):
    centres, _, i = carry
    labels, _ = _assign(x, centres, x_sq)
    one_hot = jax.nn.one_hot(labels, num_clusters, dtype=x.dtype)
    counts = one_hot.sum(0)
    sums = jnp.dot(one_hot.T, x, precision=jax.lax.Precision.HIGHEST)
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centres)
    return new, jnp.sum((new - centres)**2), i + 1

  def not_converged(carry):
    _, shift, i = carry
    return (shift > tol) & (i < max_iter)

  centres, _, _ = jax.lax.while_loop(not_converged, update,
                                     (centres, jnp.asarray(jnp.inf, x.dtype), 0))
  labels, closest = _assign(x, centres, x_sq)
  return KMeans(labels.astype(jnp.int32), closest.sum(), centres)


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_inits", "max_iter"))
def kmeans(rng: Array, x: Array, num_clusters: int, num_inits: int, max_iter: int = 300,
           tol: float = 1e-4) -> KMeans:
  """The lowest-inertia K-means of ``num_inits`` vmapped initialisations.

  Args:
    rng: a key; init i uses ``fold_in(rng, i)``.
    x: ``(N, d)`` points (cast to float32).
    num_clusters: K.
    num_inits: independent k-means++ initialisations.
    max_iter: Lloyd iterations at most, per init.
    tol: relative tolerance: the squared centre shift at which an init
      stops, in units of the mean per-feature variance of ``x``.
  """
  x = jnp.asarray(x, jnp.float32)
  x_sq = jnp.sum(x**2, -1)
  abs_tol = tol * jnp.mean(jnp.var(x, axis=0))

  def one_init(i):
    init_rng = jax.random.fold_in(rng, i)
    return lloyd(x, kmeans_plus_plus(init_rng, x, num_clusters, x_sq), x_sq, max_iter,
                 abs_tol)

  runs = jax.vmap(one_init)(jnp.arange(num_inits))
  best = jnp.argmin(runs.inertia)
  return jax.tree.map(lambda leaf: leaf[best], runs)
