"""The one functional core of every VQ module: its variables, the
first-batch initialisation, index statistics and ``embed``, as pure functions.

The Flax linen modules (``softvq_jax.quantizers``, and the paper's
``model.bottlenecks.VQ`` / ``model.bottlenecks.SoftVQ``) and the Flax NNX modules
(``softvq_jax.quantizers.nnx``) only hold the variables and call
``forward.hard_forward`` or ``soft_forward``, which build on this
module; the options they read are the attributes of
``options.VQOptions`` / ``SoftVQOptions``, passed as ``opts``.

Variables:

* ``params``: ``codebook`` ``(K, d)`` when trained by gradient; ``log_var``
  ``(K,)``, a soft quantizer's per-codeword log sigma_k^2.
* ``state`` (linen's ``'ema'`` collection, NNX's ``QuantizerState``):
  ``cluster_size``, ``embed_sum``, ``codebook`` of an EMA codebook; and, for
  an initialisation on the first training batch, ``initialized``,
  ``init_key`` and the ``codebook_offset`` / ``log_var_offset`` that the
  initialisation sets. A parameter so initialised is used as ``param +
  offset``: the offset is fixed, so gradient steps (SGD, Adam, ...) move
  the sum exactly as they would move a parameter that started there.

Statistics (EMA sums, usage, perplexities, the initialisation's data) are
float32 whatever the input dtype, and combined over ``axis_name`` when that
axis is bound (inside ``shard_map``/``pmap``); unbound, they are local.
"""

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.quantizers import codebook_health as health
from softvq_jax.quantizers import functional
from softvq_jax.quantizers import streaming
from softvq_jax.quantizers.options import SoftVQOptions
from softvq_jax.quantizers.options import VQOptions

Array = jax.Array
Aux = Dict[str, Any]
Variables = Dict[str, Array]

CODEBOOK_INITS = ("uniform", "data", "kmeans")
# Where a soft quantizer's log sigma_k^2 come from: the caller, per latent
# vector (the paper's head; ``SoftVQ``), one learned per codeword, or one
# fixed at the first training batch's fit.
VARIANCES = ("sample", "codeword", "fixed")

# TF1's uniform_unit_scaling_initializer for a (K, d) codebook: U(+-sqrt(3/K)).
uniform_unit_scaling = nn.initializers.variance_scaling(
    1.0, "fan_in", "uniform", in_axis=0, out_axis=1)


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


def needs_first_batch(opts: VQOptions, soft: bool) -> bool:
  """Whether initialisation reads data: a data codebook or a variance fit."""
  fit = soft and learns_log_var(opts) and opts.log_var_init is None
  return opts.codebook_init != "uniform" or fit


def first_batch_state(opts: VQOptions, dim: int, soft: bool) -> Dict[str, Callable[[Array], Array]]:
  """Initialisers (of a PRNG key) of the state that the first training batch sets."""
  k = opts.num_codewords
  state = {"initialized": lambda key: jnp.zeros((), bool),
           "init_key": jax.random.key_data}
  if opts.ema_decay is None and opts.codebook_init != "uniform":
    state["codebook_offset"] = lambda key: jnp.zeros((k, dim), opts.param_dtype)
  if soft and learns_log_var(opts) and opts.log_var_init is None:
    state["log_var_offset"] = lambda key: jnp.zeros((k,), opts.param_dtype)
  return state


def ema_state(codebook: Array) -> Variables:
  """An EMA codebook's statistics, starting at ``codebook`` with unit counts."""
  codebook = functional.as_float32(codebook)
  return {"cluster_size": jnp.ones(codebook.shape[:1]), "embed_sum": codebook,
          "codebook": codebook}


def data_codebook(kind: str, rng: Array, z: Array, num_codewords: int,
                  chunk_size: Optional[int] = None, weights: Optional[Array] = None) -> Array:
  """A ``(K, d)`` float32 codebook from encodings ``z`` ``(..., d)``: their
  first K (``"data"``, cycled when there are fewer) or k-means centres
  (``"kmeans"``), then ``distinct_codewords``. Encodings of zero
  ``weights`` ``(...)`` (padding) are left out."""
  z = functional.as_float32(jax.lax.stop_gradient(z)).reshape(-1, z.shape[-1])
  valid = z
  if weights is not None:
    z, weights, valid = weighted_first(z, weights)
  if kind == "kmeans":
    codebook = health.kmeans_codebook(rng, z, num_codewords, chunk_size=chunk_size,
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
  """The codebook in use: the EMA one, or the parameter (plus its offset)."""
  if opts.ema_decay is not None:
    return state["codebook"]
  if "codebook_offset" in state:
    return params["codebook"] + state["codebook_offset"]
  return params["codebook"]


def codeword_log_var(opts: SoftVQOptions, params: Variables, state: Variables) -> Array:
  """A soft quantizer's own ``(K,)`` log sigma_k^2; ``"fixed"`` ones get no gradient."""
  log_var = params["log_var"]
  if "log_var_offset" in state:
    log_var = log_var + state["log_var_offset"]
  return jax.lax.stop_gradient(log_var) if opts.variance == "fixed" else log_var


def first_batch(opts: VQOptions, params: Variables, state: Variables, z: Array, *,
                train: bool, weights: Optional[Array] = None) -> Variables:
  """In training, the state after the data-dependent initialisation on ``z``
  (all shards' ``z`` under a bound ``axis_name``; rows of zero ``weights``
  left out), once: later calls and a restored state with ``initialized``
  set return ``state`` unchanged."""
  if not train or "initialized" not in state:
    return state

  def initialise():  # Offsets are constants: gradients reach the parameters alone.
    params_stop = jax.lax.stop_gradient(params)
    x = functional.as_float32(jax.lax.stop_gradient(z)).reshape(-1, z.shape[-1])
    w = None if weights is None else functional.as_float32(weights).reshape(-1)
    x, w = _gather(opts.axis_name, x), None if w is None else _gather(opts.axis_name, w)
    new = dict(state, initialized=jnp.ones((), bool))
    fitted = codebook(opts, params_stop, state)
    if opts.codebook_init != "uniform":
      key = jax.random.wrap_key_data(state["init_key"])
      fitted = data_codebook(opts.codebook_init, key, x, opts.num_codewords,
                             opts.chunk_size, w).astype(fitted.dtype)
      if opts.ema_decay is not None:
        new.update(ema_state(fitted))
      else:
        new["codebook_offset"] = fitted - params_stop["codebook"]
    if "log_var_offset" in state:
      table = functional.l2_normalize(fitted) if opts.cosine else fitted
      log_var = fit_log_var(x, table, opts.chunk_size, w)
      new["log_var_offset"] = (log_var - params_stop["log_var"]).astype(
          params_stop["log_var"].dtype)
    return new

  return jax.lax.cond(state["initialized"], lambda: state, initialise)


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
  (``checked_indices`` for indices out of range)."""
  return jnp.take(table, checked_indices(indices, table.shape[0]), axis=0).astype(dtype)


def checked_indices(indices: Array, num_codes: int) -> Array:
  """Integer ``indices`` of ``num_codes`` codes, for a lookup.

  Out-of-range indices are a ``ValueError`` where the indices are concrete;
  traced (under jit) they are clamped to ``[0, num_codes - 1]``, the nearest
  valid code, never NaN.
  """
  if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
    raise TypeError(f"embed takes integer indices, got dtype {jnp.result_type(indices)}")
  try:
    values = np.asarray(indices)
  except jax.errors.TracerArrayConversionError:
    values = None
  if values is not None and values.size and (values.min() < 0 or values.max() >= num_codes):
    raise ValueError(f"embed: indices must lie in [0, {num_codes}), got "
                     f"{values.min()} to {values.max()}")
  return jnp.clip(indices, 0, num_codes - 1)
