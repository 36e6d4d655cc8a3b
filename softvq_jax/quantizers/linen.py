"""Quantizers for any Flax linen model, over the pure core of ``quantizer_core``.

``VectorQuantizer`` (eq. 1) and ``SoftVectorQuantizer`` (eqs. 5-7) take a
given ``z`` of shape ``(..., d)``: ``(z, *, train) -> (z_q, aux)``, with
``embed(indices)`` back to codewords; so do ``FSQ``, ``LFQ`` (codebook-free,
``scalar_quantization``) and ``ResidualQuantizer`` (over a stack of any of
them, ``residual``). ``softvq_jax.quantizers.nnx`` has the same modules for Flax NNX.
The paper's ``model.bottlenecks.VQ`` and ``model.bottlenecks.SoftVQ`` own an encoder head and
call the same functions (``linen_hard_forward``, ``linen_soft_forward``), so
that the codebook of either lives directly under the module
(``"codebook"``).

A codebook starts at TF1's unit scaling (``codebook_init="uniform"``, the
authors' choice), at the first K encodings (``"data"``) or at k-means
centres of the encodings (``"kmeans"``). The library's modules take those
encodings from the first training batch (``mutable=['ema']`` then holds the
initialisation, so that it happens once and a restored state does not redo
it); ``init`` reads its batch for shapes only. The paper's layers read the
batch they are initialised on. A codebook is trained by gradient, or
follows exponential moving averages in the ``'ema'`` collection
(``ema_decay``), whose dead codewords can restart (``dead_code_threshold``).
"""

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.quantizers import checks
from softvq_jax.quantizers import core
from softvq_jax.quantizers import forward as fwd
from softvq_jax.quantizers import residual as rq
from softvq_jax.quantizers import scalar as sq

Array = jax.Array
Aux = core.Aux
STATE = "ema"  # The collection of a quantizer's state (quantizer_core's docstring).


def linen_hard_forward(module: nn.Module, z: Array, *, train: bool, first_batch: bool = True,
                       mask: Optional[Array] = None) -> Tuple[Array, Aux]:
  """``forward.hard_forward`` on the module's variables.

  ``first_batch``: data-dependent initialisation on the first training
  batch; False (the paper's layers) reads it from the batch ``init`` sees.
  """
  checks.check_mask(module, z, mask)
  params, state = _variables(module, z, soft=False, first_batch=first_batch)
  out, aux, new_state = fwd.hard_forward(module, params, state, z, train=train, mask=mask,
                                         make_rng=lambda: module.make_rng("noise"))
  _store(module, new_state, train)
  return out, aux


def linen_soft_forward(module: nn.Module, z: Array, log_var: Optional[Array], *,
                       train: bool, first_batch: bool = True,
                       mask: Optional[Array] = None) -> Tuple[Array, Aux]:
  """``forward.soft_forward`` on the module's variables: ``log_var``
  from the caller (``variance="sample"``), else the module's own."""
  checks.check_log_var(module, z, log_var)
  checks.check_mask(module, z, mask)
  params, state = _variables(module, z, soft=True, first_batch=first_batch)
  out, aux, new_state = fwd.soft_forward(module, params, state, z, log_var, train=train,
                                         mask=mask, make_rng=lambda: module.make_rng("noise"))
  _store(module, new_state, train)
  return out, aux


def linen_embed(module: nn.Module, indices: Array) -> Array:
  """The codewords of integer ``indices`` ``(...)``: ``(..., d)`` in the
  module's ``dtype`` (``param_dtype`` when that is None); see
  ``core.checked_indices`` for indices out of range."""
  return fwd.embed(module, module.variables.get("params", {}), module.variables.get(STATE, {}),
                   indices, module.dtype or module.param_dtype)


def _variables(module: nn.Module, z: Array, *, soft: bool, first_batch: bool):
  """The module's ``(params, state)``, created on first use (``quantizer_core``)."""
  existing = module.get_variable("params", "project_in" if module.codebook_dim else "codebook",
                                 module.get_variable(STATE, "codebook"))
  checks.check_input(module, z, None if existing is None else (
      existing.shape[0] if module.codebook_dim else existing.shape[-1]))
  k, d = module.num_codewords, z.shape[-1]
  c = module.codebook_dim or d
  params, state = {}, {}
  if module.codebook_dim:
    for name, shape in (("project_in", (d, c)), ("project_out", (c, d))):
      params[name] = module.param(name, nn.initializers.lecun_normal(), shape,
                                  module.param_dtype)
      params[name + "_bias"] = module.param(name + "_bias", nn.initializers.zeros, shape[1:],
                                            module.param_dtype)
  x = fwd.quantizer_input(module, params, z)  # What an initialisation reads.
  lazy = first_batch and core.needs_first_batch(module, soft)
  init = core.uniform_unit_scaling if lazy else _codebook_initializer(module, x)
  if module.ema_decay is None:
    params["codebook"] = module.param("codebook", init, (k, c), module.param_dtype)
  else:
    init_rng = module.make_rng("params") if module.is_initializing() else None
    start = functools.lru_cache(lambda: core.ema_state(init(init_rng, (k, c))))
    for name in ("cluster_size", "embed_sum", "codebook"):
      state[name] = module.variable(STATE, name, lambda n=name: start()[n]).value
  if soft and core.learns_log_var(module):
    if module.log_var_init is not None:
      log_var_init = nn.initializers.constant(module.log_var_init)
    elif lazy:
      log_var_init = nn.initializers.zeros
    else:
      log_var_init = nn.initializers.constant(
          core.fit_log_var(x, fwd.table(module, params, state), module.chunk_size))
    params["log_var"] = module.param("log_var", log_var_init, (k,), module.param_dtype)
  if lazy:
    for name, make in core.first_batch_state(module, c, soft).items():
      rng = module.make_rng("params") if module.is_initializing() else None
      state[name] = module.variable(STATE, name, make, rng).value
  return params, state


def _codebook_initializer(module: nn.Module, z: Array):
  """The initialiser of a codebook read from the initialisation batch ``z``."""
  if module.codebook_init == "uniform":
    return core.uniform_unit_scaling
  return lambda rng, shape, dtype=jnp.float32: core.data_codebook(
      module.codebook_init, rng, z, shape[0], module.chunk_size).astype(dtype)


def _store(module: nn.Module, state: core.Variables, train: bool) -> None:
  if not train or not state:
    return
  if not module.is_mutable_collection(STATE):
    raise ValueError(f"training {type(module).__name__} updates its {STATE!r} collection "
                     f"(EMA statistics, first-batch initialisation): apply with "
                     f"mutable=[{STATE!r}] (or train=False)")
  for name, value in state.items():
    module.put_variable(STATE, name, value)


class QuantizerOptions(nn.Module, kw_only=True):
  """The keyword-only options of every quantizer module (their docstrings)."""
  commitment: float = 0.25  # beta of eq. (27).
  vq_weight: float = 1.0  # Scale of eq. (27)'s VQ terms.
  ema_decay: Optional[float] = None  # EMA codebook decay in (0, 1); None: trained by gradient.
  codebook_init: str = "uniform"  # One of core.CODEBOOK_INITS.
  dead_code_threshold: float = 0.0  # EMA count under which a codeword restarts; 0: off.
  axis_name: Optional[str] = None  # The batch axis under shard_map / pmap; unbound: local.
  chunk_size: Optional[int] = None  # Codewords per streamed chunk (large K); None: dense.
  cosine: bool = False  # l2-normalised inputs and codewords (cosine-similarity codebook).
  rotation_trick: bool = False  # Gradients through the rotation (Fifty et al.), not copied.
  codebook_dim: Optional[int] = None  # Quantize in a learned projection to this size.
  orthogonal_weight: float = 0.0  # Weight of the codebook's orthogonal regularisation.
  dtype: Optional[Any] = None  # Of the outputs; None: the input's (embed: param_dtype).
  param_dtype: Any = jnp.float32  # Of the codebook and learned variances.

  def __post_init__(self):
    checks.check_options(self, soft=isinstance(self, SoftOptions))
    super().__post_init__()


class SoftOptions(QuantizerOptions, kw_only=True):
  """``QuantizerOptions`` and the soft quantizer's own."""
  noise_std: float = 0.0  # Std of the white noise on z in training (z'_e).
  normalizer: str = "paper"  # One of functional.NORMALIZERS.
  variance: str = "codeword"  # sample (a log_var argument) | codeword | fixed (VARIANCES).
  log_var_init: Optional[float] = None  # Own log_var's start; None: the first batch's fit.


class VectorQuantizer(QuantizerOptions):
  """Nearest-codeword quantization of a given ``z`` (eq. 1), straight-through.

  ``(z, *, train) -> (z_q, aux)`` for float ``z`` of shape ``(..., d)`` (``d``
  is read from ``z``; e.g. a tokenizer's ``(B, H, W, d)`` grid), with aux
  ``loss`` (eq. 27's VQ terms), ``indices``, ``perplexity`` (of the indices),
  ``usage`` and, with an EMA codebook, ``dead_code_fraction``.
  ``embed(indices)`` maps indices back to codewords.

  State in the ``'ema'`` collection, updated in training (apply with
  ``mutable=['ema']``, which is checked): the EMA codebook (``ema_decay``),
  whose codewords with an EMA count under ``dead_code_threshold`` restart at
  random encodings of the batch (``'noise'`` rng), and a data initialisation
  (``codebook_init``) done on the first training batch.

  ``axis_name``: under ``shard_map``/``pmap`` EMA statistics, usage,
  perplexity and the initialisation's data are combined over it; outside
  any map the same module uses local statistics. ``chunk_size`` streams
  over the codebook (``softvq_jax.quantizers.streaming``): no ``(N, K)`` temporaries.
  Arithmetic is float32 whatever ``z``'s dtype; outputs come in ``dtype``
  (default: ``z``'s).
  """
  num_codewords: int

  @nn.compact
  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, Aux]:
    return linen_hard_forward(self, z.astype(self.dtype or z.dtype), train=train, mask=mask)

  def embed(self, indices: Array) -> Array:
    return linen_embed(self, indices)


class SoftVectorQuantizer(SoftOptions):
  """Soft quantization of a given ``z`` by the Bayesian estimator, eqs. (5)-(7).

  ``(z, log_var=None, *, train) -> (z_hat, aux)``, as ``VectorQuantizer``.
  log sigma_k^2 is learned per codeword (``variance="codeword"``), held at
  the first training batch's fit (``"fixed"``; ``log_var_init`` sets a start
  for either instead), or given by the caller's head as ``log_var``
  broadcastable against ``(..., K)`` (``"sample"``). In training,
  ``noise_std`` white noise is added to ``z`` first (the paper's z'_e; each
  shard draws its own under ``axis_name``). With ``ema_decay`` the EMA
  statistics are weighted by the float32 posterior, and eq. (27)'s codebook
  term still trains the variances.

  Two perplexities, both exp(entropy) of an average over the batch: aux
  ``perplexity`` is that of the most probable codewords (one-hot), the
  number tokenizers report; ``posterior_perplexity`` that of the average
  posterior, which stays high when every posterior is flat even if all
  tokens pick one codeword. aux ``probs`` is the posterior (not with
  ``chunk_size``, which never builds it).
  """
  num_codewords: int

  @nn.compact
  def __call__(self, z: Array, log_var: Optional[Array] = None, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, Aux]:
    return linen_soft_forward(self, z.astype(self.dtype or z.dtype), log_var, train=train,
                              mask=mask)

  def embed(self, indices: Array) -> Array:
    return linen_embed(self, indices)


class FSQ(nn.Module):
  """Finite scalar quantization (Mentzer et al. 2024; ``scalar.fsq``).

  ``(z, *, train) -> (codes, aux)`` for ``z`` of shape ``(..., len(levels))``:
  each dimension bounded to its ``levels`` and rounded, straight-through;
  no parameters, no state, no auxiliary loss (``aux["loss"]`` is 0). aux
  ``indices`` (``[0, prod(levels))``), ``perplexity``, ``usage`` (over
  ``axis_name`` where bound). ``embed(indices)`` gives the grid points.
  """
  levels: Sequence[int]  # L_i per dimension, e.g. (8, 5, 5, 5) for 1000 codes.
  axis_name: Optional[str] = None  # The batch axis under shard_map / pmap; unbound: local.
  dtype: Optional[Any] = None  # Of the outputs; None: the input's (embed: float32).

  def __post_init__(self):
    sq.check_levels(self.levels)
    super().__post_init__()

  def __call__(self, z: Array, *, train: bool) -> Tuple[Array, Aux]:
    del train  # FSQ is the same in training and evaluation.
    return sq.fsq_call(self, z)

  def embed(self, indices: Array) -> Array:
    return sq.fsq_embed(self, indices)


class LFQ(nn.Module):
  """Lookup-free quantization (MAGVIT-v2), or BSQ with ``spherical``
  (``scalar.lfq``).

  ``(z, *, train) -> (codes, aux)`` for ``z`` of shape ``(..., dim)``: the
  sign of each dimension, straight-through, ``2^dim`` codes. ``aux["loss"]``
  is ``entropy_weight * (per-sample entropy - diversity_gamma * batch
  entropy)`` (in training) plus ``commitment * ||z - sg(code)||^2``; aux
  ``per_sample_entropy``, ``batch_entropy``, ``commitment_loss``,
  ``indices``, ``perplexity``, ``usage``. ``embed(indices)`` gives the codes.
  """
  dim: int  # Bits per token: 2^dim codes (at most 24).
  spherical: bool = False  # BSQ: inputs and codes on the unit sphere.
  entropy_weight: float = 0.1  # Weight of MAGVIT-v2's entropy penalty.
  diversity_gamma: float = 1.0  # Weight of the batch entropy within it.
  inv_temperature: float = 100.0  # Of the code distribution softmax(2 inv_t z . c).
  commitment: float = 0.0  # Weight of ||z - sg(code)||^2.
  axis_name: Optional[str] = None  # The batch axis under shard_map / pmap; unbound: local.
  dtype: Optional[Any] = None  # Of the outputs; None: the input's (embed: float32).

  def __post_init__(self):
    sq.check_lfq_dim(self)
    super().__post_init__()

  def __call__(self, z: Array, *, train: bool) -> Tuple[Array, Aux]:
    return sq.lfq_call(self, z, train)

  def embed(self, indices: Array) -> Array:
    return sq.lfq_embed(self, indices)


class ResidualQuantizer(nn.Module):
  """Residual quantization over ``stages`` (``softvq_jax.quantizers.residual``).

  ``ResidualQuantizer([VectorQuantizer(1024) for _ in range(4)])`` (or soft
  ones, FSQ, LFQ, mixed): ``(z, *, train) -> (z_q, aux)``, stage ``s``
  quantizing what the earlier ones left. aux ``loss`` (summed), ``indices``
  ``(..., num_stages)``, ``perplexity`` / ``usage`` / ``residual_norms`` per
  stage, ``active_stages``. ``quantizer_dropout``: the probability that a
  training batch uses a random number of stages, 1 to all (SoundStream;
  ``'noise'`` rng; dropped stages give index -1). ``embed(indices)`` sums
  the stages' codewords. The stages' state (EMA, first-batch
  initialisation) is in their ``'ema'`` collections.
  """
  stages: Sequence[nn.Module]
  quantizer_dropout: float = 0.0  # Probability of a random number of stages in training.

  def __post_init__(self):
    rq.check_stages(self)
    super().__post_init__()

  def __call__(self, z: Array, *, train: bool) -> Tuple[Array, Aux]:
    rng = (self.make_rng("noise") if train and self.quantizer_dropout > 0 else None)
    active = rq.num_active_stages(rng, len(self.stages), self.quantizer_dropout)
    calls = [functools.partial(stage, train=train) for stage in self.stages]
    return rq.residual_forward(calls, z, active)

  def embed(self, indices: Array) -> Array:
    return rq.residual_embed([stage.embed for stage in self.stages], indices)
