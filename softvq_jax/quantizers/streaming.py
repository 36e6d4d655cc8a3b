"""The quantizers streamed over the codebook, for large K.

Nothing here builds the ``(N, K)`` distance matrix or posterior: latents go
through in blocks of rows and the codebook in chunks of ``chunk_size``
codewords, so temporaries are O(rows x chunk). The quantizer modules'
``chunk_size`` option (``quantizer_core``) runs on these:

* ``nearest_codewords``: eq. (1)'s nearest-codeword search (hard VQ,
  k-means, the variance fit);
* ``soft_quantize_chunked``: eqs. (5)-(7)'s posterior mean, with a
  ``custom_vjp`` that streams again for the gradient, and its most probable
  codewords;
* ``posterior_sums``: the posterior's per-codeword counts and weighted sums
  of the latents (EMA statistics, the average posterior).

``experiments/benchmarks/large_k_benchmark.py`` measures memory and time against the
dense functions of ``bottlenecks``.
"""

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from softvq_jax.quantizers.functional import PRECISION
from softvq_jax.quantizers.functional import as_float32
from softvq_jax.quantizers.functional import distance_logits
from softvq_jax.quantizers.functional import nearest_indices
from softvq_jax.quantizers.functional import normalizer_weight
from softvq_jax.quantizers.functional import squared_distances

Array = jax.Array

# Elements of one (rows, chunk) temporary: 16 MiB of float32.
_BLOCK_ELEMENTS = 2 ** 22


def nearest_codewords(z: Array, codebook: Array, chunk_size: int) -> Tuple[Array, Array]:
  """Eq. (1)'s nearest codewords without the ``(N, K)`` distances.

  Args:
    z: latents, shape ``(..., d)``.
    codebook: shape ``(K, d)``.
    chunk_size: codewords per chunk.

  Returns:
    ``(indices, distances)``: int32 indices of shape ``(...)``, equal to
    ``argmin(bottlenecks.squared_distances(z, codebook), -1)`` (the first on
    ties), and float32 squared distances to them.
  """
  flat = as_float32(jax.lax.stop_gradient(z)).reshape(-1, z.shape[-1])
  codebook = as_float32(jax.lax.stop_gradient(codebook))
  chunk = _chunk(codebook, chunk_size)
  chunks = (_blocks(codebook, chunk), _blocks(jnp.arange(codebook.shape[0]), chunk, fill=-1))

  def rows(z_rows):
    def step(carry, chunk_args):
      best, index = carry
      mu, ids = chunk_args
      dist = jnp.where(ids >= 0, squared_distances(z_rows, mu), jnp.inf)
      local = nearest_indices(dist)
      value = jnp.take_along_axis(dist, local[:, None], axis=-1)[:, 0]
      better = value < best
      return (jnp.where(better, value, best), jnp.where(better, ids[local], index)), None
    init = (jnp.full(z_rows.shape[:1], jnp.inf), jnp.zeros(z_rows.shape[:1], jnp.int32))
    return jax.lax.scan(step, init, chunks)[0]

  best, index = jax.lax.map(rows, _blocks(flat, _rows(flat.shape[0], chunk)))
  n = flat.shape[0]
  return (index.reshape(-1)[:n].reshape(z.shape[:-1]).astype(jnp.int32),
          best.reshape(-1)[:n].reshape(z.shape[:-1]))


def soft_quantize_chunked(z: Array, codebook: Array, log_var: Array,
                          normalizer: str = "paper", chunk_size: int = 1024,
                          with_indices: bool = False):
  """``functional.soft_quantize``'s posterior mean without its ``(N, K)`` posterior.

  An online (streaming) softmax over chunks of codewords: a running maximum,
  normaliser and weighted sum per latent, as in memory-efficient attention;
  the gradient (a ``jax.custom_vjp``) streams over the chunks again from the
  saved log-normaliser. At N = 65536, K = 16384, d = 256 (where N x K floats
  alone are 4 GiB) forward and gradient need about 0.2 GiB.

  Args:
    z: latents z'_e, shape ``(..., d)``.
    codebook: shape ``(K, d)``.
    log_var: log sigma_k^2, per codeword ``(K,)`` or per latent vector
      (broadcastable against ``(..., K)``).
    normalizer: one of ``functional.NORMALIZERS``.
    chunk_size: codewords per chunk (a smaller last chunk is padded).
    with_indices: also return the most probable codewords and the
      log-normalisers (``posterior_sums`` reads them).

  Returns:
    z_hat in ``z``'s dtype, shape ``(..., d)``: equal to
    ``functional.soft_quantize(z, codebook, log_var, normalizer)[0]``, values
    and gradients, to float32 rounding. With ``with_indices``,
    ``(z_hat, indices, lse)``: int32 argmax of the posterior and float32 log
    of eq. (5)'s normaliser, shape ``(...)``, both without gradient.
  """
  weight = normalizer_weight(normalizer, z.shape[-1])
  flat = as_float32(z).reshape(-1, z.shape[-1])
  rows_log_var = _log_var_rows(log_var, z.shape[:-1], codebook.shape[0])
  z_hat, indices, lse = _streamed(flat, as_float32(codebook), rows_log_var, weight,
                                  _chunk(codebook, chunk_size))
  z_hat = z_hat.reshape(z.shape).astype(z.dtype)
  if not with_indices:
    return z_hat
  return (z_hat, jax.lax.stop_gradient(indices).reshape(z.shape[:-1]),
          jax.lax.stop_gradient(lse).reshape(z.shape[:-1]))


def posterior_sums(z: Array, codebook: Array, log_var: Array, lse: Array,
                   normalizer: str = "paper", chunk_size: int = 1024,
                   row_weights: Optional[Array] = None) -> Tuple[Array, Array]:
  """Per-codeword sums of the posterior, streamed: ``(counts, sums)``.

  ``counts[k] = sum_n w_n p(mu_k | z_n)`` ``(K,)`` and ``sums[k] = sum_n w_n
  p(mu_k | z_n) z_n`` ``(K, d)``, float32, without gradient (``w``:
  ``row_weights`` ``(...)``, default 1): the soft EMA statistics and the
  average posterior, from the log-normalisers ``lse`` that
  ``soft_quantize_chunked(..., with_indices=True)`` returns.
  """
  weight = normalizer_weight(normalizer, z.shape[-1])
  flat = as_float32(jax.lax.stop_gradient(z)).reshape(-1, z.shape[-1])
  codebook = as_float32(jax.lax.stop_gradient(codebook))
  log_var = jax.lax.stop_gradient(_log_var_rows(log_var, z.shape[:-1], codebook.shape[0]))
  chunk = _chunk(codebook, chunk_size)
  valid = (jnp.ones(flat.shape[:1]) if row_weights is None
           else as_float32(row_weights).reshape(-1))

  def rows(totals, args, lv_rows):
    z_rows, lse_rows, valid_rows = args

    def step(_, chunk_args):
      logits, _ = _chunk_logits(z_rows, *chunk_args, weight)
      probs = jnp.where(valid_rows[:, None] > 0,
                        jnp.exp(logits - lse_rows[:, None]) * valid_rows[:, None], 0.0)
      return None, (jnp.sum(probs, axis=0), jnp.matmul(probs.T, z_rows, precision=PRECISION))

    _, (counts, sums) = jax.lax.scan(step, None, _codebook_chunks(codebook, lv_rows, chunk))
    return (totals[0] + counts, totals[1] + sums), None

  padded = _blocks(codebook, chunk)
  init = (jnp.zeros(padded.shape[:2]), jnp.zeros_like(padded))
  (counts, sums), _ = _over_rows(rows, init, (flat, lse.reshape(-1), valid), log_var, chunk)
  num_codewords = codebook.shape[0]
  return counts.reshape(-1)[:num_codewords], sums.reshape(-1, flat.shape[1])[:num_codewords]


def _chunk(codebook: Array, chunk_size: int) -> int:
  return max(1, min(chunk_size, codebook.shape[0]))


def _log_var_rows(log_var: Array, lead: Tuple[int, ...], num_codewords: int) -> Array:
  """``log_var`` as float32 ``(1, K)`` (per codeword) or ``(N, K)`` (per latent)."""
  log_var = as_float32(log_var)
  if log_var.ndim <= 1:
    return jnp.broadcast_to(log_var, (num_codewords,))[None]
  return jnp.broadcast_to(log_var, lead + (num_codewords,)).reshape(-1, num_codewords)


def _blocks(x: Array, size: int, fill: float = 0.0) -> Array:
  """``x`` padded along axis 0 to a multiple of ``size``, then ``(-1, size, ...)``."""
  pad = [(0, -x.shape[0] % size)] + [(0, 0)] * (x.ndim - 1)
  x = jnp.pad(x, pad, constant_values=fill)
  return x.reshape((-1, size) + x.shape[1:])


def _rows(n: int, chunk: int) -> int:
  return max(1, min(n, _BLOCK_ELEMENTS // chunk))


def _over_rows(fn, carry, row_arrays, log_var: Array, chunk: int):
  """``lax.scan`` of ``fn(carry, row_block_args, lv_rows)`` over blocks of
  rows of ``row_arrays``; ``lv_rows`` is the block's ``(rows, K)``
  log-variances, or the shared ``(1, K)`` ones."""
  num_rows = _rows(row_arrays[0].shape[0], chunk)
  blocks = tuple(_blocks(x, num_rows) for x in row_arrays)
  if log_var.shape[0] == 1:
    return jax.lax.scan(lambda c, args: fn(c, args, log_var), carry, blocks)
  return jax.lax.scan(lambda c, args: fn(c, args[:-1], args[-1]), carry,
                      blocks + (_blocks(log_var, num_rows),))


def _codebook_chunks(codebook: Array, lv_rows: Array, chunk: int):
  """The scanned chunks: codewords ``(chunk, d)``, their log-variances
  ``(rows or 1, chunk)`` and which are real (not padding) ``(chunk,)``."""
  lv_chunks = jnp.swapaxes(_blocks(lv_rows.T, chunk), 1, 2)
  valid = _blocks(jnp.ones(codebook.shape[:1], bool), chunk, fill=False)
  return _blocks(codebook, chunk), lv_chunks, valid


def _chunk_logits(z: Array, codebook: Array, log_var: Array, valid: Array,
                  weight: float) -> Tuple[Array, Array]:
  """Logits of eqs. (5)/(7) for rows x a chunk, padding at -inf, and distances."""
  dist = squared_distances(z, codebook)
  return jnp.where(valid, distance_logits(dist, log_var, weight), -jnp.inf), dist


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _streamed(z, codebook, log_var, weight, chunk):
  return _streamed_fwd(z, codebook, log_var, weight, chunk)[0]


def _streamed_fwd(z, codebook, log_var, weight, chunk):
  offsets = jnp.arange(0, _blocks(codebook, chunk).shape[0] * chunk, chunk)

  def rows(_, args, lv_rows):
    (z_rows,) = args

    def step(carry, chunk_args):
      top, norm, acc, best, index = carry
      offset, chunk_args = chunk_args[0], chunk_args[1:]
      logits, _ = _chunk_logits(z_rows, *chunk_args, weight)
      chunk_top = jnp.max(logits, axis=-1)
      better = chunk_top > best
      index = jnp.where(better, offset + jnp.argmax(logits, axis=-1), index)
      new_top = jnp.maximum(top, chunk_top)
      scale = jnp.exp(top - new_top)
      e = jnp.exp(logits - new_top[:, None])
      acc = acc * scale[:, None] + jnp.matmul(e, chunk_args[0], precision=PRECISION)
      return (new_top, norm * scale + jnp.sum(e, axis=-1), acc,
              jnp.maximum(best, chunk_top), index), None

    n = z_rows.shape[0]
    init = (jnp.full((n,), -jnp.inf), jnp.zeros((n,)), jnp.zeros_like(z_rows),
            jnp.full((n,), -jnp.inf), jnp.zeros((n,), jnp.int32))
    chunks = (offsets,) + _codebook_chunks(codebook, lv_rows, chunk)
    (top, norm, acc, _, index), _ = jax.lax.scan(step, init, chunks)
    return None, (acc / norm[:, None], index, top + jnp.log(norm))

  _, (z_hat, index, lse) = _over_rows(rows, None, (z,), log_var, chunk)
  n = z.shape[0]
  outputs = (z_hat.reshape(-1, z.shape[-1])[:n], index.reshape(-1)[:n], lse.reshape(-1)[:n])
  return outputs, (z, codebook, log_var, outputs[0], outputs[2])


def _streamed_bwd(weight, chunk, residuals, cotangents):
  z, codebook, log_var, z_hat, lse = residuals
  g = cotangents[0]  # The indices and log-normalisers are outputs without gradient.
  per_codeword = log_var.shape[0] == 1

  def rows(grads, args, lv_rows):
    z_rows, g_rows, z_hat_rows, lse_rows = args
    g_dot_z_hat = jnp.sum(g_rows * z_hat_rows, axis=-1, keepdims=True)

    def step(dz, chunk_args):
      mu, lv, _ = chunk_args
      logits, dist = _chunk_logits(z_rows, *chunk_args, weight)
      probs = jnp.exp(logits - lse_rows[:, None])
      # Softmax backward: dL/dlogit = p (g . mu_k - g . z_hat).
      dlogits = probs * (jnp.matmul(g_rows, mu.T, precision=PRECISION) - g_dot_z_hat)
      de = dlogits * jnp.exp(-lv)  # Through -||z - mu||^2 / (2 sigma^2).
      dz = dz - z_rows * jnp.sum(de, axis=-1, keepdims=True) + jnp.matmul(
          de, mu, precision=PRECISION)
      dmu = (jnp.matmul(probs.T, g_rows, precision=PRECISION)
             + jnp.matmul(de.T, z_rows, precision=PRECISION)
             - jnp.sum(de, axis=0)[:, None] * mu)
      dlv = dlogits * (0.5 * dist * jnp.exp(-lv) - weight)
      return dz, (dmu, jnp.sum(dlv, axis=0) if per_codeword else dlv.T)

    chunks = _codebook_chunks(codebook, lv_rows, chunk)
    dz, (dmu, dlv) = jax.lax.scan(step, jnp.zeros_like(z_rows), chunks)
    if per_codeword:
      return (grads[0] + dmu, grads[1] + dlv), dz
    return (grads[0] + dmu, grads[1]), (dz, dlv.reshape(-1, z_rows.shape[0]).T)

  padded = _blocks(codebook, chunk)
  init = (jnp.zeros_like(padded), jnp.zeros(padded.shape[:2]))
  (dmu, dlv_shared), per_rows = _over_rows(rows, init, (z, g, z_hat, lse), log_var, chunk)
  n, num_codewords = z.shape[0], codebook.shape[0]
  if per_codeword:
    dz, dlv = per_rows, dlv_shared.reshape(1, -1)[:, :num_codewords]
  else:
    dz, dlv = per_rows[0], per_rows[1].reshape(-1, padded.shape[0] * chunk)[:n, :num_codewords]
  return (dz.reshape(-1, z.shape[-1])[:n], dmu.reshape(-1, z.shape[-1])[:num_codewords], dlv)


_streamed.defvjp(_streamed_fwd, _streamed_bwd)
