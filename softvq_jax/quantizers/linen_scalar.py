"""The codebook-free quantizers for Flax linen: FSQ, LFQ / BSQ, and their
residual stacks with per-stage scales (``scalar``, ``residual``).

None has parameters or state; each takes ``(z, *, train, mask=None) ->
(codes, aux)`` and ``embed(indices)``, as the VQ modules of ``linen`` do,
and has an ``initialize`` that does nothing (so that any stack of
quantizers can be started from data alike). The options are declared once
in ``options`` (``FSQOptions``, ``LFQOptions``, ``StageOptions``).
"""

from typing import Optional, Sequence, Tuple

import jax

from softvq_jax.quantizers import core
from softvq_jax.quantizers import residual as rq
from softvq_jax.quantizers import scalar as sq
from softvq_jax.quantizers.linen_base import OptionsModule
from softvq_jax.quantizers.linen_base import dropout_rng
from softvq_jax.quantizers.linen_base import options_base
from softvq_jax.quantizers.options import FSQOptions
from softvq_jax.quantizers.options import LFQOptions
from softvq_jax.quantizers.options import StageOptions

Array = jax.Array
Aux = core.Aux


class _CodebookFree(OptionsModule):
  """``initialize``, which has nothing to start from data."""

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Nothing to start from data (every quantizer has ``initialize``)."""


_FSQBase = options_base("_FSQBase", _CodebookFree, [FSQOptions], ["levels"])
_LFQBase = options_base("_LFQBase", _CodebookFree, [LFQOptions], ["dim"])
_ResidualFSQBase = options_base("_ResidualFSQBase", _CodebookFree, [FSQOptions, StageOptions],
                                ["levels", "num_stages"])
_ResidualLFQBase = options_base("_ResidualLFQBase", _CodebookFree, [LFQOptions, StageOptions],
                                ["dim", "num_stages"])


class FSQ(_FSQBase):
  """Finite scalar quantization (Mentzer et al. 2024; ``scalar.fsq``).

  ``(z, *, train) -> (codes, aux)`` for ``z`` of shape ``(..., len(levels))``:
  each dimension bounded to its ``levels`` and rounded, straight-through;
  no parameters, no state, no auxiliary loss (``aux["loss"]`` is 0). aux
  ``indices`` (``[0, prod(levels))``), ``perplexity``, ``usage`` (over
  ``axis_name`` where bound). ``embed(indices)`` gives the grid points.
  """
  levels: Sequence[int]

  def __post_init__(self):
    sq.check_levels(self.levels)
    super().__post_init__()

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, Aux]:
    del train  # FSQ is the same in training and evaluation.
    return sq.fsq_call(self, z, mask)

  def embed(self, indices: Array) -> Array:
    return sq.fsq_embed(self, indices)


class LFQ(_LFQBase):
  """Lookup-free quantization (MAGVIT-v2), or BSQ with ``spherical``
  (``scalar.lfq``).

  ``(z, *, train) -> (codes, aux)`` for ``z`` of shape ``(..., dim)``: the
  sign of each dimension, straight-through, ``2^dim`` codes. ``aux["loss"]``
  is ``entropy_weight * (per-sample entropy - diversity_gamma * batch
  entropy)`` (in training; over all shards under ``axis_name``) plus
  ``commitment * ||z - sg(code)||^2``; aux ``per_sample_entropy``,
  ``batch_entropy``, ``commitment_loss``, ``indices``, ``perplexity``,
  ``usage``. ``embed(indices)`` gives the codes.
  """
  dim: int

  def __post_init__(self):
    sq.check_lfq_dim(self)
    super().__post_init__()

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, Aux]:
    return sq.lfq_call(self, z, train, mask)

  def embed(self, indices: Array) -> Array:
    return sq.lfq_embed(self, indices)


class ResidualFSQ(_ResidualFSQBase):
  """Residual FSQ (``residual``): ``num_stages`` FSQ stages of ``levels``,
  stage ``s`` quantizing the residual scaled up by ``(L - 1)^s`` per
  dimension (vector-quantize-pytorch's ``ResidualFSQ``).

  ``(z, *, train, mask=None) -> (z_q, aux)`` as ``ResidualQuantizer``:
  indices ``(..., num_stages)``, per-stage ``perplexity``, ``usage`` and
  ``residual_norms``; ``quantizer_dropout`` as there (``'noise'`` rng).
  """
  levels: Sequence[int]
  num_stages: int

  def __post_init__(self):
    sq.check_levels(self.levels)
    rq.check_num_stages(self)
    super().__post_init__()

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, Aux]:
    return rq.residual_fsq_call(self, z, dropout_rng(self, train), mask)

  def embed(self, indices: Array) -> Array:
    return rq.residual_fsq_embed(self, indices)


class ResidualLFQ(_ResidualLFQBase):
  """Residual LFQ (``residual``): ``num_stages`` LFQ stages of ``dim`` bits,
  stage ``s``'s codes ``+-2^-s`` (vector-quantize-pytorch's
  ``ResidualLFQ``); each stage's entropy and commitment terms, computed on
  its residual scaled up by ``2^s``, are summed into ``aux["loss"]``.
  Otherwise as ``ResidualFSQ``.
  """
  dim: int
  num_stages: int

  def __post_init__(self):
    sq.check_lfq_dim(self)
    rq.check_num_stages(self)
    super().__post_init__()

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, Aux]:
    return rq.residual_lfq_call(self, z, train, dropout_rng(self, train), mask)

  def embed(self, indices: Array) -> Array:
    return rq.residual_lfq_embed(self, indices)
