"""The quantizer modules as a user drops them into a model: first-batch
initialisation, one module in every context, randomness, dtypes and
indices, perplexities, large K, linen/NNX parity, bad input."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import bottlenecks as bn
from softvq_jax import nnx as vq_nnx
from softvq_jax import quantizers

LINEN = {"hard": quantizers.VectorQuantizer, "soft": quantizers.SoftVectorQuantizer}
NNX = {"hard": vq_nnx.VectorQuantizer, "soft": vq_nnx.SoftVectorQuantizer}
RNGS = {"params": jax.random.key(0)}


def _clustered(n=256, k=8, d=4, seed=0):
  rng = np.random.default_rng(seed)
  centres = 5.0 * rng.normal(size=(k, d))
  return (centres[rng.integers(0, k, n)] + 0.1 * rng.normal(size=(n, d))).astype(np.float32)


def _train(module, variables, z, **kwargs):
  (out, aux), state = module.apply(variables, z, train=True, mutable=["ema"], **kwargs)
  return out, aux, {**variables, **state}


def _codebook(variables):
  if "codebook" in variables["ema"]:
    return variables["ema"]["codebook"]
  return variables["params"]["codebook"] + variables["ema"].get("codebook_offset", 0.0)


@pytest.mark.parametrize("kind,kwargs", [("hard", dict(codebook_init="kmeans")),
                                         ("hard", dict(codebook_init="data")),
                                         ("soft", dict(codebook_init="kmeans")),
                                         ("soft", dict(codebook_init="kmeans", chunk_size=3))])
def test_data_init_happens_on_the_first_training_batch_once(kind, kwargs):
  module = LINEN[kind](8, **kwargs)
  variables = module.init(RNGS, jnp.zeros((2, 3, 3, 4)), train=False)  # A dummy batch.
  assert not variables["ema"]["initialized"]
  z = _clustered()
  _, _, first = _train(module, variables, z)
  assert first["ema"]["initialized"]
  table = np.asarray(_codebook(first))
  assert len(np.unique(table, axis=0)) == 8
  if kwargs["codebook_init"] == "kmeans":  # Every cluster gets a codeword.
    assert float(jnp.mean(jnp.min(bn.squared_distances(z, table), -1))) < 0.1
  else:
    np.testing.assert_allclose(table, z[:8], atol=1e-6)
  if kind == "soft":  # The variance fit of this batch, not of the dummy one.
    log_var = first["params"]["log_var"] + first["ema"]["log_var_offset"]
    assert np.all(np.asarray(log_var) > np.log(1e-3))
  # A second batch (or a restored state) does not initialise again.
  _, _, second = _train(module, first, _clustered(seed=1) + 100.0)
  for name in ("codebook_offset", "log_var_offset"):
    if name in first["ema"]:
      np.testing.assert_array_equal(second["ema"][name], first["ema"][name])


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_a_first_batch_with_fewer_distinct_vectors_than_k_gives_k_distinct_codewords(kind):
  module = LINEN[kind](16, codebook_init="kmeans", ema_decay=0.9)
  z = jnp.tile(jnp.eye(4)[:3], (10, 1))  # 3 distinct vectors.
  variables = module.init(RNGS, z, train=False)
  _, _, trained = _train(module, variables, z)
  assert len(np.unique(np.asarray(trained["ema"]["codebook"]), axis=0)) == 16


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_an_unbound_axis_name_means_local_statistics(kind):
  z = _clustered(64)
  plain = LINEN[kind](8, ema_decay=0.9, codebook_init="kmeans")
  named = plain.clone(axis_name="data")
  variables = named.init(RNGS, z, train=False)
  ours = _train(named, variables, z)
  theirs = _train(plain, variables, z)
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)
  jax.tree.map(np.testing.assert_array_equal, named.apply(ours[2], z, train=False),
               plain.apply(ours[2], z, train=False))


def test_each_shard_draws_its_own_noise():
  module = quantizers.SoftVectorQuantizer(4, noise_std=1.0, axis_name="data", commitment=1.0)
  z = jnp.zeros((4, 6, 3))  # 4 shards of the same latents.
  variables = module.init(RNGS, z[0], train=False)

  def shard(z):
    _, aux = module.apply(variables, z, train=True, mutable=["ema"],
                          rngs={"noise": jax.random.key(5)})[0]
    return aux["commitment_loss"]  # Depends on the noise drawn.

  losses = jax.vmap(shard, axis_name="data")(z)
  assert len(set(np.asarray(losses).tolist())) == 4


def test_no_rng_is_needed_where_nothing_is_random():
  z = _clustered(32)
  for module in (quantizers.SoftVectorQuantizer(8), quantizers.VectorQuantizer(8, ema_decay=0.9),
                 quantizers.SoftVectorQuantizer(8, codebook_init="kmeans")):
    _train(module, module.init(RNGS, z, train=False), z)
  noisy = quantizers.SoftVectorQuantizer(8, noise_std=0.1)
  with pytest.raises(Exception, match="noise"):
    _train(noisy, noisy.init(RNGS, z, train=False), z)


def test_bfloat16_statistics_come_from_the_float32_posterior():
  z = jnp.asarray(_clustered(128), jnp.bfloat16)
  module = quantizers.SoftVectorQuantizer(8, ema_decay=0.5, log_var_init=0.0,
                                          dtype=jnp.bfloat16)
  variables = module.init(RNGS, z, train=False)
  z_hat, aux, trained = _train(module, variables, z)
  z32 = np.asarray(z, np.float32)
  table = np.asarray(variables["ema"]["codebook"], np.float64)
  logits = -0.5 * np.sum((z32[:, None] - table[None]) ** 2, -1)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  expected = 0.5 * np.asarray(variables["ema"]["embed_sum"]) + 0.5 * probs.T @ z32
  np.testing.assert_allclose(trained["ema"]["embed_sum"], expected, rtol=1e-5, atol=1e-5)
  assert z_hat.dtype == jnp.bfloat16
  assert module.apply(trained, aux["indices"], method=module.embed).dtype == jnp.bfloat16


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_embed_rejects_concrete_out_of_range_indices_and_clamps_traced_ones(kind):
  module = LINEN[kind](8)
  variables = module.init(RNGS, jnp.ones((3, 4)), train=False)
  embed = functools.partial(module.apply, variables, method=module.embed)
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 8\)"):
    embed(jnp.array([0, 8]))
  with pytest.raises(TypeError, match="integer indices"):
    embed(jnp.array([0.0]))
  clamped = jax.jit(embed)(jnp.array([-3, 0, 7, 99]))
  table = variables["params"]["codebook"]
  np.testing.assert_array_equal(clamped, table[np.array([0, 0, 7, 7])])


def test_soft_perplexities_of_the_tokens_and_of_the_average_posterior():
  module = quantizers.SoftVectorQuantizer(64, log_var_init=10.0)  # Flat posteriors.
  z = jnp.full((32, 4), 0.01)  # Every token picks the same codeword.
  _, aux = module.apply(module.init(RNGS, z, train=False), z, train=False)
  assert float(aux["perplexity"]) == pytest.approx(1.0)
  assert float(aux["posterior_perplexity"]) > 60.0


CHUNKED_CASES = [("hard", dict(ema_decay=0.9), None), ("hard", dict(), None),
                 ("soft", dict(ema_decay=0.9), None), ("soft", dict(noise_std=0.0), None),
                 ("soft", dict(variance="sample"), (3, 5, 20))]


@pytest.mark.slow
@pytest.mark.parametrize("kind,kwargs,log_var_shape", CHUNKED_CASES)
def test_chunk_size_equals_dense_in_outputs_state_and_gradients(kind, kwargs, log_var_shape):
  z = jax.random.normal(jax.random.key(0), (3, 5, 6))
  args = () if log_var_shape is None else (jax.random.normal(jax.random.key(1),
                                                             log_var_shape),)
  dense = LINEN[kind](20, **kwargs)
  chunked = dense.clone(chunk_size=7)
  variables = dense.init(RNGS, z, *args, train=False)

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
  module = LINEN[kind](k, ema_decay=0.99, chunk_size=2048)
  z = jax.ShapeDtypeStruct((n, d), jnp.float32)
  variables = jax.eval_shape(lambda z: module.init(RNGS, z, train=False), z)

  def step(variables, z):
    def loss(z):
      (out, aux), state = module.apply(variables, z, train=True, mutable=["ema"])
      return jnp.sum(out) + aux["loss"], state
    return jax.grad(loss, has_aux=True)(z)

  memory = jax.jit(step).lower(variables, z).compile().memory_analysis()
  assert memory.temp_size_in_bytes < 2 ** 30


@pytest.mark.parametrize("kind,kwargs", [
    ("hard", dict(ema_decay=0.9, codebook_init="kmeans")),
    ("soft", dict(ema_decay=0.9, codebook_init="data")),
    ("soft", dict(chunk_size=3, commitment=0.5))])
def test_nnx_and_linen_agree_on_outputs_and_state_updates(kind, kwargs):
  z = jnp.asarray(_clustered(48, d=6))
  linen = LINEN[kind](10, **kwargs)
  variables = linen.init(RNGS, z, train=False)
  module = NNX[kind](10, 6, rngs=nnx.Rngs(0), **kwargs)
  for collection, values in variables.items():
    for name, value in values.items():
      getattr(module, name).set_value(value)
  step = nnx.jit(lambda module, z: module(z, train=True))
  for _ in range(2):  # The first-batch initialisation, then a plain step.
    out, aux, variables = jax.jit(functools.partial(_train, linen))(variables, z)
    out_nnx, aux_nnx = step(module, z)
    np.testing.assert_allclose(out_nnx, out, rtol=1e-6, atol=1e-6)
    for key in aux:
      np.testing.assert_allclose(aux_nnx[key], aux[key], rtol=1e-6, atol=1e-6)
    for name, value in variables["ema"].items():  # Updated in place under nnx.jit.
      np.testing.assert_allclose(getattr(module, name).get_value(), value, rtol=1e-6, atol=1e-6)
  indices = aux["indices"]
  np.testing.assert_array_equal(module.embed(indices),
                                linen.apply(variables, indices, method=linen.embed))


@pytest.mark.parametrize("build,error,message", [
    (lambda: quantizers.VectorQuantizer(0), ValueError, "num_codewords must be a positive integer"),
    (lambda: quantizers.SoftVectorQuantizer(8, chunk_size=0), ValueError, "chunk_size"),
    (lambda: quantizers.VectorQuantizer(8, ema_decay=1.5), ValueError, "ema_decay"),
    (lambda: quantizers.SoftVectorQuantizer(8, noise_std=-1.0), ValueError, "noise_std"),
    (lambda: quantizers.SoftVectorQuantizer(8, variance="per_pixel"), ValueError, "variance"),
    (lambda: vq_nnx.VectorQuantizer(8, 0, rngs=nnx.Rngs(0)), ValueError, "dim must be"),
    (lambda: vq_nnx.VectorQuantizer(8, 4, rngs=nnx.Rngs(0), decay=0.9), TypeError,
     "unknown options"),
    (lambda: vq_nnx.SoftVectorQuantizer(8, 4, rngs=nnx.Rngs(0), chunk_size=-2), ValueError,
     "chunk_size"),
])
def test_bad_options_are_one_error_at_construction(build, error, message):
  with pytest.raises(error, match=message):
    build()


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_bad_inputs_are_one_error_naming_the_argument(kind):
  module = LINEN[kind](8)
  variables = module.init(RNGS, jnp.ones((3, 4)), train=False)
  with pytest.raises(ValueError, match="last dimension must be the codeword size 4"):
    module.apply(variables, jnp.ones((3, 5)), train=False)
  with pytest.raises(TypeError, match="floating-point"):
    module.apply(variables, jnp.ones((3, 4), jnp.int32), train=False)
  nnx_module = NNX[kind](8, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="last dimension must be the codeword size 4"):
    nnx_module(jnp.ones((3, 5)), train=False)
  if kind == "soft":
    sampled = module.clone(variance="sample")
    with pytest.raises(ValueError, match="does not broadcast"):
      sampled.init(RNGS, jnp.ones((3, 4)), jnp.ones((3, 7)), train=False)
