"""The one core under every VQ module: the data start (``initialize``), statistics over an
axis or local, randomness, dtypes, indices, perplexities."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers
from softvq_jax.quantizers import functional
from tests.quantizers import helpers


@pytest.mark.parametrize("kind,kwargs", [("hard", dict(codebook_init="kmeans")),
                                         ("hard", dict(codebook_init="data")),
                                         ("soft", dict(codebook_init="kmeans")),
                                         ("soft", dict(codebook_init="kmeans", chunk_size=3))])
@pytest.mark.slow
def test_initialize_starts_the_codebook_from_its_batch_and_training_never_again(kind, kwargs):
  module = helpers.LINEN[kind](8, **kwargs)
  # init on a dummy batch reads its shape only, whatever train says.
  variables = module.init(helpers.PARAMS_RNG, jnp.zeros((2, 3, 3, 4)), train=True)
  assert not variables["ema"]["initialized"]
  z = helpers.clustered()
  first = helpers.initialize(module, variables, z)
  assert first["ema"]["initialized"]
  table = np.asarray(helpers.codebook_of(first))
  assert len(np.unique(table, axis=0)) == 8
  if kwargs["codebook_init"] == "kmeans":  # Every cluster gets a codeword.
    assert float(jnp.mean(jnp.min(functional.squared_distances(z, table), -1))) < 0.1
  else:
    np.testing.assert_allclose(table, z[:8], atol=1e-6)
  if kind == "soft":  # The variance fit of this batch, not of the dummy one.
    assert np.all(np.asarray(first["params"]["log_var"]) > np.log(1e-3))
  # The parameter is the codebook in use (issue 35, item 2): embed reads it back exactly.
  np.testing.assert_array_equal(module.apply(first, jnp.arange(8), method=module.embed),
                                first["params"]["codebook"])
  # Training changes no parameter: a batch far away starts nothing.
  _, _, second = helpers.train(module, first, helpers.clustered(seed=1) + 100.0)
  np.testing.assert_array_equal(second["params"]["codebook"], first["params"]["codebook"])


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.slow
def test_a_dummy_init_leaves_the_first_real_batch_to_initialize(kind, train):
  # The repro of issue 35, item 1: init(..., train=True) on a batch of ones.
  module = helpers.LINEN[kind](64, ema_decay=0.99, codebook_init="kmeans")
  variables = module.init(helpers.PARAMS_RNG, jnp.ones((4, 8)), train=train)
  assert not variables["ema"]["initialized"]
  z = jax.random.normal(jax.random.key(3), (512, 8))
  started = helpers.initialize(module, variables, z)
  reference = helpers.initialize(module, module.init(helpers.PARAMS_RNG, z, train=False), z)
  jax.tree.map(np.testing.assert_array_equal, started, reference)
  _, aux, _ = helpers.train(module, started, z, rngs={"noise": jax.random.key(1)})
  assert float(aux["perplexity"]) > 40.0


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_training_before_initialize_is_an_error_eagerly_and_under_jit(kind):
  module = helpers.LINEN[kind](8, codebook_init="kmeans")
  z = helpers.clustered(32)
  variables = module.init(helpers.PARAMS_RNG, z, train=False)
  with pytest.raises(ValueError, match="training before initialize"):
    helpers.train(module, variables, z)
  with pytest.raises(Exception, match="training before initialize"):
    jax.block_until_ready(jax.jit(functools.partial(helpers.train, module))(variables, z))
  helpers.train(module, helpers.initialize(module, variables, z), z)  # Then it trains.
  module.apply(variables, z, train=False)  # Evaluation needs no start.


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.slow
def test_a_first_batch_with_fewer_distinct_vectors_than_k_gives_k_distinct_codewords(kind):
  module = helpers.LINEN[kind](16, codebook_init="kmeans", ema_decay=0.9)
  z = jnp.tile(jnp.eye(4)[:3], (10, 1))  # 3 distinct vectors.
  trained = helpers.ready(module, z)
  assert len(np.unique(np.asarray(trained["ema"]["codebook"]), axis=0)) == 16


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_an_unbound_axis_name_means_local_statistics(kind):
  z = helpers.clustered(64)
  plain = helpers.LINEN[kind](8, ema_decay=0.9, codebook_init="kmeans")
  named = plain.clone(axis_name="data")
  variables = helpers.ready(named, z)
  ours = helpers.train(named, variables, z)
  theirs = helpers.train(plain, variables, z)
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)
  jax.tree.map(np.testing.assert_array_equal, named.apply(ours[2], z, train=False),
               plain.apply(ours[2], z, train=False))


@pytest.mark.slow
def test_each_shard_draws_its_own_noise():
  module = quantizers.SoftVectorQuantizer(4, noise_std=1.0, axis_name="data", commitment=1.0,
                                          log_var_init=0.0)
  z = jnp.zeros((4, 6, 3))  # 4 shards of the same latents.
  variables = module.init(helpers.PARAMS_RNG, z[0], train=False)

  def shard(z):
    _, aux = module.apply(variables, z, train=True, mutable=["ema"],
                          rngs={"noise": jax.random.key(5)})[0]
    return aux["commitment_loss"]  # Depends on the noise drawn.

  losses = jax.vmap(shard, axis_name="data")(z)
  assert len(set(np.asarray(losses).tolist())) == 4


def test_no_rng_is_needed_where_nothing_is_random():
  z = helpers.clustered(32)
  for module in (quantizers.SoftVectorQuantizer(8), quantizers.VectorQuantizer(8, ema_decay=0.9),
                 quantizers.SoftVectorQuantizer(8, codebook_init="kmeans")):
    helpers.train(module, helpers.ready(module, z), z)
  noisy = quantizers.SoftVectorQuantizer(8, noise_std=0.1)
  with pytest.raises(Exception, match="noise"):
    helpers.train(noisy, helpers.ready(noisy, z), z)


def test_bfloat16_statistics_come_from_the_float32_posterior():
  z = jnp.asarray(helpers.clustered(128), jnp.bfloat16)
  module = quantizers.SoftVectorQuantizer(8, ema_decay=0.5, log_var_init=0.0,
                                          dtype=jnp.bfloat16)
  variables = module.init(helpers.PARAMS_RNG, z, train=False)
  z_hat, aux, trained = helpers.train(module, variables, z)
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
  module = helpers.LINEN[kind](8)
  variables = module.init(helpers.PARAMS_RNG, jnp.ones((3, 4)), train=False)
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
  _, aux = module.apply(module.init(helpers.PARAMS_RNG, z, train=False), z, train=False)
  assert float(aux["perplexity"]) == pytest.approx(1.0)
  assert float(aux["posterior_perplexity"]) > 60.0


def test_soft_log_var_is_an_argument_or_fitted_by_initialize():
  x = jax.random.normal(jax.random.key(0), (6, 4))
  module = quantizers.SoftVectorQuantizer(5)
  variables = module.init(helpers.RNGS, x, train=False)
  np.testing.assert_array_equal(variables["params"]["log_var"], np.zeros(5))
  state = helpers.initialize(module, variables, x)
  log_var = state["params"]["log_var"]
  codebook = np.asarray(variables["params"]["codebook"])
  nearest = np.min(np.sum((np.asarray(x)[:, None] - codebook[None]) ** 2, axis=-1), axis=1)
  np.testing.assert_allclose(log_var, np.full(5, np.log(nearest.mean() / 4)), rtol=1e-5)
  given = module.clone(variance="sample").init(helpers.RNGS, x, jnp.zeros((6, 5)), train=False)
  assert set(given["params"]) == {"codebook"}
  # A per-codeword log-variance is eq. (5) with sigma_k: compare by hand.
  _, aux = module.apply(state, x, train=False)
  expected = jax.nn.softmax(-0.5 * functional.squared_distances(x, codebook) / np.exp(log_var), -1)
  np.testing.assert_allclose(aux["probs"], expected, atol=1e-6)


def test_soft_ema_statistics_are_weighted_by_the_posterior():
  z = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  probs = jnp.array([[0.75, 0.25], [0.5, 0.5]])
  size, embed_sum, _ = functional.ema_codebook_step(jnp.zeros(2), jnp.zeros((2, 2)),
                                                    *functional.assignment_sums(z, probs),
                                                    decay=0.5, eps=0.0)
  np.testing.assert_allclose(size, [0.5 * 1.25, 0.5 * 0.75])
  np.testing.assert_allclose(embed_sum, [[0.5 * 0.75, 0.5 * 1.0], [0.5 * 0.25, 0.5 * 1.0]])
