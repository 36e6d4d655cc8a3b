"""Multi-head quantization: each vector split into ``heads`` parts, each
quantized on its own (vector-quantize-pytorch's ``heads`` and
``separate_codebook_per_head``).

The quantizer's input ``(..., heads * c)`` (z itself, or z through
``codebook_dim``'s projection to ``heads * codebook_dim``) becomes
``(..., heads, c)``; indices come back ``(..., heads)``. With one shared
codebook ``(K, c)`` the heads are just more vectors: one set of EMA
statistics and one perplexity over all heads. With
``separate_codebook_per_head`` the codebook is ``(heads, K, c)``, each
head with its own EMA statistics, restarts, variances and statistics
``(heads,)``: the per-codebook step runs under ``jax.vmap`` over heads.
"""

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from softvq_jax.quantizers.options import VQOptions

Array = jax.Array


def separate(opts: VQOptions) -> bool:
  """Whether there is one codebook per head."""
  return opts.heads > 1 and opts.separate_codebook_per_head


def split(opts: VQOptions, x: Array) -> Array:
  """``(..., heads * c)`` as ``(..., heads, c)``; unchanged with one head."""
  return x if opts.heads == 1 else x.reshape(x.shape[:-1] + (opts.heads, -1))


def merge(opts: VQOptions, x: Array) -> Array:
  """``(..., heads, c)`` back to ``(..., heads * c)``; unchanged with one head."""
  return x if opts.heads == 1 else x.reshape(x.shape[:-2] + (-1,))


def head_weights(opts: VQOptions, weights: Optional[Array]) -> Optional[Array]:
  """Row ``weights`` ``(...)`` for every head: ``(..., heads)``."""
  if weights is None or opts.heads == 1:
    return weights
  return jnp.broadcast_to(weights[..., None], weights.shape + (opts.heads,))


def table_shape(opts: VQOptions, c: int) -> Tuple[int, ...]:
  """A codebook's shape: ``(K, c)``, or ``(heads, K, c)`` with separate codebooks."""
  return ((opts.heads,) if separate(opts) else ()) + (opts.num_codewords, c)


def map_codebooks(opts: VQOptions, step: Callable[..., Any], codebook_args: Tuple[Any, ...],
                  x: Array, per_row: Tuple[Optional[Array], ...],
                  make_rng: Callable[[], Array], *, draws: bool):
  """``step(*codebook_args, x, *per_row, make_rng)`` per codebook.

  With one codebook this is the call itself. With separate codebooks it is
  vmapped over heads: ``codebook_args`` (pytrees) on their leading axis, ``x``
  ``(..., heads, c)`` on axis -2, ``per_row`` arrays ``(..., heads[, K])`` on
  the axis after the rows (None stays None). ``draws`` says whether
  ``step`` calls ``make_rng`` (at most twice); each head then gets its own
  keys, from one ``make_rng()`` drawn outside the map. ``step`` returns
  ``(x_q (..., c), indices (...), rest)``; under vmap they come back
  ``(..., heads, c)``, ``(..., heads)`` and ``rest`` with a leading heads
  axis on every leaf.
  """
  if not separate(opts):
    return step(*codebook_args, x, *per_row, make_rng)
  rows = x.ndim - 2
  key = make_rng() if draws else None

  def one(head, args, x, per_row):
    keys = None if key is None else iter(jax.random.split(jax.random.fold_in(key, head), 2))
    return step(*args, x, *per_row, lambda: next(keys))

  row_axes = tuple(None if a is None else rows for a in per_row)
  return jax.vmap(one, in_axes=(0, 0, rows, row_axes), out_axes=(rows, rows, 0))(
      jnp.arange(opts.heads), codebook_args, x, per_row)


def pool_or_map(opts: VQOptions, fn: Callable[..., Any], x: Array, weights: Optional[Array],
                *per_head: Any):
  """``fn(x (N, c), weights (N,) or None, *per_head)`` on rows ``x`` ``(N,
  [heads,] c)`` with ``weights`` ``(N[, heads])``: all heads' rows pooled
  for a shared codebook, or vmapped over heads for separate ones
  (``per_head`` on their leading axis)."""
  if not separate(opts):
    w = None if weights is None else weights.reshape(-1)
    return fn(x.reshape(-1, x.shape[-1]), w, *per_head)
  in_axes = (1, None if weights is None else 1) + (0,) * len(per_head)
  return jax.vmap(fn, in_axes=in_axes)(x, weights, *per_head)
