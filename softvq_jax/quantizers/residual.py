"""Residual quantization over a stack of any quantizers, as a pure function.

Juang & Gray, "Multiple stage vector quantization for speech coding"
(ICASSP 1982); in tokenizers, Zeghidour et al., "SoundStream" (2021),
Algorithm 1, with its quantizer dropout (Sec. 3.3): stage ``s`` quantizes
the residual ``r_s = z - sum_{t<s} sg(q_t)`` and the output is
``sum_s q_s``, each ``q_s`` with its own stage's gradient estimator (as
vector-quantize-pytorch's ``ResidualVQ``). Any quantizer of this package can
be a stage, the soft one included: a soft residual quantizer refines the
posterior mean of each stage's residual.

Residual FSQ and LFQ scale the stages down: stage ``s`` quantizes
``r_s / c_s`` and contributes ``c_s q_s``, with ``c_s = (L - 1)^-s`` per
dimension for FSQ (Mentzer et al.'s grid refined ``L - 1`` times per stage,
as vector-quantize-pytorch's ``ResidualFSQ``) and ``c_s = 2^-s`` for LFQ
(its ``ResidualLFQ``); without scales a second FSQ stage rounds the small
residual to the grid's centre and refines nothing.

The modules are ``quantizers.ResidualQuantizer``, ``ResidualFSQ`` and
``ResidualLFQ`` (linen) and their namesakes in ``softvq_jax.quantizers.nnx``.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.quantizers import scalar as sq
from softvq_jax.quantizers.checks import check_input
from softvq_jax.quantizers.checks import check_mask
from softvq_jax.quantizers.options import LFQOptions
from softvq_jax.quantizers.options import ResidualOptions

Array = jax.Array
Stage = Callable[[Array], Tuple[Array, Dict[str, Array]]]
STAGE_STATISTICS = ("perplexity", "usage")


def check_stages(opts: ResidualOptions) -> None:
  """One ``ValueError`` naming the bad argument of a residual quantizer."""
  name = type(opts).__name__
  if len(opts.stages) < 1:
    raise ValueError(f"{name}: stages must hold at least one quantizer")
  check_dropout(opts)


def check_dropout(opts) -> None:
  """One ``ValueError`` naming ``quantizer_dropout`` unless it lies in [0, 1]."""
  if not 0.0 <= opts.quantizer_dropout <= 1.0:
    raise ValueError(f"{type(opts).__name__}: quantizer_dropout must lie in [0, 1], "
                     f"got {opts.quantizer_dropout!r}")


def num_active_stages(rng: Optional[Array], num_stages: int, dropout: float) -> Array:
  """Quantizer dropout: with probability ``dropout``, a number of stages
  drawn uniformly from 1 to ``num_stages``; else all of them."""
  if rng is None or dropout == 0:
    return jnp.asarray(num_stages, jnp.int32)
  drop_rng, count_rng = jax.random.split(rng)
  drawn = jax.random.randint(count_rng, (), 1, num_stages + 1)
  return jnp.where(jax.random.uniform(drop_rng) < dropout, drawn, num_stages)


def residual_forward(stages: Sequence[Stage], z: Array, active: Optional[Array] = None,
                     mask: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
  """Residual quantization of ``z`` ``(..., d)`` by ``stages``.

  Args:
    stages: callables ``r -> (q, aux)``, aux with ``loss`` and ``indices``
      (and ``perplexity``, ``usage`` where the stage has them).
    z: latents.
    active: how many stages are used (quantizer dropout); None: all. The
      later ones still run (shapes are static) but add nothing: zero output,
      zero loss, index -1.
    mask: optional ``(...)`` booleans, False at padding, which the stages
      (called with it) and ``residual_norms`` leave out.

  Returns:
    ``(z_q, aux)``: the sum of the stages' outputs in ``z``'s dtype; aux
    ``loss`` (the sum of the active stages'), ``latent`` (z), ``indices``
    ``(..., num_stages)``, ``perplexity`` and ``usage`` per stage
    ``(num_stages,)``, ``residual_norms``: the mean norm of the residual
    after each stage ``(num_stages,)``, and ``active_stages``.
  """
  num_stages = len(stages)
  active = jnp.asarray(num_stages if active is None else active, jnp.int32)
  residual = z
  out = jnp.zeros_like(z)
  loss = jnp.zeros((), jnp.float32)
  indices, statistics, norms = [], {name: [] for name in STAGE_STATISTICS}, []
  for s, stage in enumerate(stages):
    q, aux = stage(residual)
    used = s < active
    out = out + jnp.where(used, q, jnp.zeros_like(q))
    loss = loss + jnp.where(used, aux["loss"], 0.0)
    indices.append(jnp.where(used, aux["indices"], -1))
    for name in STAGE_STATISTICS:
      statistics[name].append(aux.get(name, jnp.nan))
    residual = residual - jax.lax.stop_gradient(jnp.where(used, q, jnp.zeros_like(q)))
    norms.append(_mean(jnp.linalg.norm(residual.astype(jnp.float32), axis=-1), mask))
  aux = {"loss": loss, "latent": z, "indices": jnp.stack(indices, axis=-1),
         "residual_norms": jnp.stack(norms), "active_stages": active,
         **{name: jnp.stack(values) for name, values in statistics.items()}}
  return out.astype(z.dtype), aux


def _mean(x: Array, mask: Optional[Array]) -> Array:
  if mask is None:
    return jnp.mean(x)
  w = mask.astype(jnp.float32)
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def residual_initialize(initializers: Sequence[Callable[[Array], None]],
                        stages: Sequence[Stage], z: Array) -> None:
  """Start each stage from data in turn: stage ``s``'s ``initialize`` on
  the residual that stages ``0..s-1``, already started, leave of ``z``."""
  residual = z
  for initialize, stage in zip(initializers, stages):
    initialize(residual)
    residual = residual - jax.lax.stop_gradient(stage(residual)[0])


def residual_embed(embeds: Sequence[Callable[[Array], Array]], indices: Array) -> Array:
  """The sum of the stages' codewords of ``indices`` ``(..., num_stages)``;
  a stage with index -1 (dropped) adds nothing."""
  if indices.shape[-1] != len(embeds):
    raise ValueError(f"ResidualQuantizer: indices need a last axis of {len(embeds)} "
                     f"stages, got shape {indices.shape}")
  total = 0.0
  for s, embed in enumerate(embeds):
    index = indices[..., s]
    codeword = embed(jnp.maximum(index, 0))
    total = total + jnp.where((index >= 0)[..., None], codeword, jnp.zeros_like(codeword))
  return total


def fsq_scales(levels: Sequence[int], num_stages: int) -> np.ndarray:
  """Residual FSQ's per-stage, per-dimension scales ``(L - 1)^-s``: ``(num_stages, d)``."""
  return (np.asarray(levels, np.float64) - 1.0) ** -np.arange(num_stages)[:, None]


def lfq_scales(num_stages: int) -> np.ndarray:
  """Residual LFQ's per-stage scales ``2^-s``: ``(num_stages, 1)``."""
  return 2.0 ** -np.arange(num_stages)[:, None]


def scaled(stage: Stage, scale: np.ndarray) -> Stage:
  """``stage`` on ``r / scale``, its output times ``scale`` (aux as the stage's)."""
  def call(r: Array) -> Tuple[Array, Dict[str, Array]]:
    q, aux = stage(r / jnp.asarray(scale, r.dtype))
    return q * jnp.asarray(scale, q.dtype), aux
  return call


def check_num_stages(opts) -> None:
  """One ``ValueError`` naming ``num_stages`` and ``quantizer_dropout``."""
  name = type(opts).__name__
  if not isinstance(opts.num_stages, (int, np.integer)) or opts.num_stages < 1:
    raise ValueError(f"{name}: num_stages must be a positive integer, got {opts.num_stages!r}")
  check_dropout(opts)


def residual_fsq_call(opts, z: Array, rng: Optional[Array],
                      mask: Optional[Array]) -> Tuple[Array, Dict[str, Array]]:
  """A ``ResidualFSQ`` module's call: scaled FSQ stages over ``residual_forward``."""
  check_input(opts, z, len(opts.levels))
  check_mask(opts, z, mask)
  z = z.astype(opts.dtype or z.dtype)
  stage = lambda r: sq.fsq_forward(r, opts.levels, opts.axis_name, mask)
  calls = [scaled(stage, scale) for scale in fsq_scales(opts.levels, opts.num_stages)]
  active = num_active_stages(rng, opts.num_stages, opts.quantizer_dropout)
  return residual_forward(calls, z, active, mask)


def residual_fsq_embed(opts, indices: Array) -> Array:
  """A ``ResidualFSQ`` module's ``embed``: the scaled stages' grid points, summed."""
  embeds = [lambda i, c=scale: sq.fsq_embed(opts, i) * c
            for scale in fsq_scales(opts.levels, opts.num_stages)]
  return residual_embed(embeds, indices).astype(opts.dtype or jnp.float32)


def residual_lfq_call(opts: LFQOptions, z: Array, train: bool, rng: Optional[Array],
                      mask: Optional[Array]) -> Tuple[Array, Dict[str, Array]]:
  """A ``ResidualLFQ`` module's call: LFQ stages of codes ``+-2^-s``."""
  z = z.astype(opts.dtype or z.dtype)
  stage = lambda r: sq.lfq_call(opts, r, train, mask)
  calls = [scaled(stage, scale) for scale in lfq_scales(opts.num_stages)]
  active = num_active_stages(rng, opts.num_stages, opts.quantizer_dropout)
  return residual_forward(calls, z, active, mask)


def residual_lfq_embed(opts: LFQOptions, indices: Array) -> Array:
  """A ``ResidualLFQ`` module's ``embed``: the stages' codes times ``2^-s``, summed."""
  embeds = [lambda i, c=scale: sq.lfq_embed(opts, i) * c for scale in lfq_scales(opts.num_stages)]
  return residual_embed(embeds, indices).astype(opts.dtype or jnp.float32)
