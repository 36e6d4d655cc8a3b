"""The VQ modules' whole behaviour as pure functions, for plain JAX.

::

    from softvq_jax.quantizers import pure, VQOptions

    options = VQOptions(num_codewords=512, ema_decay=0.99, codebook_init="kmeans")
    params, state = pure.vq_init_state(jax.random.key(0), options, dim=64)
    params, state = pure.vq_initialize(jax.random.key(1), params, state, z, options=options)

    @functools.partial(jax.jit, static_argnames="options")
    def step(params, state, z, key, *, options):
      (z_q, aux, state) = pure.vq_forward(params, state, z, options=options, train=True, key=key)
      ...

``options`` is a frozen, hashable ``VQOptions`` (hard, eq. 1) or
``SoftVQOptions`` (soft, eqs. 5-7): static under ``jit``. ``params`` holds
what gradients train (the codebook without EMA, a soft quantizer's own
``log_var``, the ``codebook_dim`` projections), ``state`` what training
updates (EMA statistics, ``initialized``); ``core`` documents both. The
linen and NNX modules are these functions around their variables.
"""

from typing import Any, Optional, Tuple

import jax

from softvq_jax.quantizers import checks
from softvq_jax.quantizers import core
from softvq_jax.quantizers import forward
from softvq_jax.quantizers import functional
from softvq_jax.quantizers.options import SoftVQOptions
from softvq_jax.quantizers.options import VQOptions

Array = jax.Array
Variables = core.Variables


def vq_init_state(key: Array, options: VQOptions, dim: int) -> Tuple[Variables, Variables]:
  """``(params, state)`` of a quantizer of ``dim``-vectors; nothing read from
  data (``vq_initialize`` does that)."""
  checks.check_options(options, type(options).__name__)
  return core.init_variables(key, options, dim)


def vq_initialize(key: Array, params: Variables, state: Variables, z: Array, *,
                  options: VQOptions,
                  mask: Optional[Array] = None) -> Tuple[Variables, Variables]:
  """``(params, state)`` started from the batch ``z`` ``(..., d)`` (the
  codebook of ``codebook_init`` "data" / "kmeans", a soft quantizer's
  variance fit); unchanged when the start reads no data. Under
  ``shard_map`` it reads every shard's ``z`` over ``axis_name``."""
  checks.check_input(options, z, None)
  checks.check_mask(options, z, mask)
  if core.needs_data(options):
    checks.check_axis_name(forward.module_name(options), options.axis_name,
                           "the data initialisation")
  x = forward.quantizer_input(options, params, z)
  return core.initialize(options, params, state, x, key, weights=functional.as_weights(mask))


def vq_forward(params: Variables, state: Variables, z: Array, *, options: VQOptions,
               train: bool, key: Optional[Array] = None, mask: Optional[Array] = None,
               log_var: Optional[Array] = None) -> Tuple[Array, core.Aux, Variables]:
  """Quantize ``z`` ``(..., d)``: ``(z_q, aux, new_state)`` as the modules'
  calls (``linen.VectorQuantizer`` / ``SoftVectorQuantizer`` document aux).

  ``key`` is drawn on only where randomness is used (soft VQ's noise, dead
  code restarts, ``sample_temperature``); ``log_var`` is the per-sample
  log sigma^2 of a soft quantizer with ``variance="sample"``. In training
  the state comes back updated; outside, unchanged.
  """
  checks.check_input(options, z, None)
  checks.check_mask(options, z, mask)
  keys = iter(jax.random.split(key, 3)) if key is not None else None

  def make_rng():
    if keys is None:
      raise ValueError(f"{forward.module_name(options)}: this call draws random numbers "
                       "(noise, restarts or sampling); pass key")
    return next(keys)

  if isinstance(options, SoftVQOptions):
    checks.check_log_var(options, z, log_var)
    return forward.soft_forward(options, params, state, z, log_var, train=train, mask=mask,
                                make_rng=make_rng)
  return forward.hard_forward(options, params, state, z, train=train, mask=mask,
                              make_rng=make_rng)


def vq_embed(params: Variables, state: Variables, indices: Array, *, options: VQOptions,
             dtype: Optional[Any] = None) -> Array:
  """The codewords of integer ``indices`` ``(...)`` in z's space, ``(..., d)`` in
  ``dtype`` (default ``options.dtype or param_dtype``)."""
  return forward.embed(options, params, state, indices,
                       dtype or options.dtype or options.param_dtype)
