"""The plain-JAX functions of ``pure`` are the modules' whole behaviour: the same outputs and
state as linen, typed static options, and the options new in this round."""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers
from softvq_jax.quantizers import functional
from softvq_jax.quantizers import nnx as vq_nnx
from softvq_jax.quantizers import pure
from tests.quantizers import helpers


@pytest.mark.parametrize("options", [
    quantizers.VQOptions(num_codewords=8, ema_decay=0.9, codebook_init="kmeans"),
    quantizers.SoftVQOptions(num_codewords=8, codebook_init="data", commitment=0.5),
])
def test_pure_functions_match_the_linen_module(options):
  z = jnp.asarray(helpers.clustered(64, d=4))
  fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
  module_class = (quantizers.SoftVectorQuantizer if isinstance(options, quantizers.SoftVQOptions)
                  else quantizers.VectorQuantizer)
  module = module_class(**fields)
  assert module.options == options and hash(module.options) == hash(options)
  variables = helpers.ready(module, z)
  params, state = pure.vq_init_state(jax.random.key(0), options, dim=4)
  params, state = pure.vq_initialize(jax.random.key(0), params, state, z, options=options)
  # The k-means draws come from different keys: start both from the module's.
  params = dict(params, **variables.get("params", {}))
  state = dict(variables["ema"])
  step = jax.jit(pure.vq_forward, static_argnames=("options", "train"))
  out, aux, new_state = step(params, state, z, options=options, train=True)
  ref_out, ref_aux, ref = helpers.train(module, variables, z)
  np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
  for key in ("loss", "perplexity", "indices"):
    np.testing.assert_allclose(aux[key], ref_aux[key], rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6), new_state,
               ref["ema"])
  np.testing.assert_allclose(pure.vq_embed(params, new_state, aux["indices"], options=options),
                             module.apply(ref, aux["indices"], method=module.embed), atol=1e-6)


def test_gradients_over_the_params_and_no_integer_state():
  options = quantizers.SoftVQOptions(num_codewords=8, codebook_init="kmeans")
  z = jnp.asarray(helpers.clustered(32))
  params, state = pure.vq_init_state(jax.random.key(0), options, dim=4)
  params, state = pure.vq_initialize(jax.random.key(1), params, state, z, options=options)
  assert all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves(params))
  assert all(not jnp.issubdtype(x.dtype, jnp.integer) for x in jax.tree.leaves(state))
  grads = jax.grad(lambda p: pure.vq_forward(p, state, z, options=options, train=True)[1]["loss"])(
      params)
  assert set(grads) == {"codebook", "log_var"}
  assert float(jnp.abs(grads["codebook"]).sum()) > 0


def test_lookup_raises_on_concrete_out_of_range_indices_and_clamps_traced_ones():
  codebook = jnp.arange(12.0).reshape(4, 3)
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
    functional.lookup(codebook, jnp.array([4 + 5, -1]))
  rows = jax.jit(functional.lookup)(codebook, jnp.array([9, -1]))
  np.testing.assert_array_equal(rows, codebook[np.array([3, 0])])  # Never NaN, never wrapped.


def test_embed_follows_the_dtype_option_or_an_argument():
  q = vq_nnx.VectorQuantizer(8, 4, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  z_q, aux = q(jnp.ones((3, 4), jnp.bfloat16), train=False)
  assert q.embed(aux["indices"]).dtype == z_q.dtype == jnp.bfloat16
  plain = vq_nnx.VectorQuantizer(8, 4, rngs=nnx.Rngs(0))
  assert plain.embed(aux["indices"], dtype=jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_a_frozen_codebook_gets_no_gradient_and_no_ema_update(kind):
  z = jnp.asarray(helpers.clustered(64))
  for kwargs in (dict(ema_decay=0.9), dict()):
    module = helpers.LINEN[kind](8, freeze_codebook=True, log_var_init=0.0, **kwargs) if (
        kind == "soft") else helpers.LINEN[kind](8, freeze_codebook=True, **kwargs)
    variables = helpers.ready(module, z)
    _, _, trained = helpers.train(module, variables, z)
    jax.tree.map(np.testing.assert_array_equal, trained, variables)
    if "codebook" in variables.get("params", {}):
      grad = jax.grad(lambda p: module.apply({**variables, "params": p}, z, train=True,
                                             mutable=["ema"])[0][1]["loss"])(variables["params"])
      assert float(jnp.abs(grad["codebook"]).max()) == 0.0


@pytest.mark.slow
def test_kmeans_iters_sets_the_lloyd_iterations_of_the_start():
  z = jax.random.uniform(jax.random.key(4), (512, 3))  # No clusters: Lloyd steps matter.
  inertia = {}
  for iters in (1, 25):
    module = quantizers.VectorQuantizer(16, codebook_init="kmeans", kmeans_iters=iters)
    table = helpers.codebook_of(helpers.ready(module, z))
    inertia[iters] = float(jnp.mean(jnp.min(functional.squared_distances(z, table), -1)))
  assert inertia[25] < inertia[1]


def test_sample_temperature_draws_codes_in_training_only():
  z = jax.random.normal(jax.random.key(0), (4096, 4))
  module = quantizers.VectorQuantizer(16, sample_temperature=10.0)
  variables = module.init(helpers.PARAMS_RNG, z, train=False)
  z_q, aux, _ = helpers.train(module, variables, z, rngs={"noise": jax.random.key(1)})
  nearest = module.apply(variables, z, train=False)[1]["indices"]
  drawn = np.asarray(aux["indices"])
  assert 0.0 < np.mean(drawn != np.asarray(nearest)) < 1.0
  np.testing.assert_allclose(z_q, module.apply(variables, drawn, method=module.embed), atol=1e-6)
  # At a tiny temperature the draw is the nearest codeword (the Gumbel-max trick).
  cold = module.clone(sample_temperature=1e-6)
  cold_indices = helpers.train(cold, variables, z, rngs={"noise": jax.random.key(1)})[1]
  np.testing.assert_array_equal(cold_indices["indices"], nearest)
