"""The options of the quantizers, each declared once.

``VQOptions`` and ``SoftVQOptions`` are frozen (hashable) dataclasses: the
pure functions of ``pure`` take one as ``options`` (a static argument under
``jax.jit``), and the linen and NNX modules take the same keyword options
and hold one as ``module.options``. ``core``, ``forward`` and ``checks``
read them as ``opts``.

``FSQOptions``, ``LFQOptions`` and ``StageOptions`` declare the
codebook-free quantizers' options the same way; ``ResidualQuantizer``,
whose options are its stages, declares its own.
"""

import dataclasses
from typing import Any, Dict, Optional, Protocol, Sequence

import jax.numpy as jnp

# vector-quantize-pytorch's names of the same options, for the error that
# an unknown option gets.
LVQ_NAMES = {"decay": "ema_decay", "codebook_size": "num_codewords",
             "commitment_weight": "commitment", "kmeans_init": "codebook_init='kmeans'",
             "threshold_ema_dead_code": "dead_code_threshold", "use_cosine_sim": "cosine",
             "orthogonal_reg_weight": "orthogonal_weight", "rotation_trick": "rotation_trick",
             "sync_codebook": "axis_name", "codebook_dim": "codebook_dim",
             "learnable_codebook": "ema_decay=None",
             "stochastic_sample_codes": "sample_temperature",
             "sample_codebook_temp": "sample_temperature",
             "num_quantizers": "num_stages (ResidualFSQ / ResidualLFQ) or stages",
             "entropy_loss_weight": "entropy_weight",
             "commitment_loss_weight": "commitment",
             "input_to_quantize_commit_loss_weight": "commitment",
             "frozen_codebook_dim": "codebook_dim", "groups": "groups (a list of quantizers)"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQOptions:
  """A hard VQ quantizer's options (``VectorQuantizer``; ``pure.vq_forward``)."""
  num_codewords: int  # K, the codebook's size.
  commitment: float = 0.25  # beta of eq. (27).
  vq_weight: float = 1.0  # Scale of eq. (27)'s VQ terms.
  ema_decay: Optional[float] = None  # EMA codebook decay in (0, 1); None: trained by gradient.
  codebook_init: str = "uniform"  # One of core.CODEBOOK_INITS; data ones need initialize.
  kmeans_iters: int = 10  # Lloyd iterations of codebook_init="kmeans".
  dead_code_threshold: float = 0.0  # EMA count under which a codeword restarts; 0: off.
  freeze_codebook: bool = False  # Keep the codebook fixed: no EMA update, no codebook loss.
  axis_name: Optional[str] = None  # The batch axis under shard_map / pmap; unbound: local.
  chunk_size: Optional[int] = None  # Codewords per streamed chunk (large K); None: dense.
  cosine: bool = False  # l2-normalised inputs and codewords (cosine-similarity codebook).
  rotation_trick: bool = False  # Gradients through the rotation (Fifty et al.), not copied.
  codebook_dim: Optional[int] = None  # Quantize in a learned projection to this size.
  heads: int = 1  # Split each vector into this many parts, each quantized (indices (..., heads)).
  separate_codebook_per_head: bool = False  # One codebook per head; False: one shared.
  codebook_transform: bool = False  # SimVQ: codewords = frozen random codebook @ learned map.
  directional_reparam: bool = False  # DiVeQ's estimator: gradients to codewords through z_q.
  directional_reparam_variance: float = 5e-3  # Variance of DiVeQ's noise on the direction.
  orthogonal_weight: float = 0.0  # Weight of the codebook's orthogonal regularisation.
  sample_temperature: float = 0.0  # Gumbel-max code sampling in training at this tau; 0: off.
  dtype: Optional[Any] = None  # Of the outputs; None: the input's (embed: param_dtype).
  param_dtype: Any = jnp.float32  # Of the codebook and learned variances.


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoftVQOptions(VQOptions):
  """A soft VQ quantizer's options (``SoftVectorQuantizer``): ``VQOptions`` and these."""
  noise_std: float = 0.0  # Std of the white noise on z in training (z'_e).
  normalizer: str = "paper"  # One of functional.NORMALIZERS.
  variance: str = "codeword"  # sample (a log_var argument) | codeword | fixed (VARIANCES).
  log_var_init: Optional[float] = None  # Own log_var's start; None: initialize's fit.


def option_names(options_class) -> Dict[str, Any]:
  """The options of a dataclass or linen module class and their defaults
  (``dataclasses.MISSING`` where required)."""
  return {f.name: f.default for f in dataclasses.fields(options_class)
          if f.name not in ("parent", "name")}


def check_names(owner: str, options_class, given: Sequence[str]) -> None:
  """One ``TypeError`` for names in ``given`` that ``options_class`` lacks,
  listing its options and saying ours for vector-quantize-pytorch's names."""
  valid = option_names(options_class)
  unknown = sorted(set(given) - set(valid) - {"parent", "name"})
  if not unknown:
    return
  hints = [f"{name} -> {LVQ_NAMES[name]}" for name in unknown if name in LVQ_NAMES]
  hint = f" (vector-quantize-pytorch's names here: {', '.join(hints)})" if hints else ""
  raise TypeError(f"{owner}: unknown options {unknown}{hint}; the options are {sorted(valid)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FSQOptions:
  """An FSQ quantizer's options (``FSQ``)."""
  levels: Sequence[int]  # L_i per dimension, e.g. (8, 5, 5, 5) for 1000 codes.
  axis_name: Optional[str] = None  # The batch axis under shard_map / pmap; unbound: local.
  dtype: Optional[Any] = None  # Of the outputs; None: the input's (embed: float32).


@dataclasses.dataclass(frozen=True, kw_only=True)
class LFQOptions:
  """An LFQ quantizer's options (``LFQ``)."""
  dim: int  # Bits per token: 2^dim codes (at most 24).
  spherical: bool = False  # BSQ: inputs and codes on the unit sphere.
  entropy_weight: float = 0.1  # Weight of MAGVIT-v2's entropy penalty.
  diversity_gamma: float = 1.0  # Weight of the batch entropy within it.
  inv_temperature: float = 100.0  # Of the code distribution softmax(2 inv_t z . c).
  commitment: float = 0.0  # Weight of ||z - sg(code)||^2.
  axis_name: Optional[str] = None  # The batch axis under shard_map / pmap; unbound: local.
  dtype: Optional[Any] = None  # Of the outputs; None: the input's (embed: float32).


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageOptions:
  """A stack's stages (``ResidualFSQ``, ``ResidualLFQ``)."""
  num_stages: int  # Stages, each quantizing the residual at a finer scale.
  quantizer_dropout: float = 0.0  # Probability of a random number of stages in training.


class ResidualOptions(Protocol):
  """A residual stack's options (``linen.ResidualQuantizer``)."""
  stages: Sequence[Any]
  quantizer_dropout: float
