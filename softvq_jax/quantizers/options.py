"""The options the pure core reads of a quantizer module, as types.

A linen module (``linen.QuantizerOptions``, ``SoftOptions``, ``FSQ``, ``LFQ``,
``ResidualQuantizer``, where each option is declared once with its default and
meaning) and its NNX namesake (which takes the same options) both satisfy these
protocols; ``core``, ``forward``, ``checks``, ``scalar`` and ``residual`` take
them as ``opts``. Error messages name ``type(opts).__name__``.
"""

from typing import Any, Optional, Protocol, Sequence


class VQOptions(Protocol):
  """A hard or soft VQ module's options (``linen.QuantizerOptions``)."""
  num_codewords: int
  commitment: float
  vq_weight: float
  ema_decay: Optional[float]
  codebook_init: str
  dead_code_threshold: float
  axis_name: Optional[str]
  chunk_size: Optional[int]
  cosine: bool
  rotation_trick: bool
  codebook_dim: Optional[int]
  orthogonal_weight: float
  dtype: Optional[Any]
  param_dtype: Any


class SoftVQOptions(VQOptions, Protocol):
  """A soft VQ module's options (``linen.SoftOptions``)."""
  noise_std: float
  normalizer: str
  variance: str
  log_var_init: Optional[float]


class FSQOptions(Protocol):
  """An FSQ module's options (``linen.FSQ``)."""
  levels: Sequence[int]
  axis_name: Optional[str]
  dtype: Optional[Any]


class LFQOptions(Protocol):
  """An LFQ module's options (``linen.LFQ``)."""
  dim: int
  spherical: bool
  entropy_weight: float
  diversity_gamma: float
  inv_temperature: float
  commitment: float
  axis_name: Optional[str]
  dtype: Optional[Any]


class ResidualOptions(Protocol):
  """A residual stack's options (``linen.ResidualQuantizer``)."""
  stages: Sequence[Any]
  quantizer_dropout: float
