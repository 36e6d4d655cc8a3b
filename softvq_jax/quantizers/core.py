"""The one functional core of every VQ module: its variables, the
data-dependent initialisation, index statistics and ``embed``, as pure functions.

The Flax linen modules (``softvq_jax.quantizers``, and the paper's
``model.bottlenecks.VQ`` / ``model.bottlenecks.SoftVQ``), the Flax NNX
modules (``softvq_jax.quantizers.nnx``) and the plain-JAX functions of
``pure`` only hold the variables and call ``forward.hard_forward`` or
``soft_forward``, which build on this module; the options they read are
``options.VQOptions`` / ``SoftVQOptions``, passed as ``opts``.

Variables:

* ``params``: ``codebook`` ``(K, d)`` when trained by gradient; ``log_var``
  ``(K,)``, a soft quantizer's per-codeword log sigma_k^2. Each is exactly
  the value in use. SimVQ (``codebook_transform``) holds the learned map
  ``codebook_transform`` ``(d, d)`` instead of ``codebook``. With
  ``separate_codebook_per_head`` every codebook array has a leading
  ``heads`` axis (``heads``).
* ``state`` (linen's ``'ema'`` collection, NNX's ``QuantizerState``):
  ``cluster_size``, ``embed_sum``, ``codebook`` of an EMA codebook;
  SimVQ's ``frozen_codebook``, which the map multiplies; and
  ``initialized`` where the start reads data (``codebook_init`` "data" or
  "kmeans", or a soft quantizer's variance fit): ``initialize`` sets the
  codebook (or variances) from a batch, and a training call before it is an
  error. Nothing reads data at construction or ``init``.

Statistics (EMA sums, usage, perplexities, the initialisation's data) are
float32 whatever the input dtype, and combined over ``axis_name`` when that
axis is bound (inside ``shard_map``/``pmap``); unbound, they are local, and
inside ``shard_map`` with manual axes an unset ``axis_name`` is an error
(``checks.check_axis_name``).
"""

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.quantizers import codebook_health as health
from softvq_jax.quantizers import functional
from softvq_jax.quantizers import heads
from softvq_jax.quantizers import streaming
from softvq_jax.quantizers.options import SoftVQOptions
from softvq_jax.quantizers.options import VQOptions

Array = jax.Array
Aux = Dict[str, Any]
Variables = Dict[str, Array]

CODEBOOK_INITS = ("uniform", "data", "kmeans")
# Where a soft quantizer's log sigma_k^2 come from: the caller, per latent
# vector (the paper's head; ``SoftVQ``), one learned per codeword, or one
# fixed at ``initialize``'s fit.
VARIANCES = ("sample", "codeword", "fixed")



def uniform_unit_scaling(key: Array, shape, dtype=jnp.float32) -> Array:
  """TF1's uniform_unit_scaling_initializer for ``(..., K, d)`` codebooks: U(+-sqrt(3/K))."""
  return nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=-2, out_axis=-1,
                                          batch_axis=tuple(range(len(shape) - 2)))(
                                              key, shape, dtype)


def frozen_codebook(key: Array, shape, dtype=jnp.float32) -> Array:
  """SimVQ's frozen codebook: N(0, 1/d) entries (vector-quantize-pytorch's ``SimVQ``)."""
  return (jax.random.normal(key, shape) * shape[-1] ** -0.5).astype(dtype)


def code_dim(opts: VQOptions, dim: int) -> int:
  """The size of the vectors a codeword stands for: ``codebook_dim``, else
  ``dim / heads``; one ``ValueError`` when ``heads`` does not divide ``dim``."""
  if opts.codebook_dim:
    return opts.codebook_dim
  if dim % opts.heads:
    raise ValueError(f"{'Soft' if isinstance(opts, SoftVQOptions) else ''}VectorQuantizer: "
                     f"heads={opts.heads} must divide z's last dimension {dim} (or set "
                     "codebook_dim, the size of each head's codewords)")
  return dim // opts.heads


def projection_shapes(opts: VQOptions, dim: int) -> Dict[str, Tuple[int, ...]]:
  """The ``codebook_dim`` projections' kernel shapes (none without it)."""
  if not opts.codebook_dim:
    return {}
  inner = opts.heads * opts.codebook_dim
  return {"project_in": (dim, inner), "project_out": (inner, dim)}


def bound_axis(axis_name: Optional[str]) -> Optional[str]:
  """``axis_name`` where it is bound (inside ``shard_map``/``pmap``), else None."""
  if axis_name is None:
    return None
  try:
    jax.lax.axis_index(axis_name)
  except NameError:
    return None
  return axis_name


def learns_log_var(opts: SoftVQOptions) -> bool:
  """Whether a soft quantizer holds its own per-codeword ``log_var``."""
  return opts.variance in ("codeword", "fixed")


def needs_data(opts: VQOptions) -> bool:
  """Whether the start reads data (``initialize``): a data codebook or a variance fit."""
  fit = isinstance(opts, SoftVQOptions) and learns_log_var(opts) and opts.log_var_init is None
  return opts.codebook_init != "uniform" or fit


def init_variables(key: Array, opts: VQOptions, dim: int) -> Tuple[Variables, Variables]:
  """``(params, state)`` of a quantizer of ``dim``-vectors before ``initialize``:
  the codebook at TF1's unit scaling, ``log_var`` at ``log_var_init`` (or 0),
  the projections at LeCun normal and zero bias."""
  c, dtype = code_dim(opts, dim), opts.param_dtype
  shape = heads.table_shape(opts, c)
  keys = jax.random.split(key, 3)
  params, state = {}, {}
  for (name, kernel), rng in zip(projection_shapes(opts, dim).items(), keys[1:]):
    params[name] = nn.initializers.lecun_normal()(rng, kernel, dtype)
    params[name + "_bias"] = jnp.zeros(kernel[1:], dtype)
  if opts.codebook_transform:
    state["frozen_codebook"] = frozen_codebook(keys[0], shape, dtype)
    params["codebook_transform"] = transform_init(jax.random.fold_in(keys[0], 1), shape, dtype)
  elif opts.ema_decay is None:
    params["codebook"] = uniform_unit_scaling(keys[0], shape, dtype)
  else:
    state.update(ema_state(uniform_unit_scaling(keys[0], shape, dtype)))
  if isinstance(opts, SoftVQOptions) and learns_log_var(opts):
    start = 0.0 if opts.log_var_init is None else opts.log_var_init
    params["log_var"] = jnp.full(shape[:-1], start, dtype)
  if needs_data(opts):
    state["initialized"] = jnp.zeros((), bool)
  return params, state


def transform_init(key: Array, table: Tuple[int, ...], dtype=jnp.float32) -> Array:
  """SimVQ's learned ``(..., c, c)`` map of a ``(..., K, c)`` codebook:
  U(+-1/sqrt(c)), torch's ``nn.Linear`` default, which the SimVQ authors'
  code and vector-quantize-pytorch use. (LeCun normal, 1.7x larger, left
  28% of the codes unused in the tokenizer benchmark: see
  experiments/results/quantizer_benchmark/README.md.)"""
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=-2, out_axis=-1,
                                          batch_axis=tuple(range(len(table) - 2)))(
                                              key, table[:-2] + table[-1:] * 2, dtype)


def ema_state(codebook: Array) -> Variables:
  """An EMA codebook's statistics, starting at ``codebook`` ``(..., K, d)``
  with unit counts."""
  codebook = functional.as_float32(codebook)
  return {"cluster_size": jnp.ones(codebook.shape[:-1]), "embed_sum": codebook,
          "codebook": codebook}


def data_codebook(kind: str, rng: Array, z: Array, num_codewords: int,
                  chunk_size: Optional[int] = None, weights: Optional[Array] = None,
                  kmeans_iters: int = 10) -> Array:
  """A ``(K, d)`` float32 codebook from encodings ``z`` ``(..., d)``: their
  first K (``"data"``, cycled when there are fewer) or k-means centres
  (``"kmeans"``, ``kmeans_iters`` Lloyd steps), then ``distinct_codewords``. Encodings of zero
  ``weights`` ``(...)`` (padding) are left out."""
  z = functional.as_float32(jax.lax.stop_gradient(z)).reshape(-1, z.shape[-1])
  valid = z
  if weights is not None:
    z, weights, valid = weighted_first(z, weights)
  if kind == "kmeans":
    codebook = health.kmeans_codebook(rng, z, num_codewords, kmeans_iters, chunk_size=chunk_size,
                                      weights=weights)
  else:
    codebook = valid[jnp.arange(num_codewords) % valid.shape[0]]
  return distinct_codewords(jax.random.fold_in(rng, 1), codebook, valid)


def weighted_first(z: Array, weights: Array) -> Tuple[Array, Array, Array]:
  """Rows ``z`` ``(N, d)`` with nonzero ``weights`` first (in order), the
  padding last: ``(z, weights, valid)``, reordered, and ``valid``, the
  nonzero-weight rows cycled to all N (shapes stay static)."""
  weights = functional.as_float32(weights).reshape(-1)
  order = jnp.argsort(weights <= 0, stable=True)
  z, weights = z[order], weights[order]
  return z, weights, z[jnp.arange(z.shape[0]) % jnp.maximum(jnp.sum(weights > 0), 1)]


def index_statistics(indices: Array, num_codes: int, axis_name: Optional[str] = None,
                     weights: Optional[Array] = None) -> Aux:
  """``perplexity`` and ``usage`` of ``indices`` over ``num_codes`` codes,
  each index counted with its ``weights`` (default 1), combined over
  ``axis_name`` where it is bound."""
  axis = bound_axis(axis_name)
  counts = functional.index_counts(indices, num_codes, weights)
  return {"perplexity": functional.perplexity(counts / total_weight(indices, weights), axis),
          "usage": functional.usage(counts, axis)}


def total_weight(indices: Array, weights: Optional[Array]) -> Array:
  """How many indices count: their number, or the sum of their weights."""
  return indices.size if weights is None else jnp.maximum(jnp.sum(weights), 1.0)


def distinct_codewords(rng: Array, codebook: Array, z: Array) -> Array:
  """``codebook`` with every repeated row moved off its twin by a small
  Gaussian step (1% of the encodings' spread, at least 1e-4 of their root
  mean square, at least 1e-7), so that a batch with fewer distinct vectors
  than K still gives K distinct codewords. Rows without a twin are returned
  unchanged."""
  projection = jnp.matmul(codebook, jax.random.normal(rng, codebook.shape[1:]),
                          precision=functional.PRECISION)
  order = jnp.argsort(projection)
  ordered = codebook[order]
  repeat = jnp.concatenate([jnp.zeros((1,), bool),
                            jnp.all(ordered[1:] == ordered[:-1], axis=-1)])
  repeat = jnp.zeros_like(repeat).at[order].set(repeat)
  spread = jnp.sqrt(jnp.mean(jnp.var(z, axis=0)))
  step = 0.01 * jnp.maximum(spread, 0.01 * jnp.sqrt(jnp.mean(jnp.square(z))) + 1e-5)
  jitter = step * jax.random.normal(jax.random.fold_in(rng, 1), codebook.shape)
  return jnp.where(repeat[:, None], codebook + jitter, codebook)


def fit_log_var(z: Array, codebook: Array, chunk_size: Optional[int] = None,
                weights: Optional[Array] = None) -> Array:
  """log sigma^2, one for all codewords: the (``weights``-weighted) mean
  squared distance of ``z`` to its nearest codeword per dimension (at least
  1e-6).

  That is the maximum-likelihood variance of an isotropic mixture with hard
  assignments, so the posterior starts as sharp as the codebook fits the
  data. A start much wider than the clusters (sigma = 1 on small latents)
  makes every posterior near-uniform, and a posterior-weighted EMA then
  pulls every codeword to the mean of the data.
  """
  if chunk_size is None and weights is None:
    inertia = health.kmeans_inertia(z, codebook)
  else:
    if chunk_size is None:
      nearest = jnp.min(functional.squared_distances(z, codebook), axis=-1)
    else:
      nearest = streaming.nearest_codewords(z, codebook, chunk_size)[1]
    w = jnp.ones(nearest.shape) if weights is None else functional.as_float32(weights)
    inertia = jnp.sum(nearest * w) / jnp.maximum(jnp.sum(w), 1e-30)
  return jnp.log(jnp.maximum(inertia / z.shape[-1], 1e-6))


def codebook(opts: VQOptions, params: Variables, state: Variables) -> Array:
  """The codebook in use: the EMA one, the parameter, or SimVQ's frozen
  codebook times its learned map (no gradient when ``freeze_codebook``)."""
  if opts.codebook_transform:
    table = jnp.matmul(functional.as_float32(state["frozen_codebook"]),
                       functional.as_float32(params["codebook_transform"]),
                       precision=functional.PRECISION).astype(params["codebook_transform"].dtype)
  elif opts.ema_decay is not None:
    table = state["codebook"]
  else:
    table = params["codebook"]
  return jax.lax.stop_gradient(table) if opts.freeze_codebook else table


def codeword_log_var(opts: SoftVQOptions, params: Variables, state: Variables) -> Array:
  """A soft quantizer's own ``(K,)`` log sigma_k^2; ``"fixed"`` ones get no gradient."""
  log_var = params["log_var"]
  return jax.lax.stop_gradient(log_var) if opts.variance == "fixed" else log_var


def initialize(opts: VQOptions, params: Variables, state: Variables, z: Array, key: Array, *,
               weights: Optional[Array] = None) -> Tuple[Variables, Variables]:
  """``(params, state)`` started from encodings ``z`` ``(..., d)`` (the
  quantizer's input, after ``codebook_dim``'s projection), with all
  shards' ``z`` under a bound ``axis_name`` and rows of zero ``weights``
  or a non-finite entry left out: the codebook (``codebook_init`` "data" or "kmeans": the
  parameter, or the EMA state) and a soft quantizer's own ``log_var``
  fit (``log_var_init=None``). ``initialized`` is then True. Without data
  to read (``needs_data``) the variables come back unchanged."""
  if not needs_data(opts):
    return params, state
  rows = (-1,) + z.shape[z.ndim - 1 - (opts.heads > 1):]  # (N, [heads,] c)
  x = _gather(opts.axis_name, functional.as_float32(jax.lax.stop_gradient(z)).reshape(rows))
  w = None if weights is None else heads.head_weights(opts, _gather(
      opts.axis_name, functional.as_float32(weights).reshape(-1)))
  params, state = dict(params), dict(state, initialized=jnp.ones((), bool))
  fit_variance = (isinstance(opts, SoftVQOptions) and learns_log_var(opts)
                  and opts.log_var_init is None)

  def fit(x, w):
    fitted = codebook(opts, params, state)
    if opts.codebook_init != "uniform":
      fitted = start_codebook(opts, key, x, w).astype(fitted.dtype)
    table = functional.l2_normalize(fitted) if opts.cosine else fitted
    return fitted, start_log_var(opts, x, table, w) if fit_variance else None

  fitted, log_var = _on_finite_rows(fit, x, w)
  if opts.codebook_init != "uniform":
    if opts.ema_decay is not None:
      state.update(ema_state(fitted))
    else:
      params["codebook"] = fitted
  if fit_variance:
    params["log_var"] = jnp.broadcast_to(log_var, params["log_var"].shape).astype(
        params["log_var"].dtype)
  return params, state


def _on_finite_rows(fn, x: Array, weights: Optional[Array]):
  """``fn(x, weights)`` with the rows of ``x`` ``(N, [heads,] c)`` that hold a
  non-finite entry left out (weight 0, at zero); without weights and with
  every row finite, ``fn(x, None)`` itself (decided at run time under jit)."""
  finite = functional.finite_rows(x)
  clean = lambda: fn(jnp.where(finite[..., None], x, 0.0),
                     functional.finite_weights(finite, weights))
  if weights is not None:
    return clean()
  try:
    all_finite = bool(np.asarray(jnp.all(finite)))
  except jax.errors.TracerArrayConversionError:
    return jax.lax.cond(jnp.all(finite), lambda: fn(x, None), clean)
  return fn(x, None) if all_finite else clean()


def start_codebook(opts: VQOptions, key: Array, x: Array,
                   weights: Optional[Array] = None) -> Array:
  """``data_codebook`` of the quantizer's input rows ``x`` ``(N, [heads,] c)``
  (``weights`` ``(N[, heads])``): ``([heads,] K, c)``, float32."""
  start = lambda x, w, key: data_codebook(opts.codebook_init, key, x, opts.num_codewords,
                                          opts.chunk_size, w, opts.kmeans_iters)
  keys = jax.random.split(key, opts.heads) if heads.separate(opts) else key
  return heads.pool_or_map(opts, start, x, weights, keys)


def start_log_var(opts: SoftVQOptions, x: Array, table: Array,
                  weights: Optional[Array] = None) -> Array:
  """``fit_log_var`` of rows ``x`` ``(N, [heads,] c)`` to ``table``: a scalar,
  or ``(heads, 1)`` with separate codebooks (broadcastable to ``log_var``)."""
  fit = lambda x, w, table: fit_log_var(x, table, opts.chunk_size, w)
  log_var = heads.pool_or_map(opts, fit, x, weights, table)
  return log_var[..., None] if heads.separate(opts) else log_var


def _gather(axis_name: Optional[str], x: Array) -> Array:
  """Every shard's rows of ``x``, in axis order and the same on every shard,
  under a bound ``axis_name``; ``x`` itself otherwise."""
  axis = bound_axis(axis_name)
  if axis is None:
    return x
  full = jnp.zeros((jax.lax.psum(1, axis),) + x.shape).at[jax.lax.axis_index(axis)].set(x)
  return jax.lax.psum(full, axis).reshape((-1,) + x.shape[1:])


def embed(table: Array, indices: Array, dtype: Any) -> Array:
  """The codewords of integer ``indices`` (any shape), ``(..., d)`` in ``dtype``
  (``functional.lookup`` for indices out of range)."""
  return functional.lookup(table, indices).astype(dtype)
