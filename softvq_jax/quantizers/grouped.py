"""Grouped quantization as a pure function: z's channels split into groups,
each quantized by its own quantizer, typically a residual stack (Yang et
al., "HiFi-Codec: Group-residual Vector quantization for High Fidelity Audio
Codec", 2023; vector-quantize-pytorch's ``GroupedResidualVQ``).

The modules are ``quantizers.GroupedResidualQuantizer`` (linen) and its
namesake in ``softvq_jax.quantizers.nnx``.
"""

from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
Group = Callable[[Array], Tuple[Array, Dict[str, Array]]]


def check_groups(opts, dim: int) -> None:
  """One ``ValueError`` unless there are groups and they divide z's ``dim``."""
  name, count = type(opts).__name__, len(opts.groups)
  if count < 1:
    raise ValueError(f"{name}: groups must hold at least one quantizer")
  if dim % count:
    raise ValueError(f"{name}: {count} groups must divide z's last dimension {dim}")


def split(z: Array, num_groups: int) -> Sequence[Array]:
  """``z`` ``(..., d)`` as ``num_groups`` parts ``(..., d / num_groups)``."""
  return jnp.split(z, num_groups, axis=-1)


def grouped_forward(groups: Sequence[Group], z: Array) -> Tuple[Array, Dict[str, Array]]:
  """Group ``g`` of ``z``'s channels quantized by ``groups[g]``.

  Args:
    groups: callables ``part -> (q, aux)`` (called with the mask, if any),
      aux with ``loss`` and ``indices``.
    z: latents ``(..., d)``, ``d`` a multiple of the number of groups.

  Returns:
    ``(z_q, aux)``: the groups' outputs concatenated; aux ``loss`` (the sum
    of the groups'), ``latent`` (z), and every other entry that all groups
    return stacked: ``indices`` on a last groups axis, ``(...[, num_stages],
    groups)``, per-group statistics on a first one, ``(groups, ...)``.
  """
  outputs, auxes = zip(*(group(part) for group, part in zip(groups, split(z, len(groups)))))
  shapes = {jnp.shape(aux["indices"]) for aux in auxes}
  if len(shapes) > 1:
    raise ValueError(f"GroupedResidualQuantizer: every group must give indices of one shape "
                     f"(e.g. residual stacks of as many stages), got {sorted(shapes)}")
  shared = set.intersection(*(set(aux) for aux in auxes)) - {"loss", "latent", "indices"}
  aux = {"loss": sum(aux["loss"] for aux in auxes), "latent": z,
         "indices": jnp.stack([aux["indices"] for aux in auxes], axis=-1),
         **{name: jnp.stack([aux[name] for aux in auxes]) for name in sorted(shared)}}
  return jnp.concatenate(outputs, axis=-1).astype(z.dtype), aux


def grouped_embed(embeds: Sequence[Callable[[Array], Array]], indices: Array) -> Array:
  """The groups' codewords of ``indices`` ``(..., groups)``, concatenated."""
  if jnp.shape(indices)[-1:] != (len(embeds),):
    raise ValueError(f"GroupedResidualQuantizer: indices need a last axis of "
                     f"{len(embeds)} groups, got shape {jnp.shape(indices)}")
  parts = [embed(indices[..., g]) for g, embed in enumerate(embeds)]
  return jnp.concatenate(parts, axis=-1)
