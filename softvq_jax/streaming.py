"""The soft quantizer streamed over the codebook, for large K.

``soft_quantize_chunked`` computes ``bottlenecks.soft_quantize``'s posterior
mean (eqs. (5)-(7)) without its ``(N, K)`` posterior, with a ``custom_vjp``
that streams again for the gradient: for users' models whose N x K
posterior would not fit in memory (``experiments/benchmark.py`` compares the
two).
"""

import functools
from typing import Tuple

import jax
import jax.numpy as jnp

from softvq_jax.bottlenecks import (PRECISION, as_float32, distance_logits, normalizer_weight,
                                    squared_distances)

Array = jax.Array


# Elements of one (rows, chunk) temporary of soft_quantize_chunked: 16 MiB.
_BLOCK_ELEMENTS = 2 ** 22


def soft_quantize_chunked(z: Array, codebook: Array, log_var: Array,
                          normalizer: str = "paper", chunk_size: int = 1024) -> Array:
  """``bottlenecks.soft_quantize``'s posterior mean without its ``(N, K)`` posterior.

  An online (streaming) softmax over chunks of ``chunk_size`` codewords: a
  running maximum, normaliser and weighted sum per latent, as in
  memory-efficient attention; the gradient (a ``jax.custom_vjp``) streams
  over the chunks again from the saved log-normaliser. Latents go through in
  blocks of rows, so temporaries are O(rows x chunk), not O(N x K): at
  N = 65536, K = 16384, d = 256 (where N x K floats alone are 4 GiB) forward
  and gradient need about 0.2 GiB.

  Args:
    z: latents z'_e, shape ``(..., d)``.
    codebook: shape ``(K, d)``.
    log_var: log sigma_k^2 per codeword, shape ``(K,)``.
    normalizer: one of ``bottlenecks.NORMALIZERS``.
    chunk_size: codewords per chunk (a smaller last chunk is padded).

  Returns:
    z_hat in ``z``'s dtype, shape ``(..., d)``: equal to
    ``bottlenecks.soft_quantize(z, codebook, log_var, normalizer)[0]``, values and
    gradients, to float32 rounding.
  """
  if log_var.shape != codebook.shape[:1]:
    raise ValueError(f"log_var must have shape (K,) = {codebook.shape[:1]}, "
                     f"got {log_var.shape}")
  weight = normalizer_weight(normalizer, z.shape[-1])
  flat = as_float32(z).reshape(-1, z.shape[-1])
  z_hat = _streamed(flat, as_float32(codebook), as_float32(log_var), weight,
                    max(1, min(chunk_size, codebook.shape[0])))
  return z_hat.reshape(z.shape).astype(z.dtype)


def _blocks(x: Array, size: int, fill: float = 0.0) -> Array:
  """``x`` padded along axis 0 to a multiple of ``size``, then ``(-1, size, ...)``."""
  pad = [(0, -x.shape[0] % size)] + [(0, 0)] * (x.ndim - 1)
  x = jnp.pad(x, pad, constant_values=fill)
  return x.reshape((-1, size) + x.shape[1:])


def _chunk_logits(z: Array, codebook: Array, log_var: Array, valid: Array,
                  weight: float) -> Tuple[Array, Array]:
  """Logits of eqs. (5)/(7) for rows x a chunk, padding at -inf, and distances."""
  dist = squared_distances(z, codebook)
  return jnp.where(valid, distance_logits(dist, log_var, weight), -jnp.inf), dist


def _codebook_chunks(codebook, log_var, chunk):
  valid = _blocks(jnp.ones(codebook.shape[:1], bool), chunk, fill=False)
  return _blocks(codebook, chunk), _blocks(log_var, chunk), valid


def _rows(n: int, chunk: int) -> int:
  return max(1, min(n, _BLOCK_ELEMENTS // chunk))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _streamed(z, codebook, log_var, weight, chunk):
  return _streamed_fwd(z, codebook, log_var, weight, chunk)[0]


def _streamed_fwd(z, codebook, log_var, weight, chunk):
  chunks = _codebook_chunks(codebook, log_var, chunk)

  def rows(z_rows):
    def step(carry, chunk_args):
      top, norm, acc = carry
      logits, _ = _chunk_logits(z_rows, *chunk_args, weight)
      new_top = jnp.maximum(top, jnp.max(logits, axis=-1))
      scale = jnp.exp(top - new_top)
      e = jnp.exp(logits - new_top[:, None])
      acc = acc * scale[:, None] + jnp.matmul(e, chunk_args[0], precision=PRECISION)
      return (new_top, norm * scale + jnp.sum(e, axis=-1), acc), None
    init = (jnp.full(z_rows.shape[:1], -jnp.inf), jnp.zeros(z_rows.shape[:1]),
            jnp.zeros_like(z_rows))
    (top, norm, acc), _ = jax.lax.scan(step, init, chunks)
    return acc / norm[:, None], top + jnp.log(norm)

  z_hat, lse = jax.lax.map(rows, _blocks(z, _rows(z.shape[0], chunk)))
  z_hat = z_hat.reshape(-1, z.shape[-1])[:z.shape[0]]
  lse = lse.reshape(-1)[:z.shape[0]]
  return z_hat, (z, codebook, log_var, z_hat, lse)


def _streamed_bwd(weight, chunk, residuals, g):
  z, codebook, log_var, z_hat, lse = residuals
  chunks = _codebook_chunks(codebook, log_var, chunk)
  num_rows = _rows(z.shape[0], chunk)

  def rows(grads, row_args):
    z_rows, g_rows, z_hat_rows, lse_rows = row_args
    g_dot_z_hat = jnp.sum(g_rows * z_hat_rows, axis=-1, keepdims=True)

    def step(dz, chunk_args):
      mu, lv, valid = chunk_args
      logits, dist = _chunk_logits(z_rows, mu, lv, valid, weight)
      probs = jnp.exp(logits - lse_rows[:, None])
      # Softmax backward: dL/dlogit = p (g . mu_k - g . z_hat).
      dlogits = probs * (jnp.matmul(g_rows, mu.T, precision=PRECISION) - g_dot_z_hat)
      de = dlogits * jnp.exp(-lv)  # Through -||z - mu||^2 / (2 sigma^2).
      dz = dz - z_rows * jnp.sum(de, axis=-1, keepdims=True) + jnp.matmul(
          de, mu, precision=PRECISION)
      dmu = (jnp.matmul(probs.T, g_rows, precision=PRECISION)
             + jnp.matmul(de.T, z_rows, precision=PRECISION)
             - jnp.sum(de, axis=0)[:, None] * mu)
      dlv = jnp.sum(dlogits * (0.5 * dist * jnp.exp(-lv) - weight), axis=0)
      return dz, (dmu, dlv)

    dz, (dmu, dlv) = jax.lax.scan(step, jnp.zeros_like(z_rows), chunks)
    return (grads[0] + dmu, grads[1] + dlv), dz

  init = (jnp.zeros_like(chunks[0]), jnp.zeros_like(chunks[1]))
  row_args = tuple(_blocks(x, num_rows) for x in (z, g, z_hat, lse))
  (dmu, dlv), dz = jax.lax.scan(rows, init, row_args)
  num_codewords = codebook.shape[0]
  return (dz.reshape(-1, z.shape[-1])[:z.shape[0]],
          dmu.reshape(-1, z.shape[-1])[:num_codewords],
          dlv.reshape(-1)[:num_codewords])


_streamed.defvjp(_streamed_fwd, _streamed_bwd)
