"""Quantizers for any JAX model, and the cores the paper's bottlenecks share.

``VectorQuantizer`` (eq. 1) and ``SoftVectorQuantizer`` (eqs. 5-7) take a
given ``z`` of shape ``(..., d)``: ``(z, *, train) -> (z_q, aux)``, with
``embed(indices)`` back to codewords. The paper's ``layers.VQ`` and
``layers.SoftVQ`` own an encoder head and call the same cores
(``quantize_hard``, ``quantize_soft``), so that the codebook of either
lives directly under the module (``"codebook"``).

A codebook starts at TF1's unit scaling (``codebook_init="uniform"``, the
authors' choice), at the encodings of the first K examples of the batch the
module is initialised on (``"data"``), or at k-means centres of all of them
(``"kmeans"``). It is trained by gradient, or follows exponential moving
averages in the ``'ema'`` collection (``ema_decay``), whose dead codewords
can restart (``dead_code_threshold``).
"""

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax import bottlenecks as bn
from softvq_jax import codebook_health as health

Array = jax.Array
Aux = Dict[str, Any]

CODEBOOK_INITS = ("uniform", "data", "kmeans")
# Where a soft quantizer's log sigma_k^2 come from: a head of size K on the
# trunk, per latent vector (the paper's; ``SoftVQ``), one learned per
# codeword, or one fixed at the initialisation batch's fit.
VARIANCES = ("sample", "codeword", "fixed")

# TF1's uniform_unit_scaling_initializer for a (K, d) codebook: U(+-sqrt(3/K)).
uniform_unit_scaling = nn.initializers.variance_scaling(
    1.0, "fan_in", "uniform", in_axis=0, out_axis=1)



def codebook_initializer(kind: str, z: Array) -> Callable[..., Array]:
  """The initialiser of a ``(K, d)`` codebook (``CODEBOOK_INITS``).

  Args:
    kind: ``uniform`` (TF1's unit scaling); ``data``: the first K vectors of
      ``z``, the encodings of the batch the module is initialised on;
      ``kmeans``: k-means++ and Lloyd on all of them (``codebook_health``).
    z: encodings, shape ``(..., d)``.
  """
  if kind == "uniform":
    return uniform_unit_scaling
  if kind == "kmeans":
    return lambda rng, shape, dtype=jnp.float32: health.kmeans_codebook(
        rng, z, shape[0]).astype(dtype)
  if kind != "data":
    raise ValueError(f"codebook_init must be one of {CODEBOOK_INITS}, got {kind!r}")

  def from_data(rng, shape, dtype=jnp.float32):
    del rng
    encodings = jax.lax.stop_gradient(z).reshape(-1, shape[-1])
    if encodings.shape[0] < shape[0]:
      raise ValueError(f"codebook_init='data' needs at least {shape[0]} encodings in the "
                       f"initialisation batch, got {encodings.shape[0]}")
    return encodings[:shape[0]].astype(dtype)
  return from_data


def _quantizer_outputs(z_e: Array, z_in: Array, z_q: Array, assignments: Array,
                       indices: Array, *, commitment: float, vq_weight: float,
                       train_codebook: bool, axis_name: Optional[str]) -> Tuple[Array, Aux]:
  """Straight-through output and eq. (27)'s VQ terms, shared by both quantizers.

  Args:
    z_e: noiseless encoder output, the downstream latent.
    z_in: the quantizer's input z'_e (z_e plus noise for soft VQ).
    z_q: hard or soft quantized latents.
    assignments: one-hot or posterior weights, shape ``(..., K)``.
    indices: nearest/most probable codewords, shape ``(...)``.
    commitment: beta of eq. (27).
    vq_weight: scale of the whole VQ term (the authors use 3.0 / 2.0 on
      per-element means; see configs).
    train_codebook: False when the term would train nothing (a hard
      quantizer's EMA codebook).
    axis_name: the batch axis of ``shard_map``/``pmap`` for usage statistics.
  """
  commit = bn.commitment_loss(z_in, z_q, commitment)
  cb = bn.codebook_loss(z_in, z_q) if train_codebook else jnp.zeros_like(commit)
  aux = {
      "loss": vq_weight * (cb + commit),
      "latent": z_e,
      "codebook_loss": cb,
      "commitment_loss": commit,
      "perplexity": bn.codebook_perplexity(assignments, axis_name),
      "usage": bn.codebook_usage(indices, assignments.shape[-1], axis_name),
      "indices": indices,
  }
  return bn.straight_through(z_in, z_q), aux


# The quantizer cores below take the module whose scope holds the codebook:
# VectorQuantizer / SoftVectorQuantizer call them on themselves, and the
# paper's layers.VQ / layers.SoftVQ on themselves too.


def _codebook(module: nn.Module, z: Array) -> Array:
  """The module's codebook ``(K, d)``, ``d`` read from ``z``.

  A ``'codebook'`` parameter trained by gradient, or with ``ema_decay`` the
  ``'ema'`` collection's ``cluster_size``, ``embed_sum`` and ``codebook``
  (float32 statistics). ``codebook_init`` sets where it starts.
  """
  shape = (module.num_codewords, z.shape[-1])
  init = codebook_initializer(module.codebook_init, z)
  if module.ema_decay is None:
    return module.param("codebook", init, shape, module.param_dtype)
  init_rng = module.make_rng("params") if module.is_initializing() else None
  module.variable("ema", "cluster_size", jnp.ones, (module.num_codewords,))
  embed_sum = module.variable("ema", "embed_sum", init, init_rng, shape)
  return module.variable("ema", "codebook", lambda: embed_sum.value).value


def _update_ema(module: nn.Module, z: Array, assignments: Array, train: bool) -> Aux:
  """In training, the EMA codebook step and the restart of dead codewords.

  Returns the aux entries it adds: ``dead_code_fraction`` for EMA codebooks
  (the fraction whose EMA count is under ``dead_code_threshold``, or under
  one assignment per step when that is 0), before the restart.
  """
  if module.ema_decay is None:
    return {}
  size = module.get_variable("ema", "cluster_size")
  threshold = module.dead_code_threshold
  dead = health.dead_codes(size, threshold if threshold > 0 else 1.0)
  if not train:
    return {"dead_code_fraction": jnp.mean(dead)}
  if not module.is_mutable_collection("ema"):
    raise ValueError("training with ema_decay updates the 'ema' collection: apply with "
                     "mutable=['ema'] (or train=False)")
  size, embed_sum, codebook = bn.ema_codebook_update(
      size, module.get_variable("ema", "embed_sum"), z, assignments, module.ema_decay,
      axis_name=module.axis_name)
  if threshold > 0:
    codebook = health.restart_dead_codes(module.make_rng("noise"), codebook, dead, z,
                                         module.axis_name)
    size = jnp.where(dead, threshold, size)
    embed_sum = jnp.where(dead[:, None], codebook * threshold, embed_sum)
  for name, value in (("cluster_size", size), ("embed_sum", embed_sum),
                      ("codebook", codebook)):
    module.put_variable("ema", name, value)
  return {"dead_code_fraction": jnp.mean(dead)}


def _check_quantizer(module: nn.Module) -> None:
  if module.dead_code_threshold > 0 and module.ema_decay is None:
    raise ValueError("dead_code_threshold restarts codewords of an EMA codebook; "
                     "set ema_decay")


def _log_var_initializer(z: Array, codebook: Array) -> Callable[..., Array]:
  """Per-codeword log sigma_k^2 starting at the initialisation batch's mean
  squared distance to its nearest codeword, per dimension (at least 1e-6).

  That is the maximum-likelihood variance of an isotropic mixture with hard
  assignments, so the posterior starts as sharp as the codebook fits the
  data. A start much wider than the clusters (sigma = 1 on small latents)
  makes every posterior near-uniform, and a posterior-weighted EMA then
  pulls every codeword to the mean of the data.
  """
  def init(rng, shape, dtype=jnp.float32):
    del rng
    variance = health.kmeans_inertia(z, codebook) / z.shape[-1]
    return jnp.full(shape, jnp.log(jnp.maximum(variance, 1e-6)), dtype)
  return init


def _codeword_log_var(module: nn.Module, z: Array, codebook: Array) -> Array:
  """log sigma_k^2 of shape ``(K,)`` for a module given no ``log_var``: a
  ``'log_var'`` parameter (starting at ``log_var_init``, or else at
  ``_log_var_initializer``'s fit), learned
  (``variance="codeword"``) or held at its start (``"fixed"``: one variance
  for every codeword, which the gradient never moves)."""
  if module.variance not in ("codeword", "fixed"):
    raise ValueError(f"variance={module.variance!r} needs a log_var argument; "
                     "without one choose 'codeword' or 'fixed'")
  init = (_log_var_initializer(z, codebook) if module.log_var_init is None
          else nn.initializers.constant(module.log_var_init))
  log_var = module.param("log_var", init, (module.num_codewords,), module.param_dtype)
  return jax.lax.stop_gradient(log_var) if module.variance == "fixed" else log_var


def quantize_hard(module: nn.Module, z: Array, *, train: bool) -> Tuple[Array, Aux]:
  """The hard quantizer core: ``z`` to ``(z_q, aux)``, eqs. (1) and (27)."""
  _check_quantizer(module)
  codebook = _codebook(module, z)
  z_q, indices = bn.hard_quantize(jax.lax.stop_gradient(z), codebook)
  onehot = jax.nn.one_hot(indices, module.num_codewords, dtype=jnp.float32)
  extra = _update_ema(module, z, onehot, train)
  out, aux = _quantizer_outputs(
      z, z, z_q, onehot, indices, commitment=module.commitment,
      vq_weight=module.vq_weight, train_codebook=module.ema_decay is None,
      axis_name=module.axis_name)
  return out, {**aux, **extra}


def quantize_soft(module: nn.Module, z: Array, log_var: Optional[Array], *,
                  train: bool) -> Tuple[Array, Aux]:
  """The soft quantizer core, eqs. (5)-(7) and (27): noise, posterior mean.

  ``log_var`` broadcasts against ``(..., K)``; None takes one per codeword
  (``_codeword_log_var``, by ``module.variance``).
  """
  _check_quantizer(module)
  codebook = _codebook(module, z)
  z_in = z
  if train:  # No test on noise_std: it may be traced (train.vmap_key).
    z_in = z + module.noise_std * jax.random.normal(module.make_rng("noise"), z.shape,
                                                    z.dtype)
  if log_var is None:
    log_var = _codeword_log_var(module, z, codebook)
  z_hat, probs = bn.soft_quantize(jax.lax.stop_gradient(z_in), codebook, log_var,
                                  module.normalizer)
  extra = _update_ema(module, z_in, probs, train)
  # The codebook term trains the variances (and a codebook without EMA).
  out, aux = _quantizer_outputs(
      z, z_in, z_hat, probs, jnp.argmax(probs, axis=-1), commitment=module.commitment,
      vq_weight=module.vq_weight, train_codebook=True, axis_name=module.axis_name)
  return out, {**aux, **extra, "probs": probs}


def embed(module: nn.Module, indices: Array) -> Array:
  """The codewords of ``indices`` ``(...)``: ``(..., d)``, in the module's dtype."""
  collection = "params" if module.ema_decay is None else "ema"
  codebook = module.get_variable(collection, "codebook")
  return bn.lookup(codebook, indices).astype(module.dtype or codebook.dtype)


class QuantizerOptions(nn.Module, kw_only=True):
  """The keyword-only options of every quantizer module (their docstrings)."""
  commitment: float = 0.25  # beta of eq. (27).
  vq_weight: float = 1.0  # Scale of eq. (27)'s VQ terms.
  ema_decay: Optional[float] = None  # EMA codebook decay; None: trained by gradient.
  codebook_init: str = "uniform"  # One of CODEBOOK_INITS.
  dead_code_threshold: float = 0.0  # EMA count under which a codeword restarts; 0: off.
  axis_name: Optional[str] = None  # The batch axis under shard_map / pmap.
  dtype: Optional[Any] = None  # Of the outputs; None: the input's.
  param_dtype: Any = jnp.float32  # Of the codebook and learned variances.


class SoftOptions(QuantizerOptions, kw_only=True):
  """``QuantizerOptions`` and the soft quantizer's own."""
  noise_std: float = 0.0  # Std of the white noise on z in training (z'_e).
  normalizer: str = "paper"  # One of bottlenecks.NORMALIZERS.
  variance: str = "codeword"  # Without a log_var argument: codeword | fixed (VARIANCES).
  log_var_init: Optional[float] = None  # Their start; None: the init batch's fit.


class VectorQuantizer(QuantizerOptions):
  """Nearest-codeword quantization of a given ``z`` (eq. 1), straight-through.

  ``(z, *, train) -> (z_q, aux)`` for ``z`` of shape ``(..., d)`` (``d`` is
  read from ``z``; e.g. a tokenizer's ``(B, H, W, d)`` grid), with aux
  ``loss`` (eq. 27's VQ terms), ``indices``, ``perplexity``, ``usage`` and,
  with an EMA codebook, ``dead_code_fraction``. ``embed(indices)`` maps
  indices back to codewords.

  With ``ema_decay`` the codebook follows exponential moving averages in the
  ``'ema'`` collection (apply with ``mutable=['ema']`` in training, which is
  checked); ``dead_code_threshold > 0`` then restarts codewords whose EMA
  count falls under it at random encodings of the batch (``'noise'`` rng).
  Under ``shard_map``/``pmap`` give ``axis_name``: EMA statistics and usage
  are summed over it. Arithmetic is float32 whatever ``z``'s dtype; outputs
  come in ``dtype`` (default: ``z``'s).
  """
  num_codewords: int

  @nn.compact
  def __call__(self, z: Array, *, train: bool) -> Tuple[Array, Aux]:
    z = z.astype(self.dtype or z.dtype)
    return quantize_hard(self, z, train=train)

  def embed(self, indices: Array) -> Array:
    return embed(self, indices)


class SoftVectorQuantizer(SoftOptions):
  """Soft quantization of a given ``z`` by the Bayesian estimator, eqs. (5)-(7).

  ``(z, log_var=None, *, train) -> (z_hat, aux)``, as ``VectorQuantizer``
  with aux ``probs`` too. ``log_var`` (log sigma_k^2, broadcastable against
  ``(..., K)``) comes from the caller's head, or else is learned per
  codeword (``variance="codeword"``), or else held at its initial fit
  (``"fixed"``). In training, ``noise_std`` white noise is added to ``z`` first
  (the paper's z'_e). With ``ema_decay`` the EMA statistics are weighted by
  the posterior, and eq. (27)'s codebook term still trains the variances.
  """
  num_codewords: int

  @nn.compact
  def __call__(self, z: Array, log_var: Optional[Array] = None, *,
               train: bool) -> Tuple[Array, Aux]:
    z = z.astype(self.dtype or z.dtype)
    return quantize_soft(self, z, log_var, train=train)

  def embed(self, indices: Array) -> Array:
    return embed(self, indices)
