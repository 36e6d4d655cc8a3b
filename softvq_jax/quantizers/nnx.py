"""The quantizers as Flax NNX modules, over the same pure core as linen's.

::

    from flax import nnx
    from softvq_jax.quantizers import nnx as vq

    quantizer = vq.SoftVectorQuantizer(512, 64, rngs=nnx.Rngs(0), ema_decay=0.99)
    z_q, aux = quantizer(z, train=True)      # z: (..., 64); updates the state in place
    codewords = quantizer.embed(aux["indices"])

``VectorQuantizer(num_codewords, dim, *, rngs, **options)``,
``SoftVectorQuantizer(...)``, ``FSQ(levels, **options)``, ``LFQ(dim,
**options)`` and ``ResidualQuantizer(stages, *, rngs=None, **options)`` take
the options of their linen namesakes in ``softvq_jax.quantizers`` (the same
names and defaults, declared there once) and return the same outputs. The
codebook and a soft quantizer's own ``log_var`` are ``nnx.Param``s; EMA
statistics and the first-batch initialisation are ``QuantizerState``
variables, updated in place in training (under ``nnx.jit`` too). Randomness
(noise, dead-code restarts) draws from ``rngs.noise()`` (its ``default``
stream when there is no ``noise`` one), only where it is used.
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

from flax import nnx
import jax
import jax.numpy as jnp

from softvq_jax.quantizers import checks
from softvq_jax.quantizers import core
from softvq_jax.quantizers import forward as fwd
from softvq_jax.quantizers import linen
from softvq_jax.quantizers import residual as rq
from softvq_jax.quantizers import scalar as sq

Array = jax.Array


# The parameters a VQ module may hold (quantizer_core, quantizer_forward).
PARAMS = ("codebook", "log_var", "project_in", "project_in_bias", "project_out",
          "project_out_bias")


class QuantizerState(nnx.Variable):
  """A quantizer's state: EMA statistics and the first-batch initialisation
  (linen's ``'ema'`` collection)."""


def _defaults(options_class) -> Dict[str, Any]:
  """The keyword options of a linen options class and their defaults."""
  return {f.name: f.default for f in dataclasses.fields(options_class)
          if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING}


def _set_options(module: nnx.Module, linen_class, options: Dict[str, Any]) -> None:
  """Sets ``options`` (a subset of ``linen_class``'s, the rest at their
  defaults) as attributes of ``module``; unknown names are a TypeError."""
  defaults = _defaults(linen_class)
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    raise TypeError(f"{type(module).__name__}: unknown options {unknown}; "
                    f"the options are {sorted(defaults)}")
  for name, value in {**defaults, **options}.items():
    setattr(module, name, value)


class _Quantizer(nnx.Module):
  """Variables and calls shared by both NNX quantizers."""
  _soft = False

  def __init__(self, num_codewords: int, dim: int, *, rngs: nnx.Rngs, **options):
    _set_options(self, linen.SoftOptions if self._soft else linen.QuantizerOptions,
                 options)
    self.num_codewords = num_codewords
    checks.check_options(self, self._soft)
    if not isinstance(dim, int) or dim < 1:
      raise ValueError(f"{type(self).__name__}: dim must be an integer >= 1, got {dim!r}")
    self.dim = dim
    c = self.codebook_dim or dim
    keys = iter(jax.random.split(rngs.params(), 4))
    if self.codebook_dim:
      for name, shape in (("project_in", (dim, c)), ("project_out", (c, dim))):
        setattr(self, name, nnx.Param(nnx.initializers.lecun_normal()(
            next(keys), shape, self.param_dtype)))
        setattr(self, name + "_bias", nnx.Param(jnp.zeros(shape[1:], self.param_dtype)))
    table = core.uniform_unit_scaling(next(keys), (num_codewords, c), self.param_dtype)
    state = core.ema_state(table) if self.ema_decay is not None else {}
    if self.ema_decay is None:
      self.codebook = nnx.Param(table)
    if self._soft and core.learns_log_var(self):
      start = 0.0 if self.log_var_init is None else self.log_var_init
      self.log_var = nnx.Param(jnp.full((num_codewords,), start, self.param_dtype))
    if core.needs_first_batch(self, self._soft):
      state.update({name: make(next(keys))
                    for name, make in core.first_batch_state(self, c, self._soft).items()})
    for name, value in state.items():
      setattr(self, name, QuantizerState(value))
    self.state_names = tuple(state)
    self.rngs = rngs

  def _variables(self) -> Tuple[core.Variables, core.Variables]:
    params = {name: getattr(self, name).get_value() for name in PARAMS
              if isinstance(getattr(self, name, None), nnx.Param)}
    return params, {name: getattr(self, name).get_value() for name in self.state_names}

  def _forward(self, forward, z: Array, *args, train: bool, mask: Optional[Array]):
    z = jnp.asarray(z)
    checks.check_input(self, z, self.dim)
    checks.check_mask(self, z, mask)
    z = z.astype(self.dtype or z.dtype)
    params, state = self._variables()
    out, aux, state = forward(self, params, state, z, *args, train=train, mask=mask,
                              make_rng=lambda: self.rngs.noise())
    if train:
      for name in self.state_names:
        getattr(self, name).set_value(state[name])
    return out, aux

  def embed(self, indices: Array) -> Array:
    """The codewords of integer ``indices`` ``(...)``: ``(..., d)`` in ``dtype``
    (``param_dtype`` when that is None); ``core.checked_indices``."""
    return fwd.embed(self, *self._variables(), indices, self.dtype or self.param_dtype)


class VectorQuantizer(_Quantizer):
  """Nearest-codeword quantization (eq. 1): ``q(z, *, train) -> (z_q, aux)``;
  ``linen.VectorQuantizer`` documents the options and outputs."""

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    return self._forward(fwd.hard_forward, z, train=train, mask=mask)


class SoftVectorQuantizer(_Quantizer):
  """Soft quantization (eqs. 5-7): ``q(z, log_var=None, *, train) -> (z_hat,
  aux)``; ``linen.SoftVectorQuantizer`` documents the options and
  outputs."""
  _soft = True

  def __call__(self, z: Array, log_var: Optional[Array] = None, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    z = jnp.asarray(z)
    checks.check_log_var(self, z, log_var)
    return self._forward(fwd.soft_forward, z, log_var, train=train, mask=mask)


class FSQ(nnx.Module):
  """Finite scalar quantization: ``FSQ(levels, **options)``,
  ``q(z, *, train) -> (codes, aux)``; ``linen.FSQ`` documents it. No
  parameters and no state."""

  def __init__(self, levels, **options):
    _set_options(self, linen.FSQ, options)
    self.levels = sq.check_levels(levels)

  def __call__(self, z: Array, *, train: bool) -> Tuple[Array, core.Aux]:
    del train  # FSQ is the same in training and evaluation.
    return sq.fsq_call(self, jnp.asarray(z))

  def embed(self, indices: Array) -> Array:
    return sq.fsq_embed(self, indices)


class LFQ(nnx.Module):
  """Lookup-free quantization (BSQ with ``spherical``): ``LFQ(dim, **options)``,
  ``q(z, *, train) -> (codes, aux)``; ``linen.LFQ`` documents it. No
  parameters and no state."""

  def __init__(self, dim: int, **options):
    _set_options(self, linen.LFQ, options)
    self.dim = dim
    sq.check_lfq_dim(self)

  def __call__(self, z: Array, *, train: bool) -> Tuple[Array, core.Aux]:
    return sq.lfq_call(self, jnp.asarray(z), train)

  def embed(self, indices: Array) -> Array:
    return sq.lfq_embed(self, indices)


class ResidualQuantizer(nnx.Module):
  """Residual quantization over ``stages`` (NNX quantizers of this module):
  ``ResidualQuantizer(stages, *, rngs=None, quantizer_dropout=0.0)``,
  ``q(z, *, train) -> (z_q, aux)``; ``linen.ResidualQuantizer``
  documents it. ``rngs`` (its ``noise`` stream) draws the quantizer dropout."""

  def __init__(self, stages, *, rngs: Optional[nnx.Rngs] = None, **options):
    _set_options(self, linen.ResidualQuantizer, options)
    self.stages = nnx.List(stages)
    rq.check_stages(self)
    if self.quantizer_dropout > 0 and rngs is None:
      raise ValueError("ResidualQuantizer: quantizer_dropout draws from rngs; pass rngs")
    self.rngs = rngs

  def __call__(self, z: Array, *, train: bool) -> Tuple[Array, core.Aux]:
    rng = self.rngs.noise() if train and self.quantizer_dropout > 0 else None
    active = rq.num_active_stages(rng, len(self.stages), self.quantizer_dropout)
    calls = [lambda r, stage=stage: stage(r, train=train) for stage in self.stages]
    return rq.residual_forward(calls, jnp.asarray(z), active)

  def embed(self, indices: Array) -> Array:
    return rq.residual_embed([stage.embed for stage in self.stages], indices)
