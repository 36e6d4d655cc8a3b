"""Residual quantization over a stack of any quantizers, as a pure function.

Juang & Gray, "Multiple stage vector quantization for speech coding"
(ICASSP 1982); in tokenizers, Zeghidour et al., "SoundStream" (2021),
Algorithm 1, with its quantizer dropout (Sec. 3.3): stage ``s`` quantizes
the residual ``r_s = z - sum_{t<s} sg(q_t)`` and the output is
``sum_s q_s``, each ``q_s`` with its own stage's gradient estimator (as
vector-quantize-pytorch's ``ResidualVQ``). Any quantizer of this package can
be a stage, the soft one included: a soft residual quantizer refines the
posterior mean of each stage's residual.

The modules are ``quantizers.ResidualQuantizer`` (linen) and
``softvq_jax.quantizers.nnx.ResidualQuantizer``.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from softvq_jax.quantizers.options import ResidualOptions

Array = jax.Array
Stage = Callable[[Array], Tuple[Array, Dict[str, Array]]]
STAGE_STATISTICS = ("perplexity", "usage")


def check_stages(opts: ResidualOptions) -> None:
  """One ``ValueError`` naming the bad argument of a residual quantizer."""
  name = type(opts).__name__
  if len(opts.stages) < 1:
    raise ValueError(f"{name}: stages must hold at least one quantizer")
  if not 0.0 <= opts.quantizer_dropout <= 1.0:
    raise ValueError(f"{name}: quantizer_dropout must lie in [0, 1], "
                     f"got {opts.quantizer_dropout!r}")


def num_active_stages(rng: Optional[Array], num_stages: int, dropout: float) -> Array:
  """Quantizer dropout: with probability ``dropout``, a number of stages
  drawn uniformly from 1 to ``num_stages``; else all of them."""
  if rng is None or dropout == 0:
    return jnp.asarray(num_stages, jnp.int32)
  drop_rng, count_rng = jax.random.split(rng)
  drawn = jax.random.randint(count_rng, (), 1, num_stages + 1)
  return jnp.where(jax.random.uniform(drop_rng) < dropout, drawn, num_stages)


def residual_forward(stages: Sequence[Stage], z: Array,
                     active: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
  """Residual quantization of ``z`` ``(..., d)`` by ``stages``.

  Args:
    stages: callables ``r -> (q, aux)``, aux with ``loss`` and ``indices``
      (and ``perplexity``, ``usage`` where the stage has them).
    z: latents.
    active: how many stages are used (quantizer dropout); None: all. The
      later ones still run (shapes are static) but add nothing: zero output,
      zero loss, index -1.

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
    norms.append(jnp.mean(jnp.linalg.norm(residual.astype(jnp.float32), axis=-1)))
  aux = {"loss": loss, "latent": z, "indices": jnp.stack(indices, axis=-1),
         "residual_norms": jnp.stack(norms), "active_stages": active,
         **{name: jnp.stack(values) for name, values in statistics.items()}}
  return out.astype(z.dtype), aux


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
