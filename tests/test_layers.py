"""Tests of the bottleneck modules, the networks and the model loss."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from softvq_jax import layers
from softvq_jax import quantizers
from softvq_jax import models
from softvq_jax import networks

D, K = 6, 10
MODULES = {
    "none": lambda: layers.Identity(D),
    "vae": lambda: layers.VAE(D, beta=2.0),
    "info_dropout": lambda: layers.InfoDropout(D, beta=0.5),
    "vq": lambda: layers.VQ(D, K, commitment=0.25, vq_weight=2.0),
    "vq_ema": lambda: layers.VQ(D, K, ema_decay=0.9),
    "soft_vq": lambda: layers.SoftVQ(D, K, noise_std=0.1, commitment=0.25, vq_weight=2.0),
}
# The launcher's bottlenecks around library quantizers, built from a config.
QUANTIZED = {
    "fsq": {"latent_dim": 3, "fsq_levels": (5, 4, 3)},
    "lfq": {"latent_dim": 5},
    "residual_vq": {"num_stages": 3, "ema_decay": 0.9},
    "residual_soft_vq": {"num_stages": 2, "variance": "codeword", "noise_std": 0.1},
}
RNGS = {"params": jax.random.key(0), "noise": jax.random.key(1)}


def apply(module, h, train=True):
  variables = module.init(RNGS, h, train=train)
  (out, aux), _ = module.apply(variables, h, train=train, rngs={"noise": jax.random.key(2)},
                               mutable=["ema"])
  return variables, out, aux


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("lead", [(4,), (2, 3, 3)])
def test_interface_and_shapes(name, lead):
  h = jax.random.normal(jax.random.key(3), lead + (7,))
  _, out, aux = apply(MODULES[name](), h)
  assert out.shape == lead + (D,)
  assert aux["latent"].shape == lead + (D,)
  assert aux["loss"].shape == ()
  if name.startswith(("vq", "soft")):
    assert aux["indices"].shape == lead
    assert 1.0 <= float(aux["perplexity"]) <= K
    assert 0.0 < float(aux["usage"]) <= 1.0
  if name == "soft_vq":
    assert aux["probs"].shape == lead + (K,)


@pytest.mark.parametrize("name,heads", [
    ("none", {"z_e": D}),
    ("vae", {"z_e": D, "log_var": D}),
    ("info_dropout", {"z_e": D, "noise_scale": D}),
    ("vq", {"z_e": D}),
    ("soft_vq", {"z_e": D, "log_var": K}),
])
def test_modules_own_their_heads(name, heads):
  variables = MODULES[name]().init(RNGS, jnp.zeros((2, 7)), train=False)
  params = variables["params"]
  assert {k: v["kernel"].shape[1] for k, v in params.items() if k != "codebook"} == heads
  if name in ("vq", "soft_vq"):
    limit = np.sqrt(3 / K)  # Uniform unit scaling of a (K, d) codebook.
    assert params["codebook"].shape == (K, D)
    assert float(jnp.max(jnp.abs(params["codebook"]))) <= limit


@pytest.mark.parametrize("name", ["vae", "info_dropout", "soft_vq"])
def test_noise_only_in_training(name):
  h = jax.random.normal(jax.random.key(3), (4, 7))
  _, out_eval, aux = apply(MODULES[name](), h, train=False)
  _, out_train, _ = apply(MODULES[name](), h, train=True)
  assert not np.allclose(out_eval, out_train)
  if name != "soft_vq":
    np.testing.assert_allclose(out_eval, aux["latent"])


def _grads(module, term):
  h = jax.random.normal(jax.random.key(4), (8, 7))
  variables = module.init(RNGS, h, train=True)
  weights = jax.random.normal(jax.random.key(5), (8, D))

  def loss(params):
    out, aux = module.apply({"params": params}, h, train=True,
                            rngs={"noise": jax.random.key(6)})
    return jnp.sum(weights * out) if term == "decoder" else aux[term]

  return flax.traverse_util.flatten_dict(jax.grad(loss)(variables["params"]), sep="/")


@pytest.mark.parametrize("name", ["vq", "soft_vq"])
@pytest.mark.parametrize("term,receives", [
    ("decoder", {"z_e"}),
    ("codebook_loss", {"codebook", "log_var"}),
    ("commitment_loss", {"z_e"}),
])
def test_gradient_routing(name, term, receives):
  """Codebook learns only from the codebook term; z_e from commitment + decoder."""
  grads = _grads(MODULES[name](), term)
  nonzero = {path.split("/")[0] for path, g in grads.items() if np.any(np.asarray(g) != 0)}
  expected = receives if name == "soft_vq" else receives - {"log_var"}
  assert nonzero == expected


@pytest.mark.parametrize("variance,heads,trained", [
    ("sample", {"z_e": D, "log_var": K}, None),
    ("codeword", {"z_e": D}, True),
    ("fixed", {"z_e": D}, False),
])
def test_soft_vq_variances_from_a_head_per_codeword_or_fixed(variance, heads, trained):
  module = MODULES["soft_vq"]().clone(variance=variance)
  params = module.init(RNGS, jnp.zeros((2, 7)), train=False)["params"]
  assert {k: v["kernel"].shape[1] for k, v in params.items() if isinstance(v, dict)} == heads
  grads = _grads(module, "codebook_loss")
  if trained is not None:
    assert params["log_var"].shape == (K,)
    assert np.any(np.asarray(grads["log_var"]) != 0) == trained
  if trained is False:  # One variance for every codeword, which stays put.
    assert np.unique(np.asarray(params["log_var"])).size == 1
  if trained is not None:
    start = module.clone(log_var_init=0.5).init(RNGS, jnp.zeros((2, 7)), train=False)
    np.testing.assert_array_equal(start["params"]["log_var"], np.full(K, 0.5))


def test_a_soft_quantizer_takes_a_log_var_argument_exactly_when_variance_is_sample():
  with pytest.raises(ValueError, match="takes a log_var argument"):
    quantizers.SoftVectorQuantizer(K, variance="sample").init(RNGS, jnp.ones((3, D)), train=False)
  with pytest.raises(ValueError, match="holds its own log_var"):
    quantizers.SoftVectorQuantizer(K).init(RNGS, jnp.ones((3, D)), jnp.ones((3, K)),
                                           train=False)


def test_vq_decoder_input_is_nearest_codeword():
  h = jax.random.normal(jax.random.key(3), (5, 7))
  variables, out, aux = apply(MODULES["vq"](), h, train=False)
  np.testing.assert_allclose(out, variables["params"]["codebook"][aux["indices"]], atol=1e-6)


def test_ema_codebook_moves_and_has_no_codebook_term():
  module = MODULES["vq_ema"]()
  h = jax.random.normal(jax.random.key(3), (16, 7))
  variables = module.init(RNGS, h, train=True)
  assert "codebook" not in variables["params"]
  (_, aux), updated = module.apply(variables, h, train=True, mutable=["ema"])
  assert float(aux["codebook_loss"]) == 0.0
  assert not np.allclose(updated["ema"]["codebook"], variables["ema"]["codebook"])
  (_, _), frozen = module.apply(variables, h, train=False, mutable=["ema"])
  np.testing.assert_array_equal(frozen["ema"]["codebook"], variables["ema"]["codebook"])


def _count(module, shape):
  variables = module.init(jax.random.key(0), jnp.zeros(shape))
  return sum(p.size for p in jax.tree.leaves(variables["params"]))


@pytest.mark.slow
@pytest.mark.parametrize("module,shape,expected", [
    # 784*500+500 + 500*500+500 + 500*2000+2000
    (networks.MLPEncoder(), (1, 28, 28, 1), 392500 + 250500 + 1002000),
    # 64*2000+2000 + 2000*500+500 + 500*500+500 + 500*784+784
    (networks.MLPDecoder((28, 28, 1)), (1, 64), 130000 + 1000500 + 250500 + 392784),
    # 3x3 convs 3-64-128-256-512 with biases.
    (networks.CNNEncoder(), (1, 32, 32, 3),
     (27 * 64 + 64) + (576 * 128 + 128) + (1152 * 256 + 256) + (2304 * 512 + 512)),
    # Dense 256 -> 2*2*512, then 3x3 transposed convs 512-512-256-128-3.
    (networks.CNNDecoder((32, 32, 3)), (1, 256),
     (256 * 2048 + 2048) + (4608 * 512 + 512) + (4608 * 256 + 256)
     + (2304 * 128 + 128) + (1152 * 3 + 3)),
])
def test_parameter_counts(module, shape, expected):
  assert _count(module, shape) == expected


def test_cnn_shapes():
  h = networks.CNNEncoder().apply(
      networks.CNNEncoder().init(jax.random.key(0), jnp.zeros((2, 32, 32, 3))),
      jnp.zeros((2, 32, 32, 3)))
  assert h.shape == (2, 2 * 2 * 512)
  decoder = networks.CNNDecoder((32, 32, 3))
  out = decoder.apply(decoder.init(jax.random.key(0), jnp.zeros((2, 256))), jnp.zeros((2, 256)))
  assert out.shape == (2, 32, 32, 3)


def test_glorot_uniform_weights():
  variables = networks.MLPEncoder().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  kernel = variables["params"]["dense_0"]["kernel"]
  limit = np.sqrt(6 / (784 + 500))
  assert float(jnp.max(jnp.abs(kernel))) <= limit
  assert float(jnp.std(kernel)) == pytest.approx(limit / np.sqrt(3), rel=0.02)


@pytest.mark.parametrize("kind,outputs,x,expected", [
    # nmse: sigmoid(0) = 0.5 against 0 and 1, squared error 0.25 each, var 0.5.
    ("nmse", np.zeros((2, 1, 2, 1)), np.array([0.0, 1.0] * 2).reshape(2, 1, 2, 1), 1.0),
    # bernoulli: log(2) per pixel, 2 pixels per example.
    ("bernoulli", np.zeros((2, 1, 2, 1)), np.full((2, 1, 2, 1), 0.5), 2 * np.log(2)),
])
def test_reconstruction_loss(kind, outputs, x, expected):
  loss = models.reconstruction_loss(jnp.asarray(outputs), jnp.asarray(x), kind=kind,
                                    output_activation="sigmoid", pixel_var=0.5)
  assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_model_encode_returns_latent():
  config = ml_collections.ConfigDict(dict(
      bottleneck="vae", network="mlp", mlp_hidden=(8,), latent_dim=3, beta=1.0,
      recon="nmse", output_activation="sigmoid"))
  model = models.make_model(config, (4, 4, 1))
  x = jax.random.uniform(jax.random.key(0), (5, 4, 4, 1))
  variables = model.init(RNGS, x, train=False)
  z = model.apply(variables, x, method=models.Autoencoder.encode)
  expected = variables["params"]["bottleneck"]["z_e"]
  h = jax.nn.relu(x.reshape(5, 16) @ variables["params"]["encoder"]["dense_0"]["kernel"])
  np.testing.assert_allclose(z, h @ expected["kernel"] + expected["bias"], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_bfloat16_compute_keeps_float32_params_quantizer_and_loss(network):
  config = ml_collections.ConfigDict(dict(
      bottleneck="soft_vq", network=network, mlp_hidden=(16,), cnn_channels=(4, 8),
      latent_dim=3, num_codewords=5, noise_std=0.0, normalizer="paper", variance="sample",
      log_var_init=None,
      commitment=0.25,
      vq_weight=1.0, ema_decay=None, codebook_init="uniform", dead_code_threshold=0.0,
      recon="nmse", output_activation="sigmoid"))
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  models_ = {dtype: models.make_model(config, (8, 8, 1), compute_dtype=dtype)
             for dtype in ("float32", "bfloat16")}
  init = functools.partial(models_["bfloat16"].init, train=False)
  shapes = jax.eval_shape(init, RNGS, x)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  trunk = jax.eval_shape(functools.partial(models_["bfloat16"].apply,
                                           method=lambda m, x: m.encoder(x)), shapes, x)
  assert trunk.dtype == jnp.bfloat16
  loss = functools.partial(models.Autoencoder.loss, pixel_var=0.1)
  apply = {dtype: functools.partial(model.apply, method=loss,
                                    rngs={"noise": jax.random.key(1)})
           for dtype, model in models_.items()}
  value, metrics = jax.eval_shape(apply["bfloat16"], shapes, x)
  assert value.dtype == metrics["perplexity"].dtype == jnp.float32
  if network == "mlp":  # Values too; compiling the CNN twice costs seconds.
    variables = jax.jit(init)(RNGS, x)
    values = {dtype: float(jax.jit(fn)(variables, x)[0]) for dtype, fn in apply.items()}
    assert values["bfloat16"] == pytest.approx(values["float32"], rel=2e-2)


@pytest.mark.parametrize("module", [layers.VQ(D, K, codebook_init="data"),
                                    layers.SoftVQ(D, K, codebook_init="data")])
def test_data_codebook_init_takes_the_first_encodings_of_the_init_batch(module):
  h = jax.random.normal(jax.random.key(3), (2, 7, 7))  # 14 encodings >= K.
  params = module.init(RNGS, h, train=False)["params"]
  z_e = module.apply({"params": params}, h, train=False)[1]["latent"]
  np.testing.assert_array_equal(params["codebook"], z_e.reshape(-1, D)[:K])
  uniform = module.clone(codebook_init="uniform").init(RNGS, h, train=False)["params"]
  del params["codebook"], uniform["codebook"]
  jax.tree.map(np.testing.assert_array_equal, params, uniform)


@pytest.mark.parametrize("kind", ["data", "kmeans"])
def test_an_init_batch_with_fewer_encodings_than_k_gives_k_distinct_codewords(kind):
  params = layers.SoftVQ(D, K, codebook_init=kind).init(RNGS, jnp.ones((3, 7)),
                                                         train=False)["params"]
  assert len(np.unique(np.asarray(params["codebook"]), axis=0)) == K


@pytest.mark.parametrize("build,message", [
    (lambda: layers.VQ(D, K, dead_code_threshold=0.5), "set ema_decay"),
    (lambda: layers.VQ(D, K, codebook_init="nope"), "codebook_init must be one of"),
])
def test_codebook_init_errors(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def quantized_model_config(name):
  config = ml_collections.ConfigDict(dict(
      bottleneck=name, latent_dim=D, num_codewords=K, num_stages=4, fsq_levels=(5, 5, 5),
      entropy_weight=0.1, noise_std=0.0, normalizer="paper", variance="codeword",
      log_var_init=None, commitment=0.25, vq_weight=1.0, codebook_init="uniform",
      ema_decay=None, dead_code_threshold=0.0))
  config.update(QUANTIZED[name])
  return config


@pytest.mark.parametrize("name", sorted(QUANTIZED))
def test_quantized_bottlenecks_put_a_latent_head_before_the_library_quantizer(name):
  config = quantized_model_config(name)
  module = models.make_bottleneck(config)
  h = jax.random.normal(jax.random.key(3), (2, 8, 7))
  variables, out, aux = apply(module, h)
  d = config.latent_dim
  assert variables["params"]["z_e"]["kernel"].shape == (7, d)
  assert out.shape == aux["latent"].shape == (2, 8, d)
  np.testing.assert_allclose(aux["latent"], h @ variables["params"]["z_e"]["kernel"]
                             + variables["params"]["z_e"]["bias"], rtol=1e-5, atol=1e-6)
  assert aux["loss"].shape == aux["perplexity"].shape == aux["usage"].shape == ()
  assert 1.0 <= float(aux["perplexity"]) <= module.num_codewords
  assert aux["indices"].shape == (2, 8) + ((config.num_stages,) if "residual" in name else ())
  assert int(aux["indices"].max()) < module.num_codewords
  if name != "residual_soft_vq":  # Hard codes: the output is the indices' embedding.
    np.testing.assert_allclose(module.apply(variables, aux["indices"], method="embed"),
                               out, rtol=1e-5, atol=1e-5)
