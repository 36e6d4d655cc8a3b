"""Vector quantizers for JAX: Wu & Flierl's soft (posterior-mean) VQ, hard VQ, SimVQ, FSQ,
LFQ, residual and grouped stacks.

::

    import jax, jax.numpy as jnp
    from softvq_jax.quantizers import SoftVectorQuantizer

    vq = SoftVectorQuantizer(512, ema_decay=0.99, codebook_init="kmeans")
    z = jnp.ones((8, 16, 16, 64))                       # (B, H, W, d), any leading shape
    variables = vq.init(jax.random.key(0), z, train=False)   # never reads data
    _, variables = vq.apply(variables, z, method="initialize", mutable=True,
                            rngs={"params": jax.random.key(1)})  # k-means start
    (z_q, aux), state = vq.apply(variables, z, train=True, mutable=["ema"])
    tokens, loss = aux["indices"], aux["loss"]          # add loss to yours
    codewords = vq.apply({**variables, **state}, tokens, method=vq.embed)

The same modules for Flax NNX are in ``softvq_jax.quantizers.nnx``; their whole
behaviour for plain JAX in ``pure`` (``vq_init_state``, ``vq_initialize``,
``vq_forward``, ``vq_embed`` with a frozen ``VQOptions`` / ``SoftVQOptions``); the maths,
as pure jit/vmap/grad-safe functions, in ``functional`` (eqs. 1, 5-7, 27), ``streaming``
(large K in chunks), ``scalar`` (FSQ, LFQ), ``residual`` and ``codebook_health``.
"""

import importlib

from softvq_jax.quantizers import functional
from softvq_jax.quantizers import pure
from softvq_jax.quantizers import streaming
from softvq_jax.quantizers.codebook_health import dead_codes
from softvq_jax.quantizers.codebook_health import kmeans_codebook
from softvq_jax.quantizers.codebook_health import restart_dead_codes
from softvq_jax.quantizers.functional import codebook_loss
from softvq_jax.quantizers.functional import commitment_loss
from softvq_jax.quantizers.functional import directional_reparam
from softvq_jax.quantizers.functional import ema_codebook_step
from softvq_jax.quantizers.functional import hard_quantize
from softvq_jax.quantizers.functional import lookup
from softvq_jax.quantizers.functional import orthogonal_loss
from softvq_jax.quantizers.functional import perplexity
from softvq_jax.quantizers.functional import rotation_trick
from softvq_jax.quantizers.functional import soft_quantize
from softvq_jax.quantizers.functional import straight_through
from softvq_jax.quantizers.linen import FSQ
from softvq_jax.quantizers.linen import LFQ
from softvq_jax.quantizers.linen import GroupedResidualQuantizer
from softvq_jax.quantizers.linen import QuantizerOptions
from softvq_jax.quantizers.linen import ResidualFSQ
from softvq_jax.quantizers.linen import ResidualLFQ
from softvq_jax.quantizers.linen import ResidualQuantizer
from softvq_jax.quantizers.linen import SimVQ
from softvq_jax.quantizers.linen import SoftOptions
from softvq_jax.quantizers.linen import SoftVectorQuantizer
from softvq_jax.quantizers.linen import VectorQuantizer
from softvq_jax.quantizers.options import SoftVQOptions
from softvq_jax.quantizers.options import VQOptions
from softvq_jax.quantizers.pure import vq_embed
from softvq_jax.quantizers.pure import vq_forward
from softvq_jax.quantizers.pure import vq_init_state
from softvq_jax.quantizers.pure import vq_initialize
from softvq_jax.quantizers.scalar import fsq
from softvq_jax.quantizers.scalar import lfq
from softvq_jax.quantizers.scalar import lfq_entropy
from softvq_jax.quantizers.streaming import nearest_codewords
from softvq_jax.quantizers.streaming import soft_quantize_chunked

__all__ = [
    "VectorQuantizer", "SoftVectorQuantizer", "FSQ", "LFQ", "ResidualQuantizer",
    "ResidualFSQ", "ResidualLFQ", "SimVQ", "GroupedResidualQuantizer",
    "QuantizerOptions", "SoftOptions", "VQOptions", "SoftVQOptions", "nnx", "functional",
    "streaming", "pure", "vq_init_state", "vq_initialize", "vq_forward", "vq_embed",
    "hard_quantize", "soft_quantize", "lookup", "straight_through", "rotation_trick",
    "directional_reparam", "codebook_loss", "commitment_loss", "orthogonal_loss", "perplexity", "ema_codebook_step",
    "nearest_codewords", "soft_quantize_chunked", "fsq", "lfq", "lfq_entropy",
    "kmeans_codebook", "dead_codes", "restart_dead_codes",
]


def __getattr__(name):
  """``nnx``, imported on first use: the launcher and linen users skip flax.nnx's import."""
  if name == "nnx":
    return importlib.import_module("softvq_jax.quantizers.nnx")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
