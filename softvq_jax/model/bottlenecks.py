"""The paper's bottlenecks as Flax linen modules, each with its own heads.

All bottlenecks share one interface::

    decoder_input, aux = bottleneck(h, train=train)

``h`` is the encoder trunk's output, shape ``(..., features)``; each module
owns its heads (z_e of size d, and the extra heads the paper describes: a
log-variance head of size d for the VAE, a noise-scale head of size d for
information dropout, a log-variance head of size K for soft VQ).

``aux`` holds ``loss`` (the bottleneck's own term, a scalar), ``latent`` (the
representation used downstream: z_e, or the mean for the VAE), the scalar
``DIAGNOSTICS`` that the bottleneck has (its individual loss terms, and for
the quantizers ``perplexity`` (and soft VQ's ``posterior_perplexity``) and
``usage``, the fraction of codewords used in the batch) and for the
quantizers ``indices`` (hard) or ``probs`` (soft).

The quantizers that take a given ``z`` (no head), for use in any model, are
in ``softvq_jax.quantizers``; ``VQ`` and ``SoftVQ`` own their heads and
call the same functions (``linen.linen_hard_forward``,
``linen_soft_forward``), reading a data initialisation from the batch they
are initialised on (the launcher's ``steps.init_images``). ``Quantized``
puts a z_e head before any other quantizer module (FSQ, LFQ, a residual
stack), whose data-dependent start is ``initialize`` on a batch (the
launcher's first training batch).

Stochastic bottlenecks draw from the ``'noise'`` rng stream in training.
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.model import variational
from softvq_jax.quantizers import linen as qz

Array = jax.Array
Aux = Dict[str, Any]

# The scalar diagnostics a bottleneck may put in its aux, logged with the loss.
DIAGNOSTICS = ("kl", "penalty", "codebook_loss", "commitment_loss", "perplexity",
               "posterior_perplexity", "usage", "dead_code_fraction",
               "per_sample_entropy", "batch_entropy")

glorot_uniform = nn.initializers.glorot_uniform()


def dense(features: int, name: str, dtype: Optional[Any] = None) -> nn.Dense:
  """A Glorot-uniform dense layer, the initialisation of the paper; ``dtype``
  is its computation's (None: the inputs' and float32 parameters' promotion)."""
  return nn.Dense(features, kernel_init=glorot_uniform, dtype=dtype, name=name)


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
    z = variational.reparameterize(self.make_rng("noise"), mean, log_var) if train else mean
    kl = jnp.mean(variational.gaussian_kl(mean, log_var))
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
    out = variational.info_dropout_noise(self.make_rng("noise"), z, alpha) if train else z
    penalty = jnp.mean(variational.info_dropout_penalty(alpha, self.max_alpha))
    return out, {"loss": self.beta * penalty, "latent": z, "penalty": penalty}


class VQ(qz.QuantizerOptions):
  """VQ-VAE: a z_e head on the trunk, then ``VectorQuantizer``'s core.

  With ``ema_decay`` set, the codebook follows exponential moving averages
  (VQ-VAE paper, appendix); the codebook term of the loss is then dropped.
  Off by default.
  """
  latent_dim: int
  num_codewords: int

  @nn.compact
  def __call__(self, h: Array, *, train: bool) -> Tuple[Array, Aux]:
    z = dense(self.latent_dim, "z_e")(h)
    return qz.linen_hard_forward(self, z, train=train, first_batch=False)

  def embed(self, indices: Array) -> Array:
    return qz.linen_embed(self, indices)


class SoftVQ(qz.SoftOptions):
  """Soft VQ-VAE: z_e and log-variance heads, then ``SoftVectorQuantizer``'s core.

  The log-variances log sigma_k^2 come from a head of size K
  (``variance="sample"``, the paper's), or are one per codeword
  (``"codeword"``, learned; ``"fixed"``, held at the start). The posterior
  is computed from sg(z'_e), so the codebook and the log-variances learn
  from the codebook term of eq. (27) only and the encoder's z_e from the
  commitment term and (straight-through) the decoder.
  """
  latent_dim: int
  num_codewords: int
  # One of core.VARIANCES; the paper's is a head per latent vector.
  variance: str = dataclasses.field(default="sample", kw_only=True)

  @nn.compact
  def __call__(self, h: Array, *, train: bool) -> Tuple[Array, Aux]:
    z = dense(self.latent_dim, "z_e")(h)
    log_var = dense(self.num_codewords, "log_var")(h) if self.variance == "sample" else None
    return qz.linen_soft_forward(self, z, log_var, train=train, first_batch=False)

  def embed(self, indices: Array) -> Array:
    return qz.linen_embed(self, indices)


class Quantized(nn.Module):
  """A z_e head, then ``quantizer``, a module of ``softvq_jax.quantizers``
  that takes z as it is (``FSQ``, ``LFQ``, ``ResidualQuantizer``).

  With ``quantizer_dim``, z_e keeps ``latent_dim`` and the quantizer reads a
  LayerNorm of it projected to ``quantizer_dim`` (its output projected back
  to ``latent_dim``): the bound of FSQ / the sign of LFQ then see inputs of
  unit scale whatever z_e's, and the latent judged downstream is z_e, as
  for the rows of Table 1. Without it, the z_e head is the quantizer's
  input.

  aux ``latent`` is z_e; per-stage ``perplexity`` and ``usage`` (a residual
  stack's) are logged as their mean over the stages. ``initialize(h)``
  starts the quantizer's data-dependent state from a batch.
  """
  latent_dim: int
  quantizer: nn.Module
  num_codewords: int  # Values an index takes (per stage), for the usage figure.
  quantizer_dim: Optional[int] = None  # A LayerNorm and projection to this size first.

  def setup(self):
    self.z_e = nn.Dense(self.latent_dim, kernel_init=glorot_uniform)
    if self.quantizer_dim:
      self.norm = nn.LayerNorm()
      self.project_in = nn.Dense(self.quantizer_dim, kernel_init=glorot_uniform)
      self.project_out = nn.Dense(self.latent_dim, kernel_init=glorot_uniform)

  def _quantizer_input(self, z: Array) -> Array:
    return self.project_in(self.norm(z)) if self.quantizer_dim else z

  def __call__(self, h: Array, *, train: bool) -> Tuple[Array, Aux]:
    z = self.z_e(h)
    z_q, aux = self.quantizer(self._quantizer_input(z), train=train)
    if self.quantizer_dim:
      z_q = self.project_out(z_q)
    logged = {name: jnp.mean(aux[name]) for name in ("perplexity", "usage")}
    return z_q, {**aux, **logged, "latent": z}

  def initialize(self, h: Array) -> None:
    self.quantizer.initialize(self._quantizer_input(self.z_e(h)))

  def embed(self, indices: Array) -> Array:
    embedded = self.quantizer.embed(indices)
    return self.project_out(embedded) if self.quantizer_dim else embedded
