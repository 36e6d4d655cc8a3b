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

import dataclasses
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from softvq_jax.model import bottlenecks
from softvq_jax.model import networks
from softvq_jax.quantizers import linen

Array = jax.Array

NETWORKS = ("mlp", "cnn")
RECONSTRUCTIONS = ("nmse", "bernoulli")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OUTPUT_ACTIVATIONS = ("sigmoid", "identity")
# What ``Autoencoder.loss`` reports: its terms, then the bottleneck's diagnostics.
METRICS = ("loss", "recon", "bottleneck_loss") + bottlenecks.DIAGNOSTICS


def apply_output_activation(outputs: Array, output_activation: str) -> Array:
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
    err = jnp.square(apply_output_activation(outputs, output_activation) - x) / pixel_var
  elif kind == "bernoulli":
    err = optax.sigmoid_binary_cross_entropy(outputs, x)
  else:
    raise ValueError(f"model.recon must be one of {RECONSTRUCTIONS}, got {kind!r}")
  return jnp.mean(jnp.sum(err.reshape(err.shape[0], -1), axis=-1))


class Autoencoder(nn.Module):
  """Encoder trunk, bottleneck and decoder, with its reconstruction term.

  ``__call__`` maps images ``(B, H, W, C)`` to decoder outputs of the same
  shape (before the output activation) and the bottleneck's ``aux`` dict.
  """
  encoder: nn.Module
  bottleneck: nn.Module
  decoder: nn.Module
  recon: str = "nmse"  # One of RECONSTRUCTIONS.
  output_activation: str = "sigmoid"  # One of OUTPUT_ACTIVATIONS.

  def __call__(self, x: Array, *, train: bool) -> Tuple[Array, Dict[str, Any]]:
    z, aux = self.bottleneck(self.encoder(x), train=train)
    return self.decoder(z).astype(jnp.float32), aux

  def initialize(self, x: Array) -> None:
    """The bottleneck's data-dependent start from images x, where it has one
    (``Quantized.initialize``: the library's quantizers); else nothing."""
    if hasattr(self.bottleneck, "initialize"):
      self.bottleneck.initialize(self.encoder(x))

  def encode(self, x: Array) -> Array:
    """The downstream latent (z_e, or the VAE mean) of images x, ``(B, d)``."""
    _, aux = self.bottleneck(self.encoder(x), train=False)
    return aux["latent"]

  def reconstruct(self, x: Array) -> Tuple[Array, Dict[str, Any]]:
    """Reconstructed images of x (evaluation mode) and the bottleneck's aux."""
    outputs, aux = self(x, train=False)
    return apply_output_activation(outputs, self.output_activation), aux

  def loss(self, x: Array, *, pixel_var: float) -> Tuple[Array, Dict[str, Array]]:
    """The training loss of a batch x and its ``METRICS`` (module docstring)."""
    outputs, aux = self(x, train=True)
    recon = reconstruction_loss(outputs, x, kind=self.recon,
                                output_activation=self.output_activation,
                                pixel_var=pixel_var)
    loss = recon + aux["loss"]
    metrics = {"loss": loss, "recon": recon, "bottleneck_loss": aux["loss"]}
    metrics.update({k: aux[k] for k in bottlenecks.DIAGNOSTICS if k in aux})
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class BottleneckSpec:
  """How ``config.model`` builds one kind of bottleneck module."""
  build: Callable[[Mapping[str, Any]], nn.Module]  # From config.model's keys.
  scalars: Tuple[str, ...]  # The float keys it reads: runs may vmap over them.


def _quantizer(model: Mapping[str, Any]) -> Dict[str, Any]:
  return dict(num_codewords=model["num_codewords"], commitment=model["commitment"],
              vq_weight=model["vq_weight"], ema_decay=model["ema_decay"],
              codebook_init=model["codebook_init"],
              dead_code_threshold=model["dead_code_threshold"])


def _soft_quantizer(model: Mapping[str, Any]) -> Dict[str, Any]:
  return dict(noise_std=model["noise_std"], normalizer=model["normalizer"],
              log_var_init=model["log_var_init"], **_quantizer(model))


def _residual(model: Mapping[str, Any], stage: Callable[[], nn.Module]) -> nn.Module:
  stages = tuple(stage() for _ in range(model["num_stages"]))
  return _quantized(model, linen.ResidualQuantizer(stages), model["num_codewords"])


def _quantized_dim(model: Mapping[str, Any]) -> int:
  """The size the quantizer reads: ``quantizer_dim``, else z_e's."""
  return model["quantizer_dim"] or model["latent_dim"]


def _quantized(model: Mapping[str, Any], quantizer: nn.Module,
               num_codewords: int) -> nn.Module:
  return bottlenecks.Quantized(model["latent_dim"], quantizer, num_codewords=num_codewords,
                               quantizer_dim=model["quantizer_dim"])


# Each builds its module from config.model's keys (``model``).
BOTTLENECKS = {
    "none": BottleneckSpec(lambda model: bottlenecks.Identity(model["latent_dim"]), ()),
    "vae": BottleneckSpec(lambda model: bottlenecks.VAE(model["latent_dim"], beta=model["beta"]),
                          ("beta",)),
    "info_dropout": BottleneckSpec(
        lambda model: bottlenecks.InfoDropout(model["latent_dim"], beta=model["beta"],
                                              max_alpha=model["max_alpha"]),
        ("beta", "max_alpha")),
    "vq": BottleneckSpec(
        lambda model: bottlenecks.VQ(model["latent_dim"], **_quantizer(model)),
        ("commitment", "vq_weight")),
    "soft_vq": BottleneckSpec(
        lambda model: bottlenecks.SoftVQ(model["latent_dim"], variance=model["variance"],
                                         **_soft_quantizer(model)),
        ("noise_std", "commitment", "vq_weight")),
    "fsq": BottleneckSpec(
        lambda model: _quantized(model, linen.FSQ(tuple(model["fsq_levels"])),
                                 math.prod(model["fsq_levels"])), ()),
    "lfq": BottleneckSpec(
        lambda model: _quantized(
            model, linen.LFQ(_quantized_dim(model), entropy_weight=model["entropy_weight"],
                             commitment=model["commitment"] * model["vq_weight"]),
            2 ** _quantized_dim(model)), ()),
    "residual_vq": BottleneckSpec(
        lambda model: _residual(model, lambda: linen.VectorQuantizer(**_quantizer(model))), ()),
    "residual_soft_vq": BottleneckSpec(
        lambda model: _residual(model, lambda: linen.SoftVectorQuantizer(
            variance=model["variance"], **_soft_quantizer(model))), ()),
}
# The bottlenecks with codebooks (model.num_codewords, codebook_init, ema_decay).
CODEBOOKS = ("vq", "soft_vq", "residual_vq", "residual_soft_vq")
# The config keys that runs trained in one program may differ in (train.vmap_key).
VMAPPABLE_KEYS = tuple(dict.fromkeys(
    f"model.{key}" for spec in BOTTLENECKS.values() for key in spec.scalars))


def make_bottleneck(model_config: ml_collections.ConfigDict,
                    scalars: Optional[Mapping[str, Any]] = None) -> nn.Module:
  """The bottleneck module named by ``model_config.bottleneck``.

  Args:
    model_config: ``config.model``.
    scalars: keys of ``model_config`` among the bottleneck's
      ``BottleneckSpec.scalars`` with values that replace the config's, e.g.
      ``{"noise_std": x}``. The values may be traced arrays, so that runs that
      differ only in such a scalar (``train.vmap_key``) are vmapped over it.
  """
  spec = BOTTLENECKS.get(model_config.bottleneck)
  if spec is None:
    raise ValueError(f"model.bottleneck must be one of {tuple(BOTTLENECKS)}, "
                     f"got {model_config.bottleneck!r}")
  unknown = set(scalars or {}) - set(spec.scalars)
  if unknown:
    raise ValueError(f"model.bottleneck={model_config.bottleneck!r} has no scalar "
                     f"{sorted(unknown)}; it has {spec.scalars}")
  return spec.build({**model_config.to_dict(), **(scalars or {})})


def make_model(model_config: ml_collections.ConfigDict, image_shape: Tuple[int, int, int],
               scalars: Optional[Mapping[str, Any]] = None,
               compute_dtype: str = "float32") -> Autoencoder:
  """The Autoencoder of ``model_config`` for images of ``image_shape`` (H, W, C).

  ``scalars`` replace bottleneck scalars of the config (``make_bottleneck``).
  ``compute_dtype`` (``COMPUTE_DTYPES``, ``train.compute_dtype``) is that of
  the encoder trunk's and decoder's activations and matmuls; parameters, the
  bottleneck's arithmetic and the loss stay float32.
  """
  image_shape, dtype = tuple(image_shape), COMPUTE_DTYPES[compute_dtype]
  if model_config.network == "mlp":
    encoder = networks.MLPEncoder(tuple(model_config.mlp_hidden), dtype)
    decoder = networks.MLPDecoder(image_shape, tuple(reversed(model_config.mlp_hidden)), dtype)
  elif model_config.network == "cnn":
    channels = tuple(model_config.cnn_channels)
    encoder = networks.CNNEncoder(channels, dtype)
    decoder = networks.CNNDecoder(image_shape, tuple(reversed(channels))[:-1], dtype)
  else:
    raise ValueError(f"model.network must be one of {NETWORKS}, got {model_config.network!r}")
  return Autoencoder(encoder, make_bottleneck(model_config, scalars), decoder,
                     recon=model_config.recon,
                     output_activation=model_config.output_activation)
