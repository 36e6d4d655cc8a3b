"""K-means in JAX: k-means++ seeding and Lloyd iterations, all inits at once.

The evaluation's K-means (``eval.kmeans_backend='jax'``) as one jitted
program: the ``num_inits`` initialisations are vmapped, each seeded by greedy
k-means++ (``2 + log K`` candidates per centre, as scikit-learn does) and
refined by Lloyd iterations until the squared centre shift falls under
``tol`` times the mean per-feature variance (scikit-learn's criterion); the
init with the lowest inertia wins. Squared distances are
``functional.squared_distances`` (one float32 matmul at the highest
precision). A cluster that loses all its points keeps its centre
(``lloyd_step``, which ``codebook_health.kmeans_codebook`` shares).
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from softvq_jax.quantizers import functional

Array = jax.Array


class KMeans(NamedTuple):
  """The best of the inits: its labels, inertia and centres."""
  labels: Array  # (N,) int32 cluster ids.
  inertia: Array  # () float32: sum of squared distances to the closest centre.
  centres: Array  # (K, d) float32.


def lloyd_step(x: Array, centres: Array) -> Array:
  """One Lloyd update of ``(K, d)`` centres on ``(N, d)`` float32 points: each
  centre moves to the mean of its points; one without points stays put."""
  labels = functional.nearest_indices(functional.squared_distances(x, centres))
  one_hot = jax.nn.one_hot(labels, centres.shape[0], dtype=jnp.float32)
  counts = jnp.sum(one_hot, axis=0)
  sums = jnp.matmul(one_hot.T, x, precision=functional.PRECISION)
  return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)


def kmeans_plus_plus(rng: Array, x: Array, num_clusters: int) -> Array:
  """Greedy k-means++: each new centre is the best of ``2 + log K`` candidates
  drawn in proportion to the squared distance to the closest centre so far."""
  trials = 2 + int(math.log(num_clusters))
  first_rng, rng = jax.random.split(rng)
  first = jax.random.randint(first_rng, (), 0, x.shape[0])
  centres = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
  closest = functional.squared_distances(x, x[first][None])[:, 0]

  def add_centre(i, carry):
    centres, closest = carry
    logits = jnp.log(jnp.maximum(closest, 1e-30))
    candidates = jax.random.categorical(jax.random.fold_in(rng, i), logits, shape=(trials,))
    # (trials, N): each candidate's closest distances if it were added.
    with_candidate = jnp.minimum(closest[None], functional.squared_distances(x, x[candidates]).T)
    best = jnp.argmin(with_candidate.sum(-1))
    return centres.at[i].set(x[candidates[best]]), with_candidate[best]

  centres, _ = jax.lax.fori_loop(1, num_clusters, add_centre, (centres, closest))
  return centres


def lloyd(x: Array, centres: Array, max_iter: int, tol: float) -> KMeans:
  """Lloyd iterations from ``centres`` until the squared shift is <= ``tol``."""

  def update(carry):
    centres, _, i = carry
    new = lloyd_step(x, centres)
    return new, jnp.sum((new - centres)**2), i + 1

  def not_converged(carry):
    _, shift, i = carry
    return (shift > tol) & (i < max_iter)

  centres, _, _ = jax.lax.while_loop(not_converged, update,
                                     (centres, jnp.asarray(jnp.inf, x.dtype), 0))
  distances = functional.squared_distances(x, centres)
  return KMeans(functional.nearest_indices(distances), jnp.min(distances, -1).sum(),
                centres)


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
  x = functional.as_float32(x)
  abs_tol = tol * jnp.mean(jnp.var(x, axis=0))

  def one_init(i):
    init_rng = jax.random.fold_in(rng, i)
    return lloyd(x, kmeans_plus_plus(init_rng, x, num_clusters), max_iter, abs_tol)

  runs = jax.vmap(one_init)(jnp.arange(num_inits))
  best = jnp.argmin(runs.inertia)
  return jax.tree.map(lambda leaf: leaf[best], runs)
