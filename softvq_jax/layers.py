"""Flax modules around the bottleneck functions of ``softvq_jax.bottlenecks``.

All bottlenecks share one interface::

    decoder_input, aux = bottleneck(h, train=train)

``h`` is the encoder trunk's output, shape ``(..., features)``; each module
owns its heads (z_e of size d, and the extra heads the paper describes: a
log-variance head of size d for the VAE, a noise-scale head of size d for
information dropout, a log-variance head of size K for soft VQ).

``aux`` holds ``loss`` (the bottleneck's own term, a scalar), ``latent`` (the
representation used downstream: z_e, or the mean for the VAE), the scalar
``DIAGNOSTICS`` that the bottleneck has (its individual loss terms, and for
the quantizers ``perplexity`` and ``usage``, the fraction of codewords used
in the batch) and for the quantizers ``indices`` (hard) or ``probs`` (soft).

The quantizers' codebook starts at TF1's unit scaling (``codebook_init=
"uniform"``, the authors' choice) or, with ``codebook_init="data"``, at the
encodings z_e of the first K examples of the batch the module is
initialised on (``Module.init`` with K training images).

Stochastic bottlenecks draw from the ``'noise'`` rng stream in training.
"""

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax import bottlenecks as bn

Array = jax.Array
Aux = Dict[str, Any]

# The scalar diagnostics a bottleneck may put in its aux, logged with the loss.
DIAGNOSTICS = ("kl", "penalty", "codebook_loss", "commitment_loss", "perplexity",
               "usage")
CODEBOOK_INITS = ("uniform", "data")

glorot_uniform = nn.initializers.glorot_uniform()
# TF1's uniform_unit_scaling_initializer for a (K, d) codebook: U(+-sqrt(3/K)).
uniform_unit_scaling = nn.initializers.variance_scaling(
    1.0, "fan_in", "uniform", in_axis=0, out_axis=1)


def dense(features: int, name: str) -> nn.Dense:
  """A Glorot-uniform dense layer, the initialisation of the paper."""
  return nn.Dense(features, kernel_init=glorot_uniform, name=name)


def codebook_initializer(kind: str, z: Array) -> Callable[..., Array]:
  """The initialiser of a ``(K, d)`` codebook (``CODEBOOK_INITS``).

  Args:
    kind: ``uniform`` (TF1's unit scaling) or ``data``: the first K vectors
      of ``z``, the encodings of the batch the module is initialised on.
    z: encodings, shape ``(..., d)``.
  """
  if kind == "uniform":
    return uniform_unit_scaling
  if kind != "data":
    raise ValueError(f"codebook_init must be one of {CODEBOOK_INITS}, got {kind!r}")

  def from_data(rng, shape, dtype=jnp.float32):
    del rng
    encodings = jax.lax.stop_gradient(z).reshape(-1, shape[-1])
    if encodings.shape[0] < shape[0]:
      raise ValueError(f"codebook_init='data' needs at least {shape[0]} encodings in the "
                       f"initialisation batch, got {encodings.shape[0]}")
    return encodings[:shape[0]].astype(dtype)
  return from_data


class Identity(nn.Module):
  """The baseline autoencoder: the decoder gets z_e = W h + b directly."""
  latent_dim: int

  @nn.compact
  def __call__(self, h: Array, *, train: bool) -> Tuple[Array, Aux]:
    del train
    z = dense(self.latent_dim, "z_e")(h)
    return z, {"loss": jnp.zeros((), z.dtype), "latent": z}


class VAE(nn.Module):
  """Gaussian posterior with the reparameterisation trick; beta weighs the KL.

  beta = 1 is the VAE, beta > 1 the beta-VAE rows of Tables 1 and 2.
  """
  latent_dim: int
  beta: float = 1.0

  @nn.compact
  def __call__(self, h: Array, *, train: bool) -> Tuple[Array, Aux]:
    mean = dense(self.latent_dim, "z_e")(h)
    log_var = dense(self.latent_dim, "log_var")(h)
    z = bn.reparameterize(self.make_rng("noise"), mean, log_var) if train else mean
    kl = jnp.mean(bn.gaussian_kl(mean, log_var))
    return z, {"loss": self.beta * kl, "latent": mean, "kl": kl}


class InfoDropout(nn.Module):
  """Information dropout (Achille & Soatto) as in the authors' code.

  z = z_e * exp(alpha * eps) in training with alpha = max_alpha * sigmoid(a),
  ``a`` a learned head of size d; the penalty weight is ``beta``.
  """
  latent_dim: int
  beta: float = 1.0
  max_alpha: float = 0.7

  @nn.compact
  def __call__(self, h: Array, *, train: bool) -> Tuple[Array, Aux]:
    z = dense(self.latent_dim, "z_e")(h)
    alpha = self.max_alpha * nn.sigmoid(dense(self.latent_dim, "noise_scale")(h))
    out = bn.info_dropout_noise(self.make_rng("noise"), z, alpha) if train else z
    penalty = jnp.mean(bn.info_dropout_penalty(alpha, self.max_alpha))
    return out, {"loss": self.beta * penalty, "latent": z, "penalty": penalty}


def _quantizer_outputs(z_e: Array, z_in: Array, z_q: Array, assignments: Array,
                       indices: Array, *, commitment: float, vq_weight: float,
                       train_codebook: bool) -> Tuple[Array, Aux]:
  """Straight-through output and eq. (27)'s VQ terms, shared by both quantizers.

  Args:
    z_e: noiseless encoder output, the downstream latent.
    z_in: the quantizer's input z'_e (z_e plus noise for soft VQ).
    z_q: hard or soft quantized latents.
    assignments: one-hot or posterior weights, shape ``(..., K)``.
    indices: nearest/most probable codewords, shape ``(...)``.
    commitment: beta of eq. (27).
    vq_weight: scale of the whole VQ term (the authors use 3.0 / 2.0 on
      per-element means; see configs).
    train_codebook: False when the codebook follows an EMA instead.
  """
  commit = bn.commitment_loss(z_in, z_q, commitment)
  cb = bn.codebook_loss(z_in, z_q) if train_codebook else jnp.zeros_like(commit)
  aux = {
      "loss": vq_weight * (cb + commit),
      "latent": z_e,
      "codebook_loss": cb,
      "commitment_loss": commit,
      "perplexity": bn.codebook_perplexity(assignments),
      "usage": bn.codebook_usage(indices, assignments.shape[-1]),
      "indices": indices,
  }
  return bn.straight_through(z_in, z_q), aux


class VQ(nn.Module):
  """VQ-VAE: nearest-codeword quantization, eq. (1), straight-through.

  With ``ema_decay`` set, the codebook lives in the ``'ema'`` collection and
  follows exponential moving averages (VQ-VAE paper, appendix); the codebook
  term of the loss is then dropped. Off by default; it needs
  ``codebook_init="uniform"``.
  """
  latent_dim: int
  num_codewords: int
  commitment: float = 0.25
  vq_weight: float = 1.0
  ema_decay: Optional[float] = None
  codebook_init: str = "uniform"

  @nn.compact
  def __call__(self, h: Array, *, train: bool) -> Tuple[Array, Aux]:
    z = dense(self.latent_dim, "z_e")(h)
    shape = (self.num_codewords, self.latent_dim)
    if self.ema_decay is None:
      codebook = self.param("codebook", codebook_initializer(self.codebook_init, z), shape)
    elif self.codebook_init != "uniform":
      raise ValueError("an EMA codebook (ema_decay) needs codebook_init='uniform'")
    else:
      init_rng = self.make_rng("params") if self.is_initializing() else None
      size = self.variable("ema", "cluster_size", jnp.ones, (self.num_codewords,))
      embed_sum = self.variable("ema", "embed_sum", uniform_unit_scaling,
                                init_rng, shape)
      codebook_var = self.variable("ema", "codebook", lambda: embed_sum.value)
      codebook = codebook_var.value
    z_q, indices = bn.hard_quantize(jax.lax.stop_gradient(z), codebook)
    if self.ema_decay is not None and train and self.is_mutable_collection("ema"):
      size.value, embed_sum.value, codebook_var.value = bn.ema_codebook_update(
          size.value, embed_sum.value, z, indices, self.ema_decay)
    onehot = jax.nn.one_hot(indices, self.num_codewords, dtype=z.dtype)
    return _quantizer_outputs(
        z, z, z_q, onehot, indices, commitment=self.commitment,
        vq_weight=self.vq_weight, train_codebook=self.ema_decay is None)


class SoftVQ(nn.Module):
  """Soft VQ-VAE: noisy z'_e = z_e + eps, Bayesian estimator of eqs. (5)-(7).

  The log-variances log sigma_k^2 come from a head of size K. The posterior
  is computed from sg(z'_e), so the codebook and the log-variance head learn
  from the codebook term of eq. (27) only and the encoder's z_e from the
  commitment term and (straight-through) the decoder.
  """
  latent_dim: int
  num_codewords: int
  noise_std: float = 0.0
  commitment: float = 0.25
  vq_weight: float = 1.0
  normalizer: str = "paper"
  codebook_init: str = "uniform"

  @nn.compact
  def __call__(self, h: Array, *, train: bool) -> Tuple[Array, Aux]:
    z = dense(self.latent_dim, "z_e")(h)
    log_var = dense(self.num_codewords, "log_var")(h)
    codebook = self.param("codebook", codebook_initializer(self.codebook_init, z),
                          (self.num_codewords, self.latent_dim))
    z_in = z
    if train:  # No test on noise_std: it may be traced (train.vmap_key).
      z_in = z + self.noise_std * jax.random.normal(
          self.make_rng("noise"), z.shape, z.dtype)
    logits = bn.soft_assignment_logits(
        jax.lax.stop_gradient(z_in), codebook, log_var, self.normalizer)
    probs = jax.nn.softmax(logits, axis=-1)
    z_hat = bn.posterior_mean(probs, codebook)
    out, aux = _quantizer_outputs(
        z, z_in, z_hat, probs, jnp.argmax(probs, axis=-1),
        commitment=self.commitment, vq_weight=self.vq_weight,
        train_codebook=True)
    aux["probs"] = probs
    return out, aux
