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
  nearest codeword (vector-quantize-pytorch's ``stochastic_sample_codes``).
"""

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from softvq_jax.quantizers import checks
from softvq_jax.quantizers import codebook_health as health
from softvq_jax.quantizers import core
from softvq_jax.quantizers import functional
from softvq_jax.quantizers import streaming
from softvq_jax.quantizers.options import SoftVQOptions
from softvq_jax.quantizers.options import VQOptions

Array = jax.Array
Aux = core.Aux
Variables = core.Variables
MakeRng = Callable[[], Array]


def table(opts: VQOptions, params: Variables, state: Variables) -> Array:
  """The codewords in use, ``(K, codebook_dim or d)``: normalised with ``cosine``."""
  codewords = core.codebook(opts, params, state)
  return functional.l2_normalize(codewords) if opts.cosine else codewords


def embed(opts: VQOptions, params: Variables, state: Variables, indices: Array,
          dtype: Any) -> Array:
  """The codewords of ``indices`` in z's space (through ``project_out``)."""
  codewords = core.embed(table(opts, params, state), indices, jnp.float32)
  return _project(params, "project_out", codewords).astype(dtype)


def hard_forward(opts: VQOptions, params: Variables, state: Variables, z: Array, *, train: bool,
                 make_rng: MakeRng, mask: Optional[Array] = None
                 ) -> Tuple[Array, Aux, Variables]:
  """Nearest-codeword quantization (eq. 1) with eq. (27)'s terms.

  Args:
    opts: the module's options (``options.VQOptions``).
    params, state: the module's variables (``quantizer_core``).
    z: latents, float ``(..., d)``.
    train: update the state (EMA, restarts); after ``initialize`` where the
      start reads data (``checks.check_initialized``).
    make_rng: a PRNG key, called only where randomness is used.
    mask: optional ``(...)`` booleans, False at padded positions.

  Returns:
    ``(z_q, aux, state)``; aux holds ``loss``, ``latent`` (z),
    ``codebook_loss``, ``commitment_loss``, ``indices``, ``perplexity``,
    ``usage``, with EMA ``dead_code_fraction``, with ``orthogonal_weight``
    ``orthogonal_loss``.
  """
  checks.check_initialized(opts, state, train)
  x, weights = quantizer_input(opts, params, z), functional.as_weights(mask)
  codewords = table(opts, params, state)
  x_stop = jax.lax.stop_gradient(x)
  if train and opts.sample_temperature > 0:
    indices = functional.gumbel_indices(make_rng(), x_stop, codewords, opts.sample_temperature)
  elif opts.chunk_size is None:
    indices = functional.hard_quantize(x_stop, codewords)[1]
  else:
    indices = streaming.nearest_codewords(x_stop, codewords, opts.chunk_size)[0]
  x_q = functional.lookup(codewords, indices).astype(x.dtype)
  sums = lambda: functional.index_sums(x, indices, opts.num_codewords, weights)
  state, extra = _ema(opts, state, sums, x, weights, train=train, make_rng=make_rng)
  out, aux = _outputs(opts, params, codewords, z, x, x_q, indices, weights,
                      train_codebook=opts.ema_decay is None and not opts.freeze_codebook)
  return out, {**aux, **extra}, state


def soft_forward(opts: SoftVQOptions, params: Variables, state: Variables, z: Array,
                 log_var: Optional[Array], *, train: bool, make_rng: MakeRng,
                 mask: Optional[Array] = None) -> Tuple[Array, Aux, Variables]:
  """Soft quantization by the Bayesian estimator (eqs. 5-7) with eq. (27)'s terms.

  As ``hard_forward``, with ``log_var`` (log sigma_k^2 broadcastable against
  ``(..., K)``, or None for the module's own per codeword), white noise of
  ``opts.noise_std`` on the quantizer's input in training (the paper's z'_e;
  per shard under a bound ``axis_name``), and aux ``posterior_perplexity``
  (of the average posterior) beside ``perplexity`` (of the most probable
  codewords), and ``probs`` (the posterior, without ``chunk_size``).
  """
  checks.check_initialized(opts, state, train)
  x, weights = quantizer_input(opts, params, z), functional.as_weights(mask)
  codewords = table(opts, params, state)
  x_in = x
  if train and not (isinstance(opts.noise_std, (int, float)) and opts.noise_std == 0):
    key = make_rng()
    axis = core.bound_axis(opts.axis_name)
    if axis is not None:
      key = jax.random.fold_in(key, jax.lax.axis_index(axis))
    x_in = x + opts.noise_std * jax.random.normal(key, x.shape, x.dtype)
  if log_var is None:
    log_var = core.codeword_log_var(opts, params, state)
  x_stop = jax.lax.stop_gradient(x_in)
  extra = {}
  if opts.chunk_size is None:
    logits = functional.soft_assignment_logits(x_stop, codewords, log_var, opts.normalizer)
    probs = jax.nn.softmax(logits)
    x_hat = functional.posterior_mean(probs, codewords).astype(x.dtype)
    indices = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    sums = lambda: functional.assignment_sums(x_in, probs, weights)
    posterior = probs.reshape(-1, opts.num_codewords)
    if weights is not None:
      posterior = posterior * weights.reshape(-1, 1)
    posterior_counts = jnp.sum(posterior, axis=0)
    extra["probs"] = probs.astype(z.dtype)
  else:
    x_hat, indices, lse = streaming.soft_quantize_chunked(
        x_stop, codewords, log_var, opts.normalizer, opts.chunk_size, with_indices=True)
    posterior = streaming.posterior_sums(x_stop, codewords, log_var, lse, opts.normalizer,
                                         opts.chunk_size, weights)
    sums = lambda: posterior
    posterior_counts = posterior[0]
  state, ema_aux = _ema(opts, state, sums, x_in, weights, train=train, make_rng=make_rng)
  # The codebook term trains the variances (and a codebook without EMA).
  out, aux = _outputs(opts, params, codewords, z, x_in, x_hat, indices, weights,
                      train_codebook=True)
  extra["posterior_perplexity"] = functional.perplexity(
      posterior_counts / core.total_weight(indices, weights), core.bound_axis(opts.axis_name))
  return out, {**aux, **ema_aux, **extra}, state


def module_name(opts: VQOptions) -> str:
  """The module that ``opts`` configures, for error messages."""
  return "SoftVectorQuantizer" if isinstance(opts, SoftVQOptions) else "VectorQuantizer"


def quantizer_input(opts: VQOptions, params: Variables, z: Array) -> Array:
  """What is quantized: z through ``project_in``, normalised with ``cosine``."""
  x = _project(params, "project_in", z)
  return functional.l2_normalize(x).astype(z.dtype) if opts.cosine else x


def _project(params: Variables, name: str, x: Array) -> Array:
  """``x @ kernel + bias`` of the projection ``name``, if the module has it."""
  if name not in params:
    return x
  y = jnp.matmul(functional.as_float32(x), functional.as_float32(params[name]),
                 precision=functional.PRECISION)
  return (y + params[name + "_bias"]).astype(x.dtype)


def _outputs(opts: VQOptions, params: Variables, codewords: Array, z: Array, x_in: Array,
             x_q: Array, indices: Array, weights: Optional[Array], *,
             train_codebook: bool) -> Tuple[Array, Aux]:
  """The output (straight-through or rotated, projected back), eq. (27)'s VQ
  terms and the index statistics.

  ``z`` is the downstream latent, ``x_in`` the quantizer's input (projected,
  normalised, plus noise for soft VQ); ``train_codebook`` is False when the
  codebook term would train nothing (a hard quantizer's EMA codebook).
  """
  commit = functional.commitment_loss(x_in, x_q, opts.commitment, weights)
  cb = functional.codebook_loss(x_in, x_q, weights) if train_codebook else jnp.zeros_like(commit)
  aux = {
      "loss": opts.vq_weight * (cb + commit),
      "latent": z,
      "codebook_loss": cb,
      "commitment_loss": commit,
      **core.index_statistics(indices, opts.num_codewords, opts.axis_name, weights),
      "indices": indices,
  }
  if opts.orthogonal_weight:
    aux["orthogonal_loss"] = functional.orthogonal_loss(codewords)
    aux["loss"] = aux["loss"] + opts.orthogonal_weight * aux["orthogonal_loss"]
  estimator = functional.rotation_trick if opts.rotation_trick else functional.straight_through
  out = _project(params, "project_out", estimator(x_in, x_q))
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
