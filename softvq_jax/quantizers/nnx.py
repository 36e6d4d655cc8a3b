"""The quantizers as Flax NNX modules, over the same pure core as linen's.

::

    from flax import nnx
    from softvq_jax.quantizers import nnx as vq

    quantizer = vq.SoftVectorQuantizer(512, 64, rngs=nnx.Rngs(0), ema_decay=0.99)
    z_q, aux = quantizer(z, train=True)      # z: (..., 64); updates the state in place
    codewords = quantizer.embed(aux["indices"])

``VectorQuantizer(num_codewords, dim, *, rngs, **options)``,
``SoftVectorQuantizer(...)``, ``FSQ(levels, **options)``, ``LFQ(dim,
**options)``, ``ResidualQuantizer(stages, *, rngs=None, **options)``,
``ResidualFSQ(levels, num_stages, ...)``, ``ResidualLFQ(dim, num_stages,
...)``, ``SimVQ(num_codewords, dim, *, rngs, **options)`` and
``GroupedResidualQuantizer(groups)`` take
the options of their linen namesakes in ``softvq_jax.quantizers`` (the same
names and defaults, declared once in ``options``) and return the same
outputs. The codebook and a soft quantizer's own ``log_var`` are
``nnx.Param``s; EMA statistics and ``initialized`` are ``QuantizerState``
variables, updated in place in training (under ``nnx.jit`` too). A data
start (``codebook_init``, a variance fit) is ``quantizer.initialize(z)``,
before training; a training call before it is an error. Each training call
draws one key from ``rngs.noise()`` (its ``default`` stream when there is no
``noise`` one).
"""

import dataclasses
import functools
from typing import Any, Dict, Optional, Tuple

from flax import nnx
import jax
import jax.numpy as jnp

from softvq_jax.quantizers import checks
from softvq_jax.quantizers import core
from softvq_jax.quantizers import grouped
from softvq_jax.quantizers import linen
from softvq_jax.quantizers import pure
from softvq_jax.quantizers import residual as rq
from softvq_jax.quantizers import scalar as sq
from softvq_jax.quantizers.options import SoftVQOptions
from softvq_jax.quantizers.options import VQOptions
from softvq_jax.quantizers.options import check_names
from softvq_jax.quantizers.options import option_names

Array = jax.Array


# The parameters a VQ module may hold (core, forward).
PARAMS = ("codebook", "codebook_transform", "log_var", "project_in", "project_in_bias",
          "project_out", "project_out_bias")


class QuantizerState(nnx.Variable):
  """A quantizer's state: EMA statistics and ``initialized`` (linen's
  ``'ema'`` collection)."""


def _set_options(module: nnx.Module, linen_class, options: Dict[str, Any]) -> None:
  """Sets ``options`` (a subset of ``linen_class``'s, the rest at their
  defaults) as attributes of ``module``; unknown names are a TypeError."""
  check_names(type(module).__name__, linen_class, options)
  defaults = {name: default for name, default in option_names(linen_class).items()
              if default is not dataclasses.MISSING}
  for name, value in {**defaults, **options}.items():
    setattr(module, name, value)


class _Quantizer(nnx.Module):
  """Variables and calls shared by both NNX quantizers: ``options`` (a
  frozen ``VQOptions`` / ``SoftVQOptions``), the ``PARAMS`` as
  ``nnx.Param``s and the state as ``QuantizerState``s."""
  options_class = VQOptions

  def __init__(self, num_codewords: int, dim: int, *, rngs: nnx.Rngs, **options):
    check_names(type(self).__name__, self.options_class, options)
    self.options = self.options_class(num_codewords=num_codewords, **options)
    checks.check_options(self.options, type(self).__name__)
    if not isinstance(dim, int) or dim < 1:
      raise ValueError(f"{type(self).__name__}: dim must be an integer >= 1, got {dim!r}")
    self.dim = dim
    params, state = core.init_variables(rngs.params(), self.options, dim)
    for name, value in params.items():
      setattr(self, name, nnx.Param(value))
    for name, value in state.items():
      setattr(self, name, QuantizerState(value))
    self.state_names = tuple(state)
    self.rngs = rngs

  def _variables(self) -> Tuple[core.Variables, core.Variables]:
    params = {name: getattr(self, name).get_value() for name in PARAMS
              if isinstance(getattr(self, name, None), nnx.Param)}
    return params, {name: getattr(self, name).get_value() for name in self.state_names}

  def _forward(self, z: Array, log_var: Optional[Array], *, train: bool,
               mask: Optional[Array]):
    z = jnp.asarray(z)
    checks.check_input(self, z, self.dim)
    z = z.astype(self.options.dtype or z.dtype)
    params, state = self._variables()
    out, aux, state = pure.vq_forward(params, state, z, options=self.options, train=train,
                                      key=self.rngs.noise() if train else None, mask=mask,
                                      log_var=log_var)
    if train:
      self._write({}, state)
    return out, aux

  def _write(self, params: core.Variables, state: core.Variables) -> None:
    for name, value in {**params, **state}.items():
      getattr(self, name).set_value(value)

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Start the codebook (and a soft quantizer's variances) from the batch
    ``z`` ``(..., dim)``, in place (``pure.vq_initialize``; ``rngs.params``)."""
    z = jnp.asarray(z)
    checks.check_input(self, z, self.dim)
    self._write(*pure.vq_initialize(self.rngs.params(), *self._variables(),
                                    z.astype(self.options.dtype or z.dtype),
                                    options=self.options, mask=mask))

  def embed(self, indices: Array, dtype: Optional[Any] = None) -> Array:
    """The codewords of integer ``indices`` ``(...)``: ``(..., dim)`` in ``dtype``
    (default: the ``dtype`` option, else ``param_dtype``); out-of-range
    indices as ``functional.lookup``."""
    return pure.vq_embed(*self._variables(), indices, options=self.options, dtype=dtype)


class VectorQuantizer(_Quantizer):
  """Nearest-codeword quantization (eq. 1): ``q(z, *, train) -> (z_q, aux)``;
  ``linen.VectorQuantizer`` documents the options and outputs."""

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    return self._forward(z, None, train=train, mask=mask)


class SoftVectorQuantizer(_Quantizer):
  """Soft quantization (eqs. 5-7): ``q(z, log_var=None, *, train) -> (z_hat,
  aux)``; ``linen.SoftVectorQuantizer`` documents the options and
  outputs."""
  options_class = SoftVQOptions

  def __call__(self, z: Array, log_var: Optional[Array] = None, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    return self._forward(z, log_var, train=train, mask=mask)


class SimVQ(VectorQuantizer):
  """SimVQ, a frozen random codebook times a learned map:
  ``VectorQuantizer`` with ``codebook_transform=True`` and
  ``rotation_trick=True`` by default; ``linen.SimVQ`` documents it."""

  def __init__(self, num_codewords: int, dim: int, *, rngs: nnx.Rngs, **options):
    super().__init__(num_codewords, dim, rngs=rngs,
                     **{"codebook_transform": True, "rotation_trick": True, **options})


class FSQ(nnx.Module):
  """Finite scalar quantization: ``FSQ(levels, **options)``,
  ``q(z, *, train) -> (codes, aux)``; ``linen.FSQ`` documents it. No
  parameters and no state."""

  def __init__(self, levels, **options):
    _set_options(self, linen.FSQ, options)
    self.levels = sq.check_levels(levels)

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    del train  # FSQ is the same in training and evaluation.
    return sq.fsq_call(self, jnp.asarray(z), mask)

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Nothing to start from data (every quantizer has ``initialize``)."""

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

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    return sq.lfq_call(self, jnp.asarray(z), train, mask)

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Nothing to start from data (every quantizer has ``initialize``)."""

  def embed(self, indices: Array) -> Array:
    return sq.lfq_embed(self, indices)


class _Stages(nnx.Module):
  """What the residual stacks share: the quantizer dropout's rngs."""

  def _keep_rngs(self, rngs: Optional[nnx.Rngs]) -> None:
    if self.quantizer_dropout > 0 and rngs is None:
      raise ValueError(f"{type(self).__name__}: quantizer_dropout draws from rngs; pass rngs")
    self.rngs = rngs

  def _dropout_rng(self, train: bool) -> Optional[Array]:
    return self.rngs.noise() if train and self.quantizer_dropout > 0 else None

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Nothing to start from data (every quantizer has ``initialize``)."""


class ResidualQuantizer(_Stages):
  """Residual quantization over ``stages`` (NNX quantizers of this module):
  ``ResidualQuantizer(stages, *, rngs=None, quantizer_dropout=0.0)``,
  ``q(z, *, train) -> (z_q, aux)``; ``linen.ResidualQuantizer``
  documents it. ``rngs`` (its ``noise`` stream) draws the quantizer dropout."""

  def __init__(self, stages, *, rngs: Optional[nnx.Rngs] = None, **options):
    _set_options(self, linen.ResidualQuantizer, options)
    self.stages = nnx.List(stages)
    rq.check_stages(self)
    self._keep_rngs(rngs)

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    active = rq.num_active_stages(self._dropout_rng(train), len(self.stages),
                                  self.quantizer_dropout)
    calls = [functools.partial(stage, train=train, mask=mask) for stage in self.stages]
    return rq.residual_forward(calls, jnp.asarray(z), active, mask)

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Each stage's ``initialize`` on the residual the earlier stages leave."""
    rq.residual_initialize([functools.partial(stage.initialize, mask=mask)
                            for stage in self.stages],
                           [functools.partial(stage, train=False, mask=mask)
                            for stage in self.stages], jnp.asarray(z))

  def embed(self, indices: Array) -> Array:
    return rq.residual_embed([stage.embed for stage in self.stages], indices)


class ResidualFSQ(_Stages):
  """Residual FSQ with per-stage scales: ``ResidualFSQ(levels, num_stages, *,
  rngs=None, **options)``, ``q(z, *, train, mask=None) -> (z_q, aux)``;
  ``linen.ResidualFSQ`` documents it."""

  def __init__(self, levels, num_stages: int, *, rngs: Optional[nnx.Rngs] = None,
               **options):
    _set_options(self, linen.ResidualFSQ, options)
    self.levels, self.num_stages = sq.check_levels(levels), num_stages
    rq.check_num_stages(self)
    self._keep_rngs(rngs)

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    return rq.residual_fsq_call(self, jnp.asarray(z), self._dropout_rng(train), mask)

  def embed(self, indices: Array) -> Array:
    return rq.residual_fsq_embed(self, indices)


class ResidualLFQ(_Stages):
  """Residual LFQ with codes ``+-2^-s``: ``ResidualLFQ(dim, num_stages, *,
  rngs=None, **options)``, ``q(z, *, train, mask=None) -> (z_q, aux)``;
  ``linen.ResidualLFQ`` documents it."""

  def __init__(self, dim: int, num_stages: int, *, rngs: Optional[nnx.Rngs] = None,
               **options):
    _set_options(self, linen.ResidualLFQ, options)
    self.dim, self.num_stages = dim, num_stages
    sq.check_lfq_dim(self)
    rq.check_num_stages(self)
    self._keep_rngs(rngs)

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    return rq.residual_lfq_call(self, jnp.asarray(z), train, self._dropout_rng(train), mask)

  def embed(self, indices: Array) -> Array:
    return rq.residual_lfq_embed(self, indices)


class GroupedResidualQuantizer(nnx.Module):
  """Grouped quantization: ``GroupedResidualQuantizer(groups)`` (NNX quantizers
  of this module, typically residual stacks), ``q(z, *, train,
  mask=None) -> (z_q, aux)``; ``linen.GroupedResidualQuantizer`` documents it."""

  def __init__(self, groups):
    self.groups = nnx.List(groups)
    check_names(type(self).__name__, linen.GroupedResidualQuantizer, {})

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, core.Aux]:
    z = jnp.asarray(z)
    grouped.check_groups(self, z.shape[-1])
    return grouped.grouped_forward(
        [functools.partial(group, train=train, mask=mask) for group in self.groups], z)

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Each group's ``initialize`` on its part of ``z``."""
    z = jnp.asarray(z)
    grouped.check_groups(self, z.shape[-1])
    for group, part in zip(self.groups, grouped.split(z, len(self.groups))):
      group.initialize(part, mask=mask)

  def embed(self, indices: Array) -> Array:
    return grouped.grouped_embed([group.embed for group in self.groups], indices)
