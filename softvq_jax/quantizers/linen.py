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
centres of the encodings (``"kmeans"``). The library's modules read those
encodings in ``initialize``, an explicit step before training::

    _, variables = vq.apply(variables, z, method="initialize", mutable=True,
                            rngs={"params": key})

``init`` never reads data (whatever its ``train``), and a training call
before ``initialize`` is an error. ``params["codebook"]`` is then the
codebook in use. The paper's layers read the batch they are initialised
on. A codebook is trained by gradient, or follows exponential moving
averages in the ``'ema'`` collection (``ema_decay``), whose dead codewords
can restart (``dead_code_threshold``).
"""

import dataclasses
import functools
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.quantizers import checks
from softvq_jax.quantizers import core
from softvq_jax.quantizers import forward as fwd
from softvq_jax.quantizers import grouped
from softvq_jax.quantizers import heads
from softvq_jax.quantizers import pure
from softvq_jax.quantizers import residual as rq
from softvq_jax.quantizers.linen_base import NamedOptions
from softvq_jax.quantizers.linen_base import OptionsModule
from softvq_jax.quantizers.linen_base import dropout_rng
from softvq_jax.quantizers.linen_base import options_base
from softvq_jax.quantizers.linen_scalar import FSQ  # noqa: F401 (the linen modules' home)
from softvq_jax.quantizers.linen_scalar import LFQ  # noqa: F401
from softvq_jax.quantizers.linen_scalar import ResidualFSQ  # noqa: F401
from softvq_jax.quantizers.linen_scalar import ResidualLFQ  # noqa: F401
from softvq_jax.quantizers.options import SoftVQOptions
from softvq_jax.quantizers.options import VQOptions

Array = jax.Array
Aux = core.Aux
STATE = "ema"  # The collection of a quantizer's state (quantizer_core's docstring).


def linen_hard_forward(module: nn.Module, z: Array, *, train: bool, first_batch: bool = True,
                       mask: Optional[Array] = None) -> Tuple[Array, Aux]:
  """``forward.hard_forward`` on the module's variables.

  ``first_batch``: a data start waits for ``initialize`` (the library's
  modules); False (the paper's layers) reads it from the batch ``init`` sees.
  """
  checks.check_mask(module, z, mask)
  params, state = _variables(module, z, first_batch=first_batch)
  train = train and not module.is_initializing()  # init reads shapes only.
  out, aux, new_state = fwd.hard_forward(module.options, params, state, z, train=train,
                                         mask=mask, make_rng=lambda: module.make_rng("noise"))
  _store(module, state, new_state, train)
  return out, aux


def linen_soft_forward(module: nn.Module, z: Array, log_var: Optional[Array], *,
                       train: bool, first_batch: bool = True,
                       mask: Optional[Array] = None) -> Tuple[Array, Aux]:
  """``forward.soft_forward`` on the module's variables: ``log_var``
  from the caller (``variance="sample"``), else the module's own."""
  checks.check_log_var(module.options, z, log_var)
  checks.check_mask(module, z, mask)
  params, state = _variables(module, z, first_batch=first_batch)
  train = train and not module.is_initializing()  # init reads shapes only.
  out, aux, new_state = fwd.soft_forward(module.options, params, state, z, log_var,
                                         train=train, mask=mask,
                                         make_rng=lambda: module.make_rng("noise"))
  _store(module, state, new_state, train)
  return out, aux


def linen_initialize(module: nn.Module, z: Array, mask: Optional[Array]) -> None:
  """``pure.vq_initialize`` on the module's variables, written back (apply
  with ``mutable=True`` and a ``'params'`` rng)."""
  z = jnp.asarray(z)
  z = z.astype(module.dtype or z.dtype)
  if module.is_initializing() or not core.needs_data(module.options):
    return
  params = dict(module.variables.get("params", {}))
  state = dict(module.variables.get(STATE, {}))
  if "initialized" not in state:
    raise ValueError(f"{type(module).__name__}.initialize: apply it to variables from init")
  checks.check_input(module, z, _input_dim(module))
  for collection in ("params", STATE):
    if not module.is_mutable_collection(collection):
      raise ValueError(f"{type(module).__name__}.initialize writes the codebook and state: "
                       "apply it with mutable=True")
  new_params, new_state = pure.vq_initialize(module.make_rng("params"), params, state, z,
                                             options=module.options, mask=mask)
  for collection, values in (("params", new_params), (STATE, new_state)):
    for name, value in values.items():
      module.put_variable(collection, name, value)


def linen_embed(module: nn.Module, indices: Array, dtype=None) -> Array:
  """The codewords of integer ``indices`` ``(...)`` (``(..., heads)`` with
  heads): ``(..., d)`` in ``dtype`` (pass the call's, e.g. ``z.dtype``;
  default: the module's ``dtype``, else ``param_dtype``); see
  ``functional.lookup`` for indices out of range."""
  return fwd.embed(module.options, module.variables.get("params", {}),
                   module.variables.get(STATE, {}), indices,
                   dtype or module.dtype or module.param_dtype)


def _variables(module: nn.Module, z: Array, *, first_batch: bool):
  """The module's ``(params, state)``, created on first use (``core``): the
  paper's layers (not ``first_batch``) start a data codebook from the batch
  ``init`` sees; the library's modules wait for ``initialize``."""
  checks.check_input(module, z, _input_dim(module))
  opts = module.options
  d = z.shape[-1]
  shape = heads.table_shape(opts, core.code_dim(opts, d))
  params, state = {}, {}
  for name, kernel in core.projection_shapes(opts, d).items():
    params[name] = module.param(name, nn.initializers.lecun_normal(), kernel, module.param_dtype)
    params[name + "_bias"] = module.param(name + "_bias", nn.initializers.zeros, kernel[1:],
                                          module.param_dtype)
  x = fwd.quantizer_input(opts, params, z)  # What an initialisation reads.
  lazy = first_batch and core.needs_data(opts)
  init_rng = (module.make_rng("params") if module.is_initializing()
              and (module.ema_decay is not None or module.codebook_transform) else None)
  if module.codebook_transform:
    state["frozen_codebook"] = module.variable(
        STATE, "frozen_codebook", core.frozen_codebook, init_rng, shape, module.param_dtype).value
    params["codebook_transform"] = module.param("codebook_transform", core.transform_init,
                                                shape, module.param_dtype)
  else:
    init = core.uniform_unit_scaling if lazy else _codebook_initializer(module, x)
    if module.ema_decay is None:
      params["codebook"] = module.param("codebook", init, shape, module.param_dtype)
    else:
      start = functools.lru_cache(lambda: core.ema_state(init(init_rng, shape)))
      for name in ("cluster_size", "embed_sum", "codebook"):
        state[name] = module.variable(STATE, name, lambda n=name: start()[n]).value
  if isinstance(opts, SoftVQOptions) and core.learns_log_var(opts):
    if module.log_var_init is not None:
      log_var_init = nn.initializers.constant(module.log_var_init)
    elif lazy:
      log_var_init = nn.initializers.zeros
    else:
      log_var_init = nn.initializers.constant(core.start_log_var(
          opts, _rows(opts, x), fwd.table(opts, params, state)))
    params["log_var"] = module.param("log_var", log_var_init, shape[:-1], module.param_dtype)
  if lazy:
    state["initialized"] = module.variable(STATE, "initialized", jnp.zeros, (), bool).value
  return params, state


def _rows(opts, x: Array) -> Array:
  """The quantizer's input ``(..., [heads,] c)`` as rows ``(N, [heads,] c)``."""
  return x.reshape((-1,) + x.shape[x.ndim - 1 - (opts.heads > 1):])


def _input_dim(module: nn.Module) -> Optional[int]:
  """The size of z that existing variables were made for (None before init)."""
  params, state = module.variables.get("params", {}), module.variables.get(STATE, {})
  if "project_in" in params:
    return params["project_in"].shape[0]
  table = params.get("codebook", state.get("codebook", state.get("frozen_codebook")))
  return None if table is None else table.shape[-1] * module.heads


def _codebook_initializer(module: nn.Module, x: Array):
  """The initialiser of a codebook read from the initialisation batch ``x``
  (the quantizer's input)."""
  if module.codebook_init == "uniform":
    return core.uniform_unit_scaling
  opts = module.options
  return lambda rng, shape, dtype=jnp.float32: core.start_codebook(
      opts, rng, _rows(opts, x)).astype(dtype)


def _store(module: nn.Module, old: core.Variables, state: core.Variables, train: bool) -> None:
  """Writes the entries of ``state`` that the training call changed."""
  state = {name: value for name, value in state.items() if value is not old.get(name)}
  if not train or not state:
    return
  if not module.is_mutable_collection(STATE):
    raise ValueError(f"training {type(module).__name__} updates its {STATE!r} collection "
                     f"(EMA statistics): apply with "
                     f"mutable=[{STATE!r}] (or train=False)")
  for name, value in state.items():
    module.put_variable(STATE, name, value)


class _VQOptions(OptionsModule):
  """Checks the options of a VQ module at construction."""

  def __post_init__(self):
    checks.check_options(self.options, type(self).__name__)
    super().__post_init__()


QuantizerOptions = options_base("QuantizerOptions", _VQOptions, [VQOptions], ["num_codewords"])
SoftOptions = options_base("SoftOptions", QuantizerOptions, [SoftVQOptions], ["num_codewords"])


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
  random encodings of the batch (``'noise'`` rng), and ``initialized``: a
  data start (``codebook_init``) is ``initialize(z)``, before training.

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

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Start the codebook from the batch ``z`` (``linen_initialize``)."""
    linen_initialize(self, z, mask)

  def embed(self, indices: Array, dtype=None) -> Array:
    return linen_embed(self, indices, dtype)


class SoftVectorQuantizer(SoftOptions):
  """Soft quantization of a given ``z`` by the Bayesian estimator, eqs. (5)-(7).

  ``(z, log_var=None, *, train) -> (z_hat, aux)``, as ``VectorQuantizer``.
  log sigma_k^2 is learned per codeword (``variance="codeword"``), held at
  ``initialize``'s fit (``"fixed"``; ``log_var_init`` sets a start
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

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Start the codebook and variances from the batch ``z`` (``linen_initialize``)."""
    linen_initialize(self, z, mask)

  def embed(self, indices: Array, dtype=None) -> Array:
    return linen_embed(self, indices, dtype)


class SimVQ(VectorQuantizer):
  """SimVQ (Zhu et al., "Addressing Representation Collapse in Vector
  Quantized Models with One Linear Layer", 2024): the codebook is a frozen
  random one (N(0, 1/c) entries, the ``'ema'`` collection's
  ``frozen_codebook``) times a learned ``(c, c)`` map (the parameter
  ``codebook_transform``), so every codeword moves with each step of the
  map and none is left dead.

  ``VectorQuantizer`` with ``codebook_transform=True`` and, as in
  vector-quantize-pytorch's ``SimVQ``, ``rotation_trick=True`` by default;
  eq. (27)'s codebook term trains the map and ``commitment`` (0.25) the
  encoder. A soft SimVQ is ``SoftVectorQuantizer(K, codebook_transform=True)``.
  """
  codebook_transform: bool = dataclasses.field(default=True, kw_only=True)
  rotation_trick: bool = dataclasses.field(default=True, kw_only=True)


class ResidualQuantizer(NamedOptions, nn.Module):
  """Residual quantization over ``stages`` (``softvq_jax.quantizers.residual``).

  ``ResidualQuantizer([VectorQuantizer(1024) for _ in range(4)])`` (or soft
  ones, FSQ, LFQ, mixed): ``(z, *, train) -> (z_q, aux)``, stage ``s``
  quantizing what the earlier ones left. aux ``loss`` (summed), ``indices``
  ``(..., num_stages)``, ``perplexity`` / ``usage`` / ``residual_norms`` per
  stage, ``active_stages``. ``quantizer_dropout``: the probability that a
  training batch uses a random number of stages, 1 to all (SoundStream;
  ``'noise'`` rng; dropped stages give index -1). ``embed(indices)`` sums
  the stages' codewords. The stages' state (EMA,
  ``initialized``) is in their ``'ema'`` collections; ``initialize(z)``
  starts them in turn.
  """
  stages: Sequence[nn.Module]
  quantizer_dropout: float = 0.0  # Probability of a random number of stages in training.

  def __post_init__(self):
    rq.check_stages(self)
    super().__post_init__()

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, Aux]:
    active = rq.num_active_stages(dropout_rng(self, train), len(self.stages),
                                  self.quantizer_dropout)
    calls = [functools.partial(stage, train=train, mask=mask) for stage in self.stages]
    return rq.residual_forward(calls, z, active, mask)

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Each stage's ``initialize`` on the residual the earlier stages leave."""
    rq.residual_initialize([functools.partial(stage.initialize, mask=mask)
                            for stage in self.stages],
                           [functools.partial(stage, train=False, mask=mask)
                            for stage in self.stages], z)

  def embed(self, indices: Array) -> Array:
    return rq.residual_embed([stage.embed for stage in self.stages], indices)


class GroupedResidualQuantizer(NamedOptions, nn.Module):
  """Grouped quantization (``softvq_jax.quantizers.grouped``): z's last axis
  split into ``len(groups)`` equal parts, part ``g`` quantized by
  ``groups[g]``, typically a ``ResidualQuantizer`` (vector-quantize-pytorch's
  ``GroupedResidualVQ``) but any quantizer of this package.

  ``GroupedResidualQuantizer([ResidualQuantizer([VectorQuantizer(1024) for _
  in range(4)]) for _ in range(2)])``: ``(z, *, train, mask=None) -> (z_q,
  aux)``, aux ``loss`` (summed), ``indices`` ``(..., num_stages, groups)``
  and each group's statistics stacked ``(groups, ...)``; ``embed(indices)``
  concatenates the groups' codewords; ``initialize(z)`` starts each group
  on its part.
  """
  groups: Sequence[nn.Module]

  def __call__(self, z: Array, *, train: bool,
               mask: Optional[Array] = None) -> Tuple[Array, Aux]:
    grouped.check_groups(self, z.shape[-1])
    return grouped.grouped_forward(
        [functools.partial(group, train=train, mask=mask) for group in self.groups], z)

  def initialize(self, z: Array, *, mask: Optional[Array] = None) -> None:
    """Each group's ``initialize`` on its part of ``z``."""
    grouped.check_groups(self, z.shape[-1])
    for group, part in zip(self.groups, grouped.split(z, len(self.groups))):
      group.initialize(part, mask=mask)

  def embed(self, indices: Array) -> Array:
    return grouped.grouped_embed([group.embed for group in self.groups], indices)
