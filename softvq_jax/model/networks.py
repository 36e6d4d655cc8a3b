"""Encoder trunks and decoders of the paper's experiments.

* MNIST: an MLP D-500-500-2000 trunk (the last layer to d is the bottleneck's
  z_e head) and the mirror decoder d-2000-500-500-D.
* SVHN / CIFAR-10: four 3x3 stride-2 convolutions with 64, 128, 256 and 512
  channels (32x32 -> 2x2x512), flattened; the decoder projects d back to
  2x2x512 with a dense layer and ReLU, then transposed convolutions with 512,
  256, 128 channels and ReLU, and a last one to the image channels.

Encoders map images ``(B, H, W, C)`` to features ``(B, F)``; decoders map
latents ``(B, d)`` to pre-activation outputs ``(B, H, W, C)`` (logits for a
Bernoulli likelihood, or values passed through the model's output
activation). All weights are Glorot-uniform, biases zero. ``dtype`` is the
computation's (``train.compute_dtype``: bfloat16 activations and matmuls);
parameters stay float32.
"""

import math
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.model.bottlenecks import dense
from softvq_jax.model.bottlenecks import glorot_uniform

Array = jax.Array


class MLPEncoder(nn.Module):
  """Flattens images and applies ReLU dense layers of sizes ``hidden``."""
  hidden: Sequence[int] = (500, 500, 2000)
  dtype: Any = jnp.float32  # Of the computation.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = x.reshape(x.shape[:-3] + (-1,))
    for i, features in enumerate(self.hidden):
      h = nn.relu(dense(features, f"dense_{i}", self.dtype)(h))
    return h


class MLPDecoder(nn.Module):
  """ReLU dense layers of sizes ``hidden``, then a linear layer to the image."""
  image_shape: Tuple[int, int, int]
  hidden: Sequence[int] = (2000, 500, 500)
  dtype: Any = jnp.float32  # Of the computation.

  @nn.compact
  def __call__(self, z: Array) -> Array:
    h = z
    for i, features in enumerate(self.hidden):
      h = nn.relu(dense(features, f"dense_{i}", self.dtype)(h))
    out = dense(math.prod(self.image_shape), "output", self.dtype)(h)
    return out.reshape(out.shape[:-1] + tuple(self.image_shape))


class CNNEncoder(nn.Module):
  """3x3 stride-2 'same' convolutions with ReLU, then flatten."""
  channels: Sequence[int] = (64, 128, 256, 512)
  dtype: Any = jnp.float32  # Of the computation.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = x
    for i, features in enumerate(self.channels):
      h = nn.relu(nn.Conv(features, (3, 3), strides=(2, 2), padding="SAME",
                          kernel_init=glorot_uniform, dtype=self.dtype,
                          name=f"conv_{i}")(h))
    return h.reshape(h.shape[:-3] + (-1,))


class CNNDecoder(nn.Module):
  """Dense to the encoder's last grid, then 3x3 stride-2 transposed convs.

  ``channels`` mirrors the encoder: the grid has ``channels[0]`` features at
  1 / 2**len(channels) of the image size; each transposed conv doubles it.
  """
  image_shape: Tuple[int, int, int]
  channels: Sequence[int] = (512, 256, 128)
  dtype: Any = jnp.float32  # Of the computation.

  @nn.compact
  def __call__(self, z: Array) -> Array:
    height, width, out_channels = self.image_shape
    factor = 2 ** (len(self.channels) + 1)
    if height % factor or width % factor:
      raise ValueError(f"image size {height}x{width} is not divisible by {factor}")
    grid = (height // factor, width // factor, self.channels[0])
    h = nn.relu(dense(grid[0] * grid[1] * grid[2], "project", self.dtype)(z))
    h = h.reshape(h.shape[:-1] + grid)
    for i, features in enumerate(tuple(self.channels) + (out_channels,)):
      h = nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding="SAME",
                           kernel_init=glorot_uniform, dtype=self.dtype,
                           name=f"deconv_{i}")(h)
      if i < len(self.channels):
        h = nn.relu(h)
    return h
