"""The quantizers streamed over codebook chunks: equal to dense in values, state and
gradients, in bounded memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.quantizers import functional
from softvq_jax.quantizers import streaming
from tests.quantizers import helpers


@pytest.mark.slow
@pytest.mark.parametrize("n,k,d,chunk,normalizer", [
    (37, 50, 5, 16, "paper"),  # Both N and K padded.
    (9, 7, 3, 1024, "paper"),  # Chunk larger than K.
    (300, 96, 16, 32, "notebook"),
])
def test_chunked_equals_dense_values_and_gradients(n, k, d, chunk, normalizer):
  z, codebook, log_var, g = helpers.random_problem(n, k, d)
  dense = lambda *a: jnp.sum(functional.soft_quantize(*a, normalizer)[0] * g)
  chunked = lambda *a: jnp.sum(streaming.soft_quantize_chunked(*a, normalizer, chunk) * g)
  np.testing.assert_allclose(
      streaming.soft_quantize_chunked(z, codebook, log_var, normalizer, chunk),
      functional.soft_quantize(z, codebook, log_var, normalizer)[0], atol=2e-6, rtol=1e-5)
  for a, b in zip(jax.grad(chunked, (0, 1, 2))(z, codebook, log_var),
                  jax.grad(dense, (0, 1, 2))(z, codebook, log_var)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_chunked_leading_shape_and_log_var_shape():
  z, codebook, log_var, _ = helpers.random_problem(24, 10, 4)
  out = streaming.soft_quantize_chunked(z.reshape(2, 3, 4, 4), codebook, log_var, chunk_size=4)
  np.testing.assert_allclose(out.reshape(24, 4),
                             streaming.soft_quantize_chunked(z, codebook, log_var, chunk_size=4))
  per_latent = np.random.default_rng(1).normal(size=(2, 3, 4, 10)).astype(np.float32)
  np.testing.assert_allclose(
      streaming.soft_quantize_chunked(z.reshape(2, 3, 4, 4), codebook, per_latent, chunk_size=4),
      functional.soft_quantize(z.reshape(2, 3, 4, 4), codebook, per_latent)[0], atol=2e-6)


def test_chunked_memory_at_large_k_stays_under_1_gib():
  n, k, d = 65536, 16384, 256  # N x K float32 alone is 4 GiB.
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (k, d), (k,))]
  grad = jax.grad(lambda *a: jnp.sum(streaming.soft_quantize_chunked(*a)), argnums=(0, 1, 2))
  memory = jax.jit(grad).lower(*args).compile().memory_analysis()
  assert memory.temp_size_in_bytes < 2 ** 30


CHUNKED_CASES = [("hard", dict(ema_decay=0.9), None), ("hard", dict(), None),
                 ("soft", dict(ema_decay=0.9), None), ("soft", dict(noise_std=0.0), None),
                 ("soft", dict(variance="sample"), (3, 5, 20))]


@pytest.mark.slow
@pytest.mark.parametrize("kind,kwargs,log_var_shape", CHUNKED_CASES)
def test_chunk_size_equals_dense_in_outputs_state_and_gradients(kind, kwargs, log_var_shape):
  z = jax.random.normal(jax.random.key(0), (3, 5, 6))
  args = () if log_var_shape is None else (jax.random.normal(jax.random.key(1),
                                                             log_var_shape),)
  dense = helpers.LINEN[kind](20, **kwargs)
  chunked = dense.clone(chunk_size=7)
  variables = helpers.ready(dense, z, *args)

  def loss(params, z, module):
    (out, aux), state = module.apply({**variables, "params": params}, z, *args, train=True,
                                     mutable=["ema"])
    return jnp.sum(out * jnp.cos(z)) + aux["loss"], (aux, state)

  results = {}
  for name, module in (("dense", dense), ("chunked", chunked)):
    grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
    results[name] = grad(variables.get("params", {}), z, module)
  (g_dense, (aux_dense, state_dense)), (g_chunk, (aux_chunk, state_chunk)) = (
      results["dense"], results["chunked"])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
               g_chunk, g_dense)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
               state_chunk, state_dense)
  for key in aux_chunk:
    np.testing.assert_allclose(aux_chunk[key], aux_dense[key], rtol=1e-5, atol=1e-6)
  assert ("probs" in aux_dense) == (kind == "soft") and "probs" not in aux_chunk


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("n,k,d", [(65536, 65536, 32), (65536, 16384, 256)])
def test_chunked_modules_train_in_under_1_gib_of_temporaries(kind, n, k, d):
  module = helpers.LINEN[kind](k, ema_decay=0.99, chunk_size=2048)
  z = jax.ShapeDtypeStruct((n, d), jnp.float32)
  variables = jax.eval_shape(lambda z: module.init(helpers.PARAMS_RNG, z, train=False), z)

  def step(variables, z):
    def loss(z):
      (out, aux), state = module.apply(variables, z, train=True, mutable=["ema"])
      return jnp.sum(out) + aux["loss"], state
    return jax.grad(loss, has_aux=True)(z)

  memory = jax.jit(step).lower(variables, z).compile().memory_analysis()
  assert memory.temp_size_in_bytes < 2 ** 30
