"""Autoencoder = encoder trunk + bottleneck + decoder, and its loss.

The models compared in the paper differ only in the bottleneck. The loss is

  L = recon(x, x_hat) + bottleneck term,

the first term of eq. (27) plus the bottleneck's own (eq. (27)'s VQ terms,
the (beta-)VAE's KL, or information dropout's penalty). ``recon`` is summed
over the pixels of an example and averaged over the batch:

* ``nmse``: squared error divided by the training pixels' variance, the
  "normalised MSE" of the authors' code (who average it over pixels and scale
  the other terms instead; ``configs`` translate their weights);
* ``bernoulli``: sigmoid cross-entropy of the decoder logits, for [0, 1] data.
"""

from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from softvq_jax import layers
from softvq_jax import networks

Array = jax.Array

BOTTLENECKS = ("none", "vae", "info_dropout", "vq", "soft_vq")
NETWORKS = ("mlp", "cnn")
RECONSTRUCTIONS = ("nmse", "bernoulli")
OUTPUT_ACTIVATIONS = ("sigmoid", "identity")


class Autoencoder(nn.Module):
  """Encoder trunk, bottleneck and decoder.

  ``__call__`` maps images ``(B, H, W, C)`` to decoder outputs of the same
  shape (before the output activation) and the bottleneck's ``aux`` dict.
  """
  encoder: nn.Module
  bottleneck: nn.Module
  decoder: nn.Module

  def __call__(self, x: Array, *, train: bool) -> Tuple[Array, Dict[str, Any]]:
    z, aux = self.bottleneck(self.encoder(x), train=train)
    return self.decoder(z), aux

  def encode(self, x: Array) -> Array:
    """The downstream latent (z_e, or the VAE mean) of images x, ``(B, d)``."""
    _, aux = self.bottleneck(self.encoder(x), train=False)
    return aux["latent"]


def make_bottleneck(model_config: ml_collections.ConfigDict) -> nn.Module:
  """The bottleneck module named by ``model_config.bottleneck``."""
  c = model_config
  if c.bottleneck == "none":
    return layers.Identity(c.latent_dim)
  if c.bottleneck == "vae":
    return layers.VAE(c.latent_dim, beta=c.beta)
  if c.bottleneck == "info_dropout":
    return layers.InfoDropout(c.latent_dim, beta=c.beta, max_alpha=c.max_alpha)
  quantizer = dict(num_codewords=c.num_codewords, commitment=c.commitment,
                   vq_weight=c.vq_weight)
  if c.bottleneck == "vq":
    return layers.VQ(c.latent_dim, ema_decay=c.ema_decay, **quantizer)
  if c.bottleneck == "soft_vq":
    return layers.SoftVQ(c.latent_dim, noise_std=c.noise_std,
                         normalizer=c.normalizer, **quantizer)
  raise ValueError(f"model.bottleneck must be one of {BOTTLENECKS}, got {c.bottleneck!r}")


def with_bottleneck_scalars(model: Autoencoder, scalars: Dict[str, Any]) -> Autoencoder:
  """``model`` with bottleneck attributes replaced, e.g. ``{"beta": x}``.

  The values may be traced arrays, so that runs that differ only in such a
  scalar (``train.vmap_key``) are vmapped over it. ``{}`` returns ``model``.
  """
  if not scalars:
    return model
  return model.clone(bottleneck=model.bottleneck.clone(**scalars))


def make_model(model_config: ml_collections.ConfigDict,
               image_shape: Tuple[int, int, int]) -> Autoencoder:
  """The Autoencoder of ``model_config`` for images of ``image_shape`` (H, W, C)."""
  image_shape = tuple(image_shape)
  if model_config.network == "mlp":
    encoder = networks.MLPEncoder(tuple(model_config.mlp_hidden))
    decoder = networks.MLPDecoder(image_shape, tuple(reversed(model_config.mlp_hidden)))
  elif model_config.network == "cnn":
    channels = tuple(model_config.cnn_channels)
    encoder = networks.CNNEncoder(channels)
    decoder = networks.CNNDecoder(image_shape, tuple(reversed(channels))[:-1])
  else:
    raise ValueError(f"model.network must be one of {NETWORKS}, got {model_config.network!r}")
  return Autoencoder(encoder, make_bottleneck(model_config), decoder)


def reconstruct(outputs: Array, output_activation: str) -> Array:
  """Decoder outputs to images: sigmoid for [0, 1] data, identity otherwise."""
  return nn.sigmoid(outputs) if output_activation == "sigmoid" else outputs


def reconstruction_loss(outputs: Array, x: Array, *, kind: str,
                        output_activation: str, pixel_var: float) -> Array:
  """-log p(x | z_hat) up to constants, summed over pixels, mean over batch.

  Args:
    outputs: decoder outputs, shape ``(B, H, W, C)``.
    x: targets of the same shape.
    kind: ``nmse`` or ``bernoulli`` (the latter reads outputs as logits).
    output_activation: applied to outputs for ``nmse``.
    pixel_var: variance of the training pixels, the ``nmse`` normaliser.
  """
  if kind == "nmse":
    err = jnp.square(reconstruct(outputs, output_activation) - x) / pixel_var
  elif kind == "bernoulli":
    err = optax.sigmoid_binary_cross_entropy(outputs, x)
  else:
    raise ValueError(f"model.recon must be one of {RECONSTRUCTIONS}, got {kind!r}")
  return jnp.mean(jnp.sum(err.reshape(err.shape[0], -1), axis=-1))
