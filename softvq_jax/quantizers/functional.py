"""Vector quantization of Wu & Flierl (AAAI 2020) as pure JAX functions.

Every function here is jit-, vmap- and grad-safe and takes latents of any
leading shape ``(..., d)``; a codebook has shape ``(K, d)``. Equation numbers
refer to "Vector Quantization-Based Regularization for Autoencoders".

Mixed precision: distances, logits, softmaxes, losses and codebook
statistics are computed in float32 whatever the input dtype (bfloat16
latents at scale 1e2 would overflow or lose every digit of a distance);
latent-shaped outputs (quantized latents, posteriors, looked-up codewords)
come back in the input's dtype, scalar losses and statistics in float32.

The Flax modules that wrap these functions are ``softvq_jax.quantizers``
(linen and ``nnx``, for any model) and the paper's bottlenecks in
``softvq_jax.model.bottlenecks``; the VAE and information-dropout maths live
beside the latter (``softvq_jax.model.variational``).

Reductions: every loss term here is a squared norm or a KL *per latent
vector* (summed over ``d``) averaged over all leading axes, so that it adds to
a reconstruction term that is summed over pixels and averaged over examples.
"""

from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Distances feed exponentials: float32 operands (``as_float32``) at full float32
# precision on every backend (HIGHEST alone does not upcast bfloat16).
PRECISION = jax.lax.Precision.HIGHEST


def as_float32(x: Array) -> Array:
  """``x`` as a float32 array (the arithmetic dtype of every function here)."""
  return jnp.asarray(x).astype(jnp.float32)

# Variants of the Gaussian normaliser in the soft assignment: the paper's
# eq. (5) has sigma_k^(-d); the authors' MNIST notebook multiplies by sigma_k^(+1).
NORMALIZERS = ("paper", "notebook")


def squared_distances(z: Array, codebook: Array) -> Array:
  """||z - mu_k||^2 for every codeword from one matmul.

  Args:
    z: latents, shape ``(..., d)``.
    codebook: codewords mu_k, shape ``(K, d)``.

  Returns:
    Non-negative float32 squared distances, shape ``(..., K)``. Memory is
    O(N K); no ``(..., K, d)`` intermediate is built.
  """
  z, codebook = as_float32(z), as_float32(codebook)
  cross = jnp.matmul(z, codebook.T, precision=PRECISION)
  z_sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
  c_sq = jnp.sum(jnp.square(codebook), axis=-1)
  return jnp.maximum(z_sq - 2.0 * cross + c_sq, 0.0)


def nearest_indices(distances: Array) -> Array:
  """``argmin(distances, -1)`` as int32: the first index on ties and the
  first NaN in a row that has one, exactly, for distances without -0.0
  (``squared_distances`` clips at +0.0; TopK ranks -0.0 below +0.0).

  On CPU it is ``top_k`` of the negated distances (NaN as +inf), which
  XLA:CPU runs faster than argmin's (value, index) reduction: with the
  distances, 7.7 against 13.3 ms at (N, K, d) = (3136, 1024, 64) on one
  thread (experiments/benchmarks/nearest_search.py). Other backends run
  argmin.
  """
  def by_top_k(d):
    return jax.lax.top_k(jnp.where(jnp.isnan(d), jnp.inf, -d), 1)[1][..., 0]
  return jax.lax.platform_dependent(
      distances, cpu=by_top_k,
      default=lambda d: jnp.argmin(d, axis=-1)).astype(jnp.int32)


def hard_quantize(z: Array, codebook: Array) -> Tuple[Array, Array]:
  """Nearest-codeword quantization, eq. (1).

  Args:
    z: latents z_e, shape ``(..., d)``.
    codebook: shape ``(K, d)``.

  Returns:
    ``(z_q, indices)``: the nearest codewords in ``z``'s dtype, shape
    ``(..., d)``, and their int32 indices, shape ``(...)``. No gradient flows
    to ``z`` (see ``straight_through``); the codebook receives gradient
    through the gather. A latent with a NaN or infinite entry gets index -1
    and a NaN output, never a valid token.
  """
  indices, finite = mark_nonfinite(z, nearest_indices(squared_distances(z, codebook)))
  return codewords_of(codebook, indices, finite, z.dtype), indices


def finite_rows(z: Array) -> Array:
  """Booleans ``(...)``: whether each latent of ``z`` ``(..., d)`` is finite."""
  return jnp.all(jnp.isfinite(z), axis=-1)


def mark_nonfinite(z: Array, indices: Array) -> Tuple[Array, Array]:
  """``(indices, finite)``: the indices with -1 where ``z``'s latent is not finite."""
  finite = finite_rows(z)
  return jnp.where(finite, indices, -1), finite


def finite_weights(finite: Array, weights: Optional[Array]) -> Array:
  """``weights`` (ones if None) with zero at the rows that are not ``finite``."""
  return jnp.where(finite, 1.0 if weights is None else weights, 0.0)


def codewords_of(codebook: Array, indices: Array, finite: Array, dtype: Any) -> Array:
  """``lookup`` of ``indices``, NaN where ``finite`` is False (index -1)."""
  codewords = lookup(codebook, jnp.maximum(indices, 0)).astype(dtype)
  return jnp.where(finite[..., None], codewords, jnp.nan).astype(dtype)


def as_weights(mask: Optional[Array]) -> Optional[Array]:
  """A ``(...)`` boolean padding ``mask`` as float32 row weights; None stays None."""
  return None if mask is None else as_float32(mask)


def gumbel_indices(rng: Array, z: Array, codebook: Array, temperature: float) -> Array:
  """Codeword indices ``(...)`` drawn from softmax(-||z - mu_k||^2 / temperature)
  by the Gumbel-max trick (vector-quantize-pytorch's
  ``stochastic_sample_codes``); as temperature -> 0, ``hard_quantize``'s."""
  logits = -squared_distances(z, codebook) / temperature
  return jnp.argmax(logits + jax.random.gumbel(rng, logits.shape), axis=-1).astype(jnp.int32)


def lookup(codebook: Array, indices: Array) -> Array:
  """The codewords of integer ``indices`` (any shape): shape ``(..., d)``.

  The inverse of quantization's index output, e.g. for a decoder that reads
  tokens. Gradients reach the looked-up rows of the codebook. Indices out
  of ``[0, K)`` are a ``ValueError`` where they are concrete; traced (under
  jit) they are clamped to the nearest valid code, never NaN and never
  wrapped (``jnp.take``'s default would give NaN rows).
  """
  return jnp.take(codebook, checked_indices(indices, codebook.shape[0]), axis=0)


def checked_indices(indices: Array, num_codes: int) -> Array:
  """Integer ``indices`` of ``num_codes`` codes, for a lookup: out-of-range
  ones are a ``ValueError`` where concrete, clamped to ``[0, num_codes - 1]``
  where traced."""
  if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
    raise TypeError(f"lookup takes integer indices, got dtype {jnp.result_type(indices)}")
  try:
    values = np.asarray(indices)
  except jax.errors.TracerArrayConversionError:
    values = None
  if values is not None and values.size and (values.min() < 0 or values.max() >= num_codes):
    raise ValueError(f"lookup: indices must lie in [0, {num_codes}), got "
                     f"{values.min()} to {values.max()}")
  return jnp.clip(indices, 0, num_codes - 1)


def normalizer_weight(normalizer: str, d: int) -> float:
  """The weight w of log sigma_k^2 in the logits (``soft_assignment_logits``)."""
  if normalizer == "paper":
    return 0.5 * d
  if normalizer == "notebook":
    return -0.5
  raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")


def soft_assignment_logits(z: Array, codebook: Array, log_var: Array,
                           normalizer: str = "paper") -> Array:
  """Unnormalised log posterior of each codeword, eqs. (5) and (7).

  With a uniform prior p(mu_k) = 1/K (eq. 7) and the isotropic Gaussian
  likelihood N(z; mu_k, sigma_k^2 I) of eq. (5), up to a constant in k:

    log p(mu_k | z) = -||z - mu_k||^2 / (2 sigma_k^2) - (d/2) log sigma_k^2.

  ``normalizer="notebook"`` replaces the last term by ``+(1/2) log sigma_k^2``,
  the weighting of the authors' MNIST notebook.

  Args:
    z: (noisy) latents z'_e, shape ``(..., d)``.
    codebook: shape ``(K, d)``.
    log_var: log sigma_k^2, shape ``(..., K)`` (broadcastable).
    normalizer: one of ``NORMALIZERS``.

  Returns:
    Float32 logits, shape ``(..., K)``; ``jax.nn.softmax`` of them is
    p(mu_k | z).
  """
  return distance_logits(squared_distances(z, codebook), as_float32(log_var),
                         normalizer_weight(normalizer, z.shape[-1]))


# |log sigma^2| past which exp(-log sigma^2) is clipped for the distance
# term. At e^30 (or e^-30) the float32 posterior is already one-hot (or
# flat) for any distances float32 tells apart, and the term stays finite for
# squared distances below 1e25, so that no finite log-variance gives -inf
# logits everywhere (a NaN posterior).
LOG_VAR_BOUND = 30.0


def distance_logits(dist: Array, log_var: Array, weight: float) -> Array:
  """The logits of ``soft_assignment_logits`` from squared distances:
  -||z - mu_k||^2 / (2 sigma_k^2) - w log sigma_k^2 (w: ``normalizer_weight``).

  Finite for every finite log-variance and squared distances below 1e25
  (``LOG_VAR_BOUND``); a NaN distance (a NaN latent) stays NaN."""
  return -0.5 * dist * jnp.exp(-jnp.clip(log_var, -LOG_VAR_BOUND, LOG_VAR_BOUND)) - weight * log_var


def posterior_mean(probs: Array, codebook: Array) -> Array:
  """Bayesian estimate z_hat = sum_k p(mu_k | z) mu_k, eq. (6).

  Args:
    probs: posterior weights, shape ``(..., K)``.
    codebook: shape ``(K, d)``.

  Returns:
    Convex combination of the codewords, float32, shape ``(..., d)``.
  """
  return jnp.matmul(as_float32(probs), as_float32(codebook), precision=PRECISION)


def soft_quantize(z: Array, codebook: Array, log_var: Array,
                  normalizer: str = "paper") -> Tuple[Array, Array]:
  """Soft quantization by the Bayesian estimator, eqs. (5)-(7).

  The one implementation of the soft quantizer: every soft module calls it.

  Args:
    z: latents z'_e, shape ``(..., d)``.
    codebook: shape ``(K, d)``.
    log_var: log sigma_k^2, broadcastable against ``(..., K)``: per latent
      vector (the paper's head) or per codeword, ``(K,)``.
    normalizer: one of ``NORMALIZERS`` (``soft_assignment_logits``).

  Returns:
    ``(z_hat, probs)``: the posterior mean, shape ``(..., d)``, and the
    posterior p(mu_k | z), shape ``(..., K)``, both in ``z``'s dtype.
    Computed in float32 as a softmax of ``soft_assignment_logits``; memory
    O(N K) (``streaming.soft_quantize_chunked`` streams over the codebook
    instead).
  """
  probs = jax.nn.softmax(soft_assignment_logits(z, codebook, log_var, normalizer), axis=-1)
  return posterior_mean(probs, codebook).astype(z.dtype), probs.astype(z.dtype)


def straight_through(z: Array, z_q: Array) -> Array:
  """z + sg(z_q - z): forward value z_q, gradient copied to z (eq. 27 text)."""
  return z + jax.lax.stop_gradient(z_q - z)


def rotation_trick(z: Array, z_q: Array) -> Array:
  """The rotation trick (Fifty et al., "Restructuring Vector Quantization with
  the Rotation Trick", ICLR 2025, eq. 4 and Algorithm 1).

  Forward value ``z_q``; the gradient reaches ``z`` through the fixed linear
  map ``sg(lambda R)``, where ``R`` is the rotation (a Householder
  reflection pair) taking ``z / ||z||`` to ``z_q / ||z_q||`` and ``lambda =
  ||z_q|| / ||z||``, instead of the identity of ``straight_through``.
  Float32 arithmetic; returned in ``z``'s dtype.
  """
  e, q = as_float32(z), as_float32(jax.lax.stop_gradient(z_q))
  e_norm, q_norm = _safe_norm(e), _safe_norm(q)
  u = jax.lax.stop_gradient(e / e_norm)
  q_hat = q / q_norm
  w = l2_normalize(u + q_hat)
  dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  rotated = e - 2 * dot(e, w) * w + 2 * dot(e, u) * q_hat
  return (rotated * jax.lax.stop_gradient(q_norm / e_norm)).astype(z.dtype)


def directional_reparam(rng: Array, z: Array, z_q: Array, variance: float) -> Array:
  """DiVeQ's directional reparameterisation (Vali et al., "DiVeQ:
  Differentiable Vector Quantization Using the Reparameterization Trick",
  2025, Fig. 1; vector-quantize-pytorch's ``directional_reparam``).

  ``z + ||z_q - z|| sg(u)``, ``u = (z_q - z + sqrt(variance) eps) / ||...||``
  with ``eps ~ N(0, I)``: a value near ``z_q`` (exactly it at variance 0)
  whose gradient reaches ``z`` and, through the distance, the codeword
  ``z_q``, so the codebook learns without eq. (27)'s terms. Float32
  arithmetic; returned in ``z``'s dtype.
  """
  e, q = as_float32(z), as_float32(z_q)
  error = q - e
  noisy = jax.lax.stop_gradient(error) + jnp.sqrt(variance) * jax.random.normal(rng, error.shape)
  direction = jax.lax.stop_gradient(l2_normalize(noisy))
  return (e + _safe_norm(error) * direction).astype(z.dtype)


def l2_normalize(x: Array) -> Array:
  """``x / ||x||`` along the last axis in float32 (cosine-similarity codebooks)."""
  x = as_float32(x)
  return x / _safe_norm(x)


def _safe_norm(x: Array) -> Array:
  """||x|| along the last axis, at least 1e-12, with a finite gradient at 0."""
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-24))


def orthogonal_loss(codebook: Array) -> Array:
  """Orthogonal regularisation of a codebook: the mean squared cosine
  similarity of all pairs of codewords minus its minimum ``1/K`` (Shin et
  al., "Translation-equivariant Image Quantizer for Bi-directional Image-Text
  Generation", 2021, eq. 6; vector-quantize-pytorch's
  ``orthogonal_reg_loss_fn``).

  Computed as ``||N^T N||_F^2 / K^2 - 1/K`` from the ``(d, d)`` Gram matrix
  of the normalised codebook ``N``: O(K d^2), never the ``(K, K)`` matrix.
  """
  normed = l2_normalize(codebook)
  gram = jnp.matmul(normed.T, normed, precision=PRECISION)
  k = codebook.shape[0]
  return jnp.sum(jnp.square(gram)) / k ** 2 - 1.0 / k


def _mean_sq_norm(x: Array, weights: Optional[Array] = None) -> Array:
  squares = jnp.sum(jnp.square(as_float32(x)), axis=-1)
  if weights is None:
    return jnp.mean(squares)
  weights = as_float32(weights).reshape(squares.shape)
  return jnp.sum(squares * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def codebook_loss(z: Array, z_q: Array, weights: Optional[Array] = None) -> Array:
  """||sg(z') - z_hat||^2 of eq. (27): trains the codebook only.

  Args:
    z: encoder latents z'_e, shape ``(..., d)``; gradient is stopped.
    z_q: quantized latents (hard or soft), shape ``(..., d)``.
    weights: optional ``(...)`` weights of the latents (a padding mask).

  Returns:
    Scalar: squared norm over ``d``, averaged (weighted) over leading axes.
  """
  return _mean_sq_norm(jax.lax.stop_gradient(z) - z_q, weights)


def commitment_loss(z: Array, z_q: Array, beta: float,
                    weights: Optional[Array] = None) -> Array:
  """beta ||z' - sg(z_hat)||^2 of eq. (27): trains the encoder only.

  Args:
    z: encoder latents z'_e, shape ``(..., d)``.
    z_q: quantized latents, shape ``(..., d)``; gradient is stopped.
    beta: commitment weight.
    weights: optional ``(...)`` weights of the latents (a padding mask).

  Returns:
    Scalar: squared norm over ``d``, averaged (weighted) over leading axes,
    times beta.
  """
  return beta * _mean_sq_norm(z - jax.lax.stop_gradient(z_q), weights)


def perplexity(average: Array, axis_name: Optional[str] = None) -> Array:
  """exp(entropy) of an average assignment over the codewords.

  Args:
    average: the mean of one-hot or posterior assignments, shape ``(K,)``
      (``index_counts`` / N: of the nearest or most probable codewords, the
      number tokenizers report; or the mean posterior).
    axis_name: under ``shard_map``/``pmap``, average over that axis too.

  Returns:
    Scalar in [1, K]: the effective number of codewords in use.
  """
  average = as_float32(average)
  if axis_name is not None:
    average = jax.lax.pmean(average, axis_name)
  return jnp.exp(-jnp.sum(average * jnp.log(jnp.maximum(average, 1e-10))))


def index_counts(indices: Array, num_codewords: int,
                 weights: Optional[Array] = None) -> Array:
  """How often each of ``num_codewords`` codewords occurs in ``indices`` (any
  shape), each occurrence counted with its ``weights`` (default 1): float32,
  shape ``(K,)``."""
  counted = 1.0 if weights is None else as_float32(weights).reshape(-1)
  return jnp.zeros((num_codewords,)).at[indices.reshape(-1)].add(counted)


def usage(counts: Array, axis_name: Optional[str] = None) -> Array:
  """Fraction of codewords with a nonzero count (``index_counts``); under
  ``shard_map``/``pmap`` counted over ``axis_name`` too."""
  if axis_name is not None:
    counts = jax.lax.psum(counts, axis_name)
  return jnp.mean(counts > 0)


def assignment_sums(z: Array, assignments: Array,
                    row_weights: Optional[Array] = None) -> Tuple[Array, Array]:
  """Per-codeword counts ``(K,)`` and sums of ``z`` ``(K, d)`` of one-hot or
  posterior ``assignments`` ``(..., K)``, each latent weighted by
  ``row_weights`` ``(...)`` (default 1): float32, without gradient."""
  num_codewords = assignments.shape[-1]
  z = as_float32(jax.lax.stop_gradient(z)).reshape(-1, z.shape[-1])
  weights = as_float32(jax.lax.stop_gradient(assignments)).reshape(-1, num_codewords)
  if row_weights is not None:
    weights = weights * as_float32(row_weights).reshape(-1, 1)
  return jnp.sum(weights, axis=0), jnp.matmul(weights.T, z, precision=PRECISION)


def index_sums(z: Array, indices: Array, num_codewords: int,
               row_weights: Optional[Array] = None) -> Tuple[Array, Array]:
  """``assignment_sums`` of hard ``indices`` ``(...)`` without the one-hot
  ``(N, K)`` matrix."""
  z = as_float32(jax.lax.stop_gradient(z)).reshape(-1, z.shape[-1])
  indices = indices.reshape(-1)
  counted = (jnp.ones(indices.shape) if row_weights is None
             else as_float32(row_weights).reshape(-1))
  return (jax.ops.segment_sum(counted, indices, num_codewords),
          jax.ops.segment_sum(z * counted[:, None], indices, num_codewords))


def ema_codebook_step(cluster_size: Array, embed_sum: Array, counts: Array, sums: Array,
                      decay: float, eps: float = 1e-5,
                      axis_name: Optional[str] = None) -> Tuple[Array, Array, Array]:
  """Exponential-moving-average codebook update (VQ-VAE paper, appendix A.1).

  Hard assignments (one-hot) give the VQ-VAE update; soft posteriors give
  each codeword the probability-weighted count and sum of the latents.

  Args:
    cluster_size: EMA of codeword counts, float32, shape ``(K,)``.
    embed_sum: EMA of the sums of assigned latents, float32, ``(K, d)``.
    counts, sums: this batch's (``assignment_sums``, ``index_sums``).
    decay: EMA decay in (0, 1).
    eps: Laplace smoothing of the counts.
    axis_name: under ``shard_map``/``pmap``, the axis over which the batch
      is split: counts and sums are summed over it, so that every device
      takes the same step as one device on the whole batch.

  Returns:
    ``(cluster_size, embed_sum, codebook)`` after one update, float32.
  """
  num_codewords = cluster_size.shape[0]
  if axis_name is not None:
    counts, sums = jax.lax.psum((counts, sums), axis_name)
  cluster_size = decay * cluster_size + (1 - decay) * counts
  embed_sum = decay * embed_sum + (1 - decay) * sums
  total = jnp.sum(cluster_size)
  smoothed = (cluster_size + eps) / (total + num_codewords * eps) * total
  return cluster_size, embed_sum, embed_sum / smoothed[:, None]
