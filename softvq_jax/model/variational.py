"""The VAE and information-dropout bottlenecks' maths as pure JAX functions.

Jit-, vmap- and grad-safe over latents of any leading shape ``(..., d)``; a
KL or penalty is summed over ``d``, as the quantizers' loss terms are
(``softvq_jax.quantizers.functional``). The paper's modules around them are
``softvq_jax.model.bottlenecks.VAE`` and ``InfoDropout``.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def reparameterize(rng: Array, mean: Array, log_var: Array) -> Array:
  """VAE sample mean + exp(log_var / 2) * eps, eps ~ N(0, I); shape of mean."""
  eps = jax.random.normal(rng, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * log_var) * eps


def gaussian_kl(mean: Array, log_var: Array) -> Array:
  """KL(N(mean, diag(exp(log_var))) || N(0, I)) per latent vector.

  Args:
    mean, log_var: shape ``(..., d)``.

  Returns:
    KL in nats, summed over ``d``, shape ``(...)``.
  """
  return 0.5 * jnp.sum(jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var,
                       axis=-1)


def info_dropout_noise(rng: Array, z: Array, alpha: Array) -> Array:
  """Multiplicative log-normal noise z * exp(alpha * eps) (Achille & Soatto).

  Args:
    rng: PRNG key.
    z: activations, shape ``(..., d)``.
    alpha: noise scale, broadcastable to ``z``.
  """
  eps = jax.random.normal(rng, z.shape, z.dtype)
  return z * jnp.exp(alpha * eps)


def info_dropout_penalty(alpha: Array, max_alpha: float) -> Array:
  """The authors' information-dropout cost -log(alpha / max_alpha + 0.001).

  This is the KL to a log-uniform prior up to a constant, with the small
  offset of the authors' code. Returns it summed over ``d``, shape ``(...)``.
  """
  return -jnp.sum(jnp.log(alpha / max_alpha + 1e-3), axis=-1)
