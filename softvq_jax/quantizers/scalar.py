"""Codebook-free quantizers as pure functions: FSQ and LFQ / BSQ.

Jit-, vmap- and grad-safe, any leading shape ``(..., d)``, float32
arithmetic whatever the input dtype; quantized latents come back in the
input's dtype. The modules are ``quantizers.FSQ`` / ``quantizers.LFQ`` (linen)
and their namesakes in ``softvq_jax.quantizers.nnx``.

* FSQ: Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple"
  (ICLR 2024), Sec. 3: each dimension is bounded to ``L_i`` levels and
  rounded with a straight-through gradient; the implicit codebook is the grid
  of ``prod(L_i)`` points, with no parameters and no auxiliary loss.
* LFQ: Yu et al., "Language Model Beats Diffusion: Tokenizer is Key to
  Visual Generation" (MAGVIT-v2, ICLR 2024), Sec. 3.1: each dimension is
  quantized to its sign (eq. 3), index ``sum_i 2^i 1[z_i > 0]``; the entropy
  penalty (eq. 5) makes each token confident and the batch use the codes
  evenly. BSQ (Zhao et al., "Image and Video Tokenization with Binary
  Spherical Quantization", 2024, eq. 2): inputs and codes on the unit
  sphere, codes ``sign(z) / sqrt(d)``.
"""

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.quantizers import core
from softvq_jax.quantizers import functional
from softvq_jax.quantizers.checks import check_axis_name
from softvq_jax.quantizers.checks import check_input
from softvq_jax.quantizers.checks import check_mask
from softvq_jax.quantizers.functional import checked_indices
from softvq_jax.quantizers.options import FSQOptions
from softvq_jax.quantizers.options import LFQOptions

Array = jax.Array


def check_levels(levels: Sequence[int]) -> Tuple[int, ...]:
  """``levels`` as a tuple, or one ``ValueError`` naming them."""
  levels = tuple(levels)
  if not levels or not all(isinstance(l, (int, np.integer)) and l >= 2 for l in levels):
    raise ValueError(f"FSQ: levels must be a non-empty sequence of integers >= 2, "
                     f"got {levels!r}")
  if np.prod(levels, dtype=np.float64) >= 2 ** 31:
    raise ValueError(f"FSQ: levels {levels!r} give {np.prod(levels, dtype=np.float64):.0f} "
                     "codes, more than int32 indices hold")
  return levels


def fsq(z: Array, levels: Sequence[int], eps: float = 1e-3) -> Tuple[Array, Array]:
  """Finite scalar quantization (Mentzer et al., Sec. 3).

  Bound ``f(z) = tanh(z + shift) * (L - 1)(1 + eps) / 2 - offset`` (shifted
  so that even ``L`` give ``L`` levels), round with a straight-through
  gradient, and scale to ``[-1, 1]``.

  Args:
    z: latents, shape ``(..., len(levels))``.
    levels: ``L_i``, the number of levels of each dimension.

  Returns:
    ``(codes, indices)``: codes in ``z``'s dtype on the grid
    ``(k - L // 2) / (L // 2)``, with the gradient of the bound; int32
    indices in ``[0, prod(L))``, shape ``(...)`` (``fsq_indices``). A
    latent with a non-finite entry gets a NaN code and index -1.
  """
  levels_f = jnp.asarray(levels, jnp.float32)
  half_l = (levels_f - 1) * (1 + eps) / 2
  offset = jnp.where(jnp.asarray(levels) % 2 == 0, 0.5, 0.0)
  shift = jnp.arctanh(offset / half_l)
  bounded = jnp.tanh(functional.as_float32(z) + shift) * half_l - offset
  rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
  half_width = jnp.asarray(levels) // 2
  codes = rounded / half_width
  indices, finite = functional.mark_nonfinite(z, fsq_indices(jax.lax.stop_gradient(codes), levels))
  return jnp.where(finite[..., None], codes, jnp.nan).astype(z.dtype), indices


def fsq_indices(codes: Array, levels: Sequence[int]) -> Array:
  """The index of FSQ grid points ``(..., len(levels))``: mixed radix, the
  first dimension least significant (as vector-quantize-pytorch)."""
  half_width = jnp.asarray(levels) // 2
  digits = jnp.round(functional.as_float32(codes) * half_width + half_width).astype(jnp.int32)
  basis = jnp.asarray(np.cumprod((1,) + tuple(levels[:-1])), jnp.int32)
  return jnp.sum(digits * basis, axis=-1)


def fsq_codes(indices: Array, levels: Sequence[int]) -> Array:
  """The grid points of FSQ ``indices`` ``(...)``: float32 ``(..., len(levels))``."""
  basis = jnp.asarray(np.cumprod((1,) + tuple(levels[:-1])), jnp.int32)
  level_array = jnp.asarray(levels, jnp.int32)
  digits = (indices[..., None] // basis) % level_array
  half_width = level_array // 2
  return (digits - half_width).astype(jnp.float32) / half_width


def lfq(z: Array, spherical: bool = False) -> Tuple[Array, Array, Array]:
  """Lookup-free quantization (MAGVIT-v2 eq. 3), or BSQ with ``spherical``.

  Args:
    z: latents, shape ``(..., d)``, d <= 31.
    spherical: project ``z`` to the unit sphere first; codes ``+-1/sqrt(d)``.

  Returns:
    ``(codes, indices, u)``: the codes in ``z``'s dtype, straight-through
    to ``u``; int32 indices ``sum_i 2^(d-1-i) 1[z_i > 0]`` (the first
    dimension most significant, as vector-quantize-pytorch); ``u``, the
    float32 input of the sign (``z``, or ``z / ||z||``). A latent with a
    non-finite entry gets a NaN code and index -1.
  """
  u = functional.as_float32(z)
  if spherical:
    u = u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-12)
  scale = 1.0 / np.sqrt(z.shape[-1]) if spherical else 1.0
  indices, finite = functional.mark_nonfinite(u, lfq_indices(u))
  codes = jnp.where(finite[..., None], jnp.where(u > 0, scale, -scale), jnp.nan)
  return functional.straight_through(u, codes).astype(z.dtype), indices, u


def lfq_indices(codes: Array) -> Array:
  """The index of LFQ codes ``(..., d)``: their signs as bits, first most significant."""
  d = codes.shape[-1]
  bits = jnp.asarray(2 ** np.arange(d - 1, -1, -1), jnp.int32)
  return jnp.sum(jnp.where(codes > 0, bits, 0), axis=-1).astype(jnp.int32)


def lfq_codes(indices: Array, d: int, spherical: bool = False) -> Array:
  """The codes of LFQ ``indices`` ``(...)``: float32 ``(..., d)``."""
  bits = jnp.asarray(2 ** np.arange(d - 1, -1, -1), jnp.int32)
  scale = 1.0 / np.sqrt(d) if spherical else 1.0
  return jnp.where((indices[..., None] & bits) > 0, scale, -scale).astype(jnp.float32)


def lfq_entropy(u: Array, inv_temperature: float, spherical: bool = False,
                mask: Optional[Array] = None,
                axis_name: Optional[str] = None) -> Tuple[Array, Array]:
  """MAGVIT-v2's entropy terms (eq. 5) of the code distribution
  ``q(c | z) = softmax_c(2 inv_temperature u . c)`` over all ``2^d`` codes.

  The distribution factorises over dimensions (``u . c`` is a sum over
  them), so the per-sample entropy is exact and costs O(N d):
  ``q(c_i = +) = sigmoid(4 s inv_temperature u_i)`` with ``s`` the code
  scale. The batch entropy H(E[q]) is that of the batch-average product
  distribution, computed over all ``2^d`` codes in chunks of rows
  (O(N 2^d) time, O(2^d) memory beyond a row block).

  Args:
    u: the sign's input (``lfq``'s third output), shape ``(..., d)``.
    inv_temperature: of the softmax (vector-quantize-pytorch: 100).
    spherical: BSQ's code scale ``1/sqrt(d)``.
    mask: optional ``(...)`` booleans; False rows are left out.
    axis_name: where bound, both terms average over every shard's rows.

  Returns:
    ``(per_sample_entropy, batch_entropy)``, float32 scalars in nats.
  """
  axis = core.bound_axis(axis_name)
  psum = (lambda x: x) if axis is None else (lambda x: jax.lax.psum(x, axis))
  d = u.shape[-1]
  scale = 1.0 / np.sqrt(d) if spherical else 1.0
  logits = 4.0 * scale * inv_temperature * functional.as_float32(u).reshape(-1, d)
  weights = (jnp.ones(logits.shape[:1]) if mask is None
             else functional.as_float32(mask).reshape(-1))
  total = jnp.maximum(psum(jnp.sum(weights)), 1.0)
  log_p, log_q = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  per_bit = -(jnp.exp(log_p) * log_p + jnp.exp(log_q) * log_q)
  per_sample = psum(jnp.sum(jnp.sum(per_bit, axis=-1) * weights)) / total
  codes = lfq_codes(jnp.arange(2 ** d), d) > 0  # (2^d, d) signs of every code.

  def block(average, rows):
    lp, lq, w = rows
    log_probs = jnp.where(codes[None], lp[:, None], lq[:, None]).sum(-1)  # (rows, 2^d)
    return average + jnp.sum(jnp.exp(log_probs) * w[:, None], axis=0), None

  size = max(1, min(logits.shape[0], 2 ** 22 // (2 ** d * d)))
  pad = -logits.shape[0] % size
  rows = tuple(jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(
      (-1, size) + x.shape[1:]) for x in (log_p, log_q, weights))
  average, _ = jax.lax.scan(block, jnp.zeros((2 ** d,)), rows)
  average = psum(average) / total
  batch = -jnp.sum(average * jnp.log(jnp.maximum(average, 1e-30)))
  return per_sample, batch


def fsq_forward(z: Array, levels: Sequence[int], axis_name: Optional[str] = None,
                mask: Optional[Array] = None):
  """``fsq`` with the modules' aux: ``loss`` (zero), ``latent``, ``indices``,
  ``perplexity``, ``usage`` (of the rows where ``mask`` is True)."""
  codes, indices = fsq(z, levels)
  aux = {"loss": jnp.zeros((), jnp.float32), "latent": z, "indices": indices,
         **_statistics(indices, int(np.prod(levels)), axis_name, mask)}
  return codes, aux


def _statistics(indices: Array, num_codes: int, axis_name: Optional[str],
                mask: Optional[Array]):
  """``core.index_statistics`` of the rows of ``mask`` with a code (index
  -1, a non-finite latent, counts in nothing)."""
  weights = functional.finite_weights(indices >= 0, functional.as_weights(mask))
  return core.index_statistics(indices, num_codes, axis_name, weights)


def lfq_forward(z: Array, *, spherical: bool, entropy_weight: float, diversity_gamma: float,
                inv_temperature: float, commitment: float, train: bool,
                axis_name: Optional[str] = None, mask: Optional[Array] = None):
  """``lfq`` with MAGVIT-v2's loss, ``entropy_weight * (per-sample entropy -
  diversity_gamma * batch entropy) + commitment * ||u - sg(code)||^2`` (the
  entropy terms in training only, as vector-quantize-pytorch), and aux
  ``per_sample_entropy``, ``batch_entropy``, ``commitment_loss``,
  ``indices``, ``perplexity``, ``usage``. Under a bound ``axis_name`` the
  entropies are those of every shard's tokens; rows where ``mask`` is False
  count in nothing."""
  codes, indices, u = lfq(z, spherical)
  commit = functional.commitment_loss(u, codes, commitment, functional.as_weights(mask))
  aux = {"latent": z, "indices": indices, "commitment_loss": commit,
         **_statistics(indices, 2 ** z.shape[-1], axis_name, mask)}
  loss = commit
  if train:
    per_sample, batch = lfq_entropy(u, inv_temperature, spherical, mask, axis_name)
    aux.update(per_sample_entropy=per_sample, batch_entropy=batch)
    loss = loss + entropy_weight * (per_sample - diversity_gamma * batch)
  aux["loss"] = loss
  return codes, aux


def check_lfq_dim(opts: LFQOptions) -> None:
  """One ``ValueError`` naming ``dim`` unless 1 <= dim <= 24 (2^dim codes)."""
  if not isinstance(opts.dim, (int, np.integer)) or not 1 <= opts.dim <= 24:
    raise ValueError(f"{type(opts).__name__}: dim must be an integer in [1, 24] "
                     f"(2^dim codes), got {opts.dim!r}")


def fsq_call(opts: FSQOptions, z: Array, mask: Optional[Array] = None) -> Tuple[Array, dict]:
  """An FSQ module's call: checks, ``opts.dtype``, ``fsq_forward``."""
  check_input(opts, z, len(opts.levels))
  check_mask(opts, z, mask)
  return fsq_forward(z.astype(opts.dtype or z.dtype), opts.levels, opts.axis_name, mask)


def fsq_embed(opts: FSQOptions, indices: Array) -> Array:
  """An FSQ module's ``embed``: the grid points of ``indices``."""
  indices = checked_indices(indices, int(np.prod(opts.levels)))
  return fsq_codes(indices, opts.levels).astype(opts.dtype or jnp.float32)


def lfq_call(opts: LFQOptions, z: Array, train: bool,
             mask: Optional[Array] = None) -> Tuple[Array, dict]:
  """An LFQ module's call: checks, ``opts.dtype``, ``lfq_forward``."""
  check_input(opts, z, opts.dim)
  check_mask(opts, z, mask)
  if train and opts.entropy_weight:
    check_axis_name(type(opts).__name__, opts.axis_name, "the batch entropy")
  return lfq_forward(z.astype(opts.dtype or z.dtype), spherical=opts.spherical,
                     entropy_weight=opts.entropy_weight, diversity_gamma=opts.diversity_gamma,
                     inv_temperature=opts.inv_temperature, commitment=opts.commitment,
                     train=train, axis_name=opts.axis_name, mask=mask)


def lfq_embed(opts: LFQOptions, indices: Array) -> Array:
  """An LFQ module's ``embed``: the codes of ``indices``."""
  indices = checked_indices(indices, 2 ** opts.dim)
  return lfq_codes(indices, opts.dim, opts.spherical).astype(opts.dtype or jnp.float32)
