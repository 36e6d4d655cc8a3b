"""The forward passes of the VQ modules: pure functions of ``(params, state,
z)`` returning ``(z_q, aux, new_state)``, with the options of
``options.VQOptions`` / ``SoftVQOptions`` read from ``opts``.

Beside eq. (1) (hard) and eqs. (5)-(7) (soft) with eq. (27)'s terms:

* ``codebook_dim``: z is projected to ``codebook_dim`` by ``project_in``
  before quantization and back by ``project_out`` after (the codebook lives
  in the low-dimensional space; Yu et al., "Vector-quantized Image Modeling
  with Improved VQGAN", 2022, Sec. 3.2);
* ``cosine``: z and the codewords are l2-normalised (the same paper);
* ``rotation_trick``: ``functional.rotation_trick`` instead of the
  straight-through estimator;
* ``orthogonal_weight``: ``functional.orthogonal_loss`` of the codebook;
* ``mask``: a ``(...)`` boolean argument; False (padded) positions are kept
  out of the losses, the EMA statistics, usage, perplexities, ``initialize``
  and dead-code restarts. Their outputs are still quantized;
* ``freeze_codebook``: the codebook gets no gradient and no EMA update;
* ``sample_temperature`` (hard VQ): in training the index is drawn by the
  Gumbel-max trick from softmax(-||z - mu_k||^2 / tau) instead of the
  nearest codeword (vector-quantize-pytorch's ``stochastic_sample_codes``);
* ``heads``, ``separate_codebook_per_head``: each vector quantized in
  ``heads`` parts (``heads``), indices ``(..., heads)``;
* ``codebook_transform``: SimVQ's codebook, a frozen random one times a
  learned map (``core.codebook``);
* ``directional_reparam`` (hard VQ): DiVeQ's estimator
  (``functional.directional_reparam``) in training, in place of eq. (27)'s
  terms: the codewords learn through the output's gradient.

Each forward pass splits into the part that sees one codebook (``_hard_codes``,
``_soft_codes``: codes, EMA step, index statistics), mapped over heads with
separate codebooks, and the part around it (projections, losses, estimator).
"""

import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from softvq_jax.quantizers import checks
from softvq_jax.quantizers import codebook_health as health
from softvq_jax.quantizers import core
from softvq_jax.quantizers import functional
from softvq_jax.quantizers import heads
from softvq_jax.quantizers import streaming
from softvq_jax.quantizers.options import SoftVQOptions
from softvq_jax.quantizers.options import VQOptions

Array = jax.Array
Aux = core.Aux
Variables = core.Variables
MakeRng = Callable[[], Array]


def table(opts: VQOptions, params: Variables, state: Variables) -> Array:
  """The codewords in use, ``([heads,] K, c)``: normalised with ``cosine``."""
  codewords = core.codebook(opts, params, state)
  return functional.l2_normalize(codewords) if opts.cosine else codewords


def embed(opts: VQOptions, params: Variables, state: Variables, indices: Array,
          dtype: Any) -> Array:
  """The codewords of ``indices`` ``(...)`` (``(..., heads)`` with heads) in
  z's space (through ``project_out``)."""
  codewords = table(opts, params, state)
  if opts.heads > 1 and jnp.shape(indices)[-1:] != (opts.heads,):
    raise ValueError(f"{module_name(opts)}: indices need a last axis of {opts.heads} heads, "
                     f"got shape {jnp.shape(indices)}")
  if heads.separate(opts):
    indices = functional.checked_indices(indices, opts.num_codewords)
    vectors = jax.vmap(lambda t, i: core.embed(t, i, jnp.float32), in_axes=(0, -1),
                       out_axes=-2)(codewords, indices)
  else:
    vectors = core.embed(codewords, indices, jnp.float32)
  return _project(params, "project_out", heads.merge(opts, vectors)).astype(dtype)


def hard_forward(opts: VQOptions, params: Variables, state: Variables, z: Array, *, train: bool,
                 make_rng: MakeRng, mask: Optional[Array] = None
                 ) -> Tuple[Array, Aux, Variables]:
  """Nearest-codeword quantization (eq. 1) with eq. (27)'s terms.

  Args:
    opts: the module's options (``options.VQOptions``).
    params, state: the module's variables (``core``).
    z: latents, float ``(..., d)``.
    train: update the state (EMA, restarts); after ``initialize`` where the
      start reads data (``checks.check_initialized``).
    make_rng: a PRNG key, called only where randomness is used.
    mask: optional ``(...)`` booleans, False at padded positions.

  Returns:
    ``(z_q, aux, state)``; aux holds ``loss``, ``latent`` (z),
    ``codebook_loss``, ``commitment_loss``, ``indices``, ``perplexity``,
    ``usage``, with EMA ``dead_code_fraction``, with ``orthogonal_weight``
    ``orthogonal_loss`` (statistics per head with separate codebooks).
  """
  checks.check_initialized(opts, state, train)
  x = quantizer_input(opts, params, z)
  weights = heads.head_weights(opts, functional.as_weights(mask))
  codewords = table(opts, params, state)
  step = functools.partial(_hard_codes, opts, train=train)
  draws = train and opts.sample_temperature > 0
  x_q, indices, (codes_state, statistics, extra) = heads.map_codebooks(
      opts, step, (codewords, _codebook_state(state)), x, (weights,), make_rng,
      draws=draws or _restarts(opts, train))
  out, aux = _outputs(opts, params, codewords, z, x, x_q, weights, train=train,
                      make_rng=make_rng, statistics={**statistics, "indices": indices},
                      train_codebook=opts.ema_decay is None and not opts.freeze_codebook)
  return out, {**aux, **extra}, {**state, **codes_state}


def _hard_codes(opts: VQOptions, codewords: Array, state: Variables, x: Array,
                weights: Optional[Array], make_rng: MakeRng, *, train: bool):
  """One codebook's part of ``hard_forward``: ``(x_q, indices, (state,
  statistics, aux))``. Non-finite latents get index -1 and a NaN output and
  stay out of the state and statistics (``_finite``)."""
  x_stop = jax.lax.stop_gradient(x)
  if train and opts.sample_temperature > 0:
    indices = functional.gumbel_indices(make_rng(), x_stop, codewords, opts.sample_temperature)
  elif opts.chunk_size is None:
    indices = functional.hard_quantize(x_stop, codewords)[1]
  else:
    indices = streaming.nearest_codewords(x_stop, codewords, opts.chunk_size)[0]
  indices, finite = functional.mark_nonfinite(x_stop, indices)
  x_q = functional.codewords_of(codewords, indices, finite, x.dtype)
  x_safe, w_safe, aux = _finite(opts, x, finite, weights)
  sums = lambda: functional.index_sums(x_safe, indices, opts.num_codewords, w_safe)
  state, ema_aux = _ema(opts, state, sums, x_safe, w_safe, train=train, make_rng=make_rng)
  statistics = core.index_statistics(indices, opts.num_codewords, opts.axis_name, w_safe)
  return x_q, indices, (state, statistics, {**ema_aux, **aux})


def _finite(opts: VQOptions, x: Array, finite: Array, weights: Optional[Array]):
  """``(x_safe, w_safe, aux)``: the latents with non-finite rows at zero,
  weights zero there (so that the EMA state, restarts and statistics skip
  them), and ``nonfinite_rows``, how many rows (of nonzero weight) were."""
  x_safe = jnp.where(finite[..., None], x, jnp.zeros_like(x))
  skipped = jnp.sum(functional.finite_weights(~finite, weights) > 0, dtype=jnp.float32)
  axis = core.bound_axis(opts.axis_name)
  if axis is not None:
    skipped = jax.lax.psum(skipped, axis)
  return x_safe, functional.finite_weights(finite, weights), {"nonfinite_rows": skipped}


def soft_forward(opts: SoftVQOptions, params: Variables, state: Variables, z: Array,
                 log_var: Optional[Array], *, train: bool, make_rng: MakeRng,
                 mask: Optional[Array] = None) -> Tuple[Array, Aux, Variables]:
  """Soft quantization by the Bayesian estimator (eqs. 5-7) with eq. (27)'s terms.

  As ``hard_forward``, with ``log_var`` (log sigma_k^2 broadcastable against
  ``(..., [heads,] K)``, or None for the module's own per codeword), white
  noise of ``opts.noise_std`` on the quantizer's input in training (the
  paper's z'_e; per shard under a bound ``axis_name``), and aux
  ``posterior_perplexity`` (of the average posterior) beside ``perplexity``
  (of the most probable codewords), and ``probs`` (the posterior
  ``(..., [heads,] K)``, without ``chunk_size``).
  """
  checks.check_initialized(opts, state, train)
  x = quantizer_input(opts, params, z)
  weights = heads.head_weights(opts, functional.as_weights(mask))
  codewords = table(opts, params, state)
  x_in = x
  if train and not (isinstance(opts.noise_std, (int, float)) and opts.noise_std == 0):
    key = make_rng()
    axis = core.bound_axis(opts.axis_name)
    if axis is not None:
      key = jax.random.fold_in(key, jax.lax.axis_index(axis))
    x_in = x + opts.noise_std * jax.random.normal(key, x.shape, x.dtype)
  own = core.codeword_log_var(opts, params, state) if log_var is None else None
  if log_var is not None and heads.separate(opts):
    log_var = jnp.broadcast_to(log_var, x.shape[:-1] + (opts.num_codewords,))
  step = functools.partial(_soft_codes, opts, train=train)
  x_hat, indices, (codes_state, statistics, extra) = heads.map_codebooks(
      opts, step, (codewords, own, _codebook_state(state)), x_in, (weights, log_var), make_rng,
      draws=_restarts(opts, train))
  if heads.separate(opts) and "probs" in extra:
    extra["probs"] = jnp.moveaxis(extra["probs"], 0, -2)
  # The codebook term trains the variances (and a codebook without EMA).
  out, aux = _outputs(opts, params, codewords, z, x_in, x_hat, weights, train=train,
                      make_rng=make_rng, statistics={**statistics, "indices": indices},
                      train_codebook=True)
  return out, {**aux, **extra}, {**state, **codes_state}


def _soft_codes(opts: SoftVQOptions, codewords: Array, own_log_var: Optional[Array],
                state: Variables, x_in: Array, weights: Optional[Array],
                log_var: Optional[Array], make_rng: MakeRng, *, train: bool):
  """One codebook's part of ``soft_forward``: ``(x_hat, indices, (state,
  statistics, aux))``, with the codebook's own ``log_var`` or the rows'
  (exactly one is given)."""
  log_var = own_log_var if log_var is None else log_var
  finite = functional.finite_rows(jax.lax.stop_gradient(x_in))
  x_safe, w_safe, nonfinite = _finite(opts, x_in, finite, weights)
  x_stop = jax.lax.stop_gradient(x_safe)
  extra = {}
  if opts.chunk_size is None:
    logits = functional.soft_assignment_logits(x_stop, codewords, log_var, opts.normalizer)
    probs = jax.nn.softmax(logits)
    x_hat = functional.posterior_mean(probs, codewords).astype(x_in.dtype)
    indices = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    sums = lambda: functional.assignment_sums(x_safe, probs, w_safe)
    posterior = probs.reshape(-1, opts.num_codewords) * w_safe.reshape(-1, 1)
    posterior_counts = jnp.sum(posterior, axis=0)
    extra["probs"] = jnp.where(finite[..., None], probs, jnp.nan).astype(x_in.dtype)
  else:
    x_hat, indices, lse = streaming.soft_quantize_chunked(
        x_stop, codewords, log_var, opts.normalizer, opts.chunk_size, with_indices=True)
    posterior = streaming.posterior_sums(x_stop, codewords, log_var, lse, opts.normalizer,
                                         opts.chunk_size, w_safe)
    sums = lambda: posterior
    posterior_counts = posterior[0]
  indices = jnp.where(finite, indices, -1)
  x_hat = jnp.where(finite[..., None], x_hat, jnp.nan).astype(x_in.dtype)
  state, aux = _ema(opts, state, sums, x_safe, w_safe, train=train, make_rng=make_rng)
  statistics = core.index_statistics(indices, opts.num_codewords, opts.axis_name, w_safe)
  extra["posterior_perplexity"] = functional.perplexity(
      posterior_counts / core.total_weight(indices, w_safe), core.bound_axis(opts.axis_name))
  return x_hat, indices, (state, statistics, {**aux, **extra, **nonfinite})


def _codebook_state(state: Variables) -> Variables:
  """The state that a codebook's step reads and updates (its EMA statistics)."""
  return {name: state[name] for name in ("cluster_size", "embed_sum", "codebook")
          if name in state}


def _restarts(opts: VQOptions, train: bool) -> bool:
  """Whether a training step restarts dead codewords (and so draws a key)."""
  return (train and opts.ema_decay is not None and opts.dead_code_threshold > 0
          and not opts.freeze_codebook)


def module_name(opts: VQOptions) -> str:
  """The module that ``opts`` configures, for error messages."""
  return "SoftVectorQuantizer" if isinstance(opts, SoftVQOptions) else "VectorQuantizer"


def quantizer_input(opts: VQOptions, params: Variables, z: Array) -> Array:
  """What is quantized: z through ``project_in``, split into ``heads``
  (``(..., [heads,] c)``), normalised with ``cosine``."""
  core.code_dim(opts, z.shape[-1])
  x = heads.split(opts, _project(params, "project_in", z))
  return functional.l2_normalize(x).astype(z.dtype) if opts.cosine else x


def _project(params: Variables, name: str, x: Array) -> Array:
  """``x @ kernel + bias`` of the projection ``name``, if the module has it."""
  if name not in params:
    return x
  y = jnp.matmul(functional.as_float32(x), functional.as_float32(params[name]),
                 precision=functional.PRECISION)
  return (y + params[name + "_bias"]).astype(x.dtype)


def _outputs(opts: VQOptions, params: Variables, codewords: Array, z: Array, x_in: Array,
             x_q: Array, weights: Optional[Array], *, train: bool, make_rng: MakeRng,
             statistics: Aux, train_codebook: bool) -> Tuple[Array, Aux]:
  """The output (straight-through, rotated or DiVeQ's, projected back) and
  eq. (27)'s VQ terms, with the codes' ``statistics`` after them.

  ``z`` is the downstream latent, ``x_in`` the quantizer's input (projected,
  normalised, plus noise for soft VQ; ``(..., [heads,] c)``);
  ``train_codebook`` is False when the codebook term would train nothing (a
  hard quantizer's EMA codebook). DiVeQ's estimator replaces both terms.
  """
  commit = functional.commitment_loss(x_in, x_q, opts.commitment, weights)
  if opts.directional_reparam:
    commit = jnp.zeros_like(commit)
  cb = (functional.codebook_loss(x_in, x_q, weights)
        if train_codebook and not opts.directional_reparam else jnp.zeros_like(commit))
  aux = {"loss": opts.vq_weight * (cb + commit), "latent": z, "codebook_loss": cb,
         "commitment_loss": commit, **statistics}
  if opts.orthogonal_weight:
    aux["orthogonal_loss"] = jnp.mean(jnp.vectorize(
        functional.orthogonal_loss, signature="(k,c)->()")(codewords))
    aux["loss"] = aux["loss"] + opts.orthogonal_weight * aux["orthogonal_loss"]
  if opts.rotation_trick:
    x_out = functional.rotation_trick(x_in, x_q)
  elif opts.directional_reparam and train:
    x_out = functional.directional_reparam(make_rng(), x_in, x_q,
                                           opts.directional_reparam_variance)
  else:
    x_out = functional.straight_through(x_in, x_q)
  out = _project(params, "project_out", heads.merge(opts, x_out))
  return out.astype(z.dtype), aux


def _ema(opts: VQOptions, state: Variables, sums: Callable[[], Tuple[Array, Array]], z: Array,
         weights: Optional[Array], *, train: bool,
         make_rng: MakeRng) -> Tuple[Variables, Aux]:
  """In training, the EMA codebook step from ``sums()`` (the assignments'
  counts and sums of ``z``) and the restart of dead codewords at rows of
  ``z`` (of nonzero ``weights``).

  Returns the new state and ``dead_code_fraction`` for EMA codebooks (the
  fraction whose EMA count is under ``dead_code_threshold``, or under one
  assignment per step when that is 0), before the restart.
  """
  if opts.ema_decay is None:
    return state, {}
  if train and not opts.freeze_codebook:
    checks.check_axis_name(module_name(opts), opts.axis_name, "the EMA codebook's update")
  axis = core.bound_axis(opts.axis_name)
  threshold = opts.dead_code_threshold
  dead = health.dead_codes(state["cluster_size"], threshold if threshold > 0 else 1.0)
  aux = {"dead_code_fraction": jnp.mean(dead)}
  if not train or opts.freeze_codebook:
    return state, aux
  size, embed_sum, codewords = functional.ema_codebook_step(
      state["cluster_size"], state["embed_sum"], *sums(), opts.ema_decay, axis_name=axis)
  if threshold > 0:
    rows = z if weights is None else core.weighted_first(
        z.reshape(-1, z.shape[-1]), weights)[2]
    codewords = health.restart_dead_codes(make_rng(), codewords, dead, rows, axis)
    size = jnp.where(dead, threshold, size)
    embed_sum = jnp.where(dead[:, None], codewords * threshold, embed_sum)
  return dict(state, cluster_size=size, embed_sum=embed_sum, codebook=codewords), aux
