"""Checks of the quantizers' options, inputs and state: one clear error,
naming the argument, at construction or trace time, never a NaN, a silent
broadcast or silently desynchronised codebooks. ``opts`` is an
``options.VQOptions`` / ``SoftVQOptions``; ``name`` names its module."""

from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.quantizers import functional
from softvq_jax.quantizers.core import CODEBOOK_INITS
from softvq_jax.quantizers.core import VARIANCES
from softvq_jax.quantizers.core import learns_log_var
from softvq_jax.quantizers.options import SoftVQOptions
from softvq_jax.quantizers.options import VQOptions

Array = jax.Array


def check_options(opts: VQOptions, name: str) -> None:
  """One ``ValueError`` naming the argument for options that make no sense
  (at construction; traced scalars are not checked)."""
  soft = isinstance(opts, SoftVQOptions)
  _positive_integer(name, "num_codewords", opts.num_codewords, optional=False)
  _positive_integer(name, "kmeans_iters", opts.kmeans_iters, optional=False)
  _positive_integer(name, "chunk_size", opts.chunk_size)
  _positive_integer(name, "codebook_dim", opts.codebook_dim)
  _positive_integer(name, "heads", opts.heads, optional=False)
  if opts.ema_decay is not None and not 0.0 < opts.ema_decay < 1.0:
    raise ValueError(f"{name}: ema_decay must lie in (0, 1) or be None, got {opts.ema_decay!r}")
  choices = {"codebook_init": CODEBOOK_INITS}
  numbers = ["commitment", "vq_weight", "dead_code_threshold", "orthogonal_weight",
             "sample_temperature", "directional_reparam_variance"]
  if soft:
    choices.update(normalizer=functional.NORMALIZERS, variance=VARIANCES)
    numbers.append("noise_std")
    if opts.log_var_init is not None and not np.isfinite(opts.log_var_init):
      raise ValueError(f"{name}: log_var_init must be finite, got {opts.log_var_init!r}")
  for key, allowed in choices.items():
    if getattr(opts, key) not in allowed:
      raise ValueError(f"{name}: {key} must be one of {allowed}, got {getattr(opts, key)!r}")
  for key in numbers:
    value = getattr(opts, key)
    if isinstance(value, (int, float)) and not (np.isfinite(value) and value >= 0):
      raise ValueError(f"{name}: {key} must be finite and >= 0, got {value!r}")
  _check_combinations(opts, name, soft)


def _check_combinations(opts: VQOptions, name: str, soft: bool) -> None:
  """Options that are each valid but do nothing, or contradict, together."""
  if opts.ema_decay is not None and opts.orthogonal_weight:
    raise ValueError(f"{name}: orthogonal_weight regularises a codebook trained by "
                     "gradient; with ema_decay it would train nothing")
  if opts.dead_code_threshold > 0 and (opts.ema_decay is None or opts.freeze_codebook):
    raise ValueError(f"{name}: dead_code_threshold restarts codewords of an EMA codebook "
                     "that is not frozen; set ema_decay, or unset freeze_codebook")
  if opts.separate_codebook_per_head and opts.heads == 1:
    raise ValueError(f"{name}: separate_codebook_per_head needs heads > 1")
  if opts.codebook_transform and (opts.ema_decay is not None or opts.codebook_init != "uniform"):
    raise ValueError(f"{name}: codebook_transform (SimVQ) learns a map of a frozen random "
                     "codebook by gradient; it takes neither ema_decay nor a data "
                     "codebook_init")
  if opts.directional_reparam and (soft or opts.ema_decay is not None or opts.rotation_trick):
    raise ValueError(f"{name}: directional_reparam is hard VQ's estimator for a codebook "
                     "trained by gradient: not with a soft quantizer (whose output is "
                     "already differentiable), ema_decay or rotation_trick")
  if opts.sample_temperature and (soft or opts.chunk_size):
    raise ValueError(f"{name}: sample_temperature draws hard codes from the dense "
                     "distances; it is for VectorQuantizer without chunk_size (a soft "
                     "quantizer's posterior is already a distribution)")


def _positive_integer(name: str, key: str, value: Any, optional: bool = True) -> None:
  if optional and value is None:
    return
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name}: {key} must be a positive integer"
                     f"{' or None' if optional else ''}, got {value!r}")


def check_input(opts: object, z: Array, dim: Optional[int]) -> None:
  """One error naming ``z`` for an input that is not a float ``(..., dim)``; ``opts``,
  any quantizer module, names it."""
  name = type(opts).__name__
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise TypeError(f"{name}: z must be a floating-point array, got dtype {z.dtype}")
  if z.ndim < 1 or (dim is not None and z.shape[-1] != dim):
    raise ValueError(f"{name}: z's last dimension must be the codeword size {dim}, got "
                     f"shape {z.shape}")


def check_mask(opts: VQOptions, z: Array, mask: Optional[Array]) -> None:
  """One error naming ``mask`` unless it is None or booleans of shape ``z.shape[:-1]``."""
  if mask is None:
    return
  if jnp.shape(mask) != tuple(z.shape[:-1]) or jnp.result_type(mask) != jnp.bool_:
    raise ValueError(f"{type(opts).__name__}: mask must be booleans of shape "
                     f"{tuple(z.shape[:-1])} (z's without its last axis), got "
                     f"{jnp.result_type(mask)}{list(jnp.shape(mask))}")


def check_log_var(opts: SoftVQOptions, z: Array, log_var: Optional[Array]) -> None:
  """One error naming ``log_var``: given exactly when ``variance="sample"``,
  and broadcastable against ``(..., K)``."""
  name = type(opts).__name__
  own = learns_log_var(opts)
  if own and log_var is not None:
    raise ValueError(f"{name}: variance={opts.variance!r} holds its own log_var; give a "
                     "log_var argument with variance='sample'")
  if not own and log_var is None:
    raise ValueError(f"{name}: variance='sample' takes a log_var argument of shape (..., K)")
  if log_var is None:
    return
  target = tuple(z.shape[:-1]) + (opts.num_codewords,)
  try:
    shape = jnp.broadcast_shapes(jnp.shape(log_var), target)
  except ValueError:
    shape = None
  if shape != target:
    raise ValueError(f"{name}: log_var of shape {jnp.shape(log_var)} does not broadcast "
                     f"against (..., K) = {target}")


def check_initialized(opts: VQOptions, state: Dict[str, Array], train: bool) -> None:
  """One error naming ``initialize`` for a training call of a quantizer whose
  start reads data before ``initialize`` set it: a ``ValueError`` where the
  state is concrete, the same message from the device under ``jit``."""
  if not train or "initialized" not in state:
    return
  flag = state["initialized"]
  message = (f"training before initialize: codebook_init={opts.codebook_init!r}"
             f"{' (or a variance fit)' if opts.codebook_init == 'uniform' else ''} starts "
             "from data; call initialize(z) on a batch first (linen: "
             "variables = vq.apply(variables, z, method='initialize', mutable=True, "
             "rngs={'params': key})[1]; NNX: vq.initialize(z); plain JAX: "
             "pure.vq_initialize)")
  try:
    ready = np.asarray(flag)
  except jax.errors.TracerArrayConversionError:
    def fail(ready):
      if not np.all(ready):
        raise ValueError(message)
    jax.lax.cond(jnp.all(flag), lambda: None, lambda: jax.debug.callback(fail, flag))
    return
  if not np.all(ready):
    raise ValueError(message)


def check_axis_name(name: str, axis_name: Optional[str], what: str) -> None:
  """One error naming ``axis_name`` when it is unset inside ``shard_map`` /
  ``pmap`` (manual mesh axes), where ``what`` (cross-batch state or
  statistics) would differ from shard to shard without a word."""
  if axis_name is not None:
    return
  manual = tuple(jax.sharding.get_abstract_mesh().manual_axes)
  if manual:
    raise ValueError(f"{name}: {what} under shard_map/pmap over {manual} without "
                     f"axis_name would differ per shard; set axis_name={manual[0]!r} "
                     "(the batch axis)")
