"""The autoencoder: its loss, encode, bfloat16 compute, and the bottlenecks a config builds."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from softvq_jax.model import autoencoder
from tests.model import helpers

# The launcher's bottlenecks around library quantizers, built from a config.
QUANTIZED = {
    "fsq": {"latent_dim": 3, "fsq_levels": (5, 4, 3)},
    "lfq": {"latent_dim": 5},
    "residual_vq": {"num_stages": 3, "ema_decay": 0.9},
    "residual_soft_vq": {"num_stages": 2, "variance": "codeword", "noise_std": 0.1},
    "fsq_projected": {"bottleneck": "fsq", "quantizer_dim": 3, "fsq_levels": (5, 4, 3)},
    "lfq_projected": {"bottleneck": "lfq", "quantizer_dim": 5},
}




@pytest.mark.parametrize("kind,outputs,x,expected", [
    # nmse: sigmoid(0) = 0.5 against 0 and 1, squared error 0.25 each, var 0.5.
    ("nmse", np.zeros((2, 1, 2, 1)), np.array([0.0, 1.0] * 2).reshape(2, 1, 2, 1), 1.0),
    # bernoulli: log(2) per pixel, 2 pixels per example.
    ("bernoulli", np.zeros((2, 1, 2, 1)), np.full((2, 1, 2, 1), 0.5), 2 * np.log(2)),
])
def test_reconstruction_loss(kind, outputs, x, expected):
  loss = autoencoder.reconstruction_loss(jnp.asarray(outputs), jnp.asarray(x), kind=kind,
                                         output_activation="sigmoid", pixel_var=0.5)
  assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_model_encode_returns_latent():
  config = ml_collections.ConfigDict(dict(
      bottleneck="vae", network="mlp", mlp_hidden=(8,), latent_dim=3, beta=1.0,
      recon="nmse", output_activation="sigmoid"))
  model = autoencoder.make_model(config, (4, 4, 1))
  x = jax.random.uniform(jax.random.key(0), (5, 4, 4, 1))
  variables = model.init(helpers.RNGS, x, train=False)
  z = model.apply(variables, x, method=autoencoder.Autoencoder.encode)
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
  models_ = {dtype: autoencoder.make_model(config, (8, 8, 1), compute_dtype=dtype)
             for dtype in ("float32", "bfloat16")}
  init = functools.partial(models_["bfloat16"].init, train=False)
  shapes = jax.eval_shape(init, helpers.RNGS, x)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  trunk = jax.eval_shape(functools.partial(models_["bfloat16"].apply,
                                           method=lambda m, x: m.encoder(x)), shapes, x)
  assert trunk.dtype == jnp.bfloat16
  loss = functools.partial(autoencoder.Autoencoder.loss, pixel_var=0.1)
  apply = {dtype: functools.partial(model.apply, method=loss,
                                    rngs={"noise": jax.random.key(1)})
           for dtype, model in models_.items()}
  value, metrics = jax.eval_shape(apply["bfloat16"], shapes, x)
  assert value.dtype == metrics["perplexity"].dtype == jnp.float32
  if network == "mlp":  # Values too; compiling the CNN twice costs seconds.
    variables = jax.jit(init)(helpers.RNGS, x)
    values = {dtype: float(jax.jit(fn)(variables, x)[0]) for dtype, fn in apply.items()}
    assert values["bfloat16"] == pytest.approx(values["float32"], rel=2e-2)


def quantized_model_config(name):
  config = ml_collections.ConfigDict(dict(
      bottleneck=name.split("_projected")[0], latent_dim=helpers.D, num_codewords=helpers.K, num_stages=4,
      fsq_levels=(5, 5, 5),
      entropy_weight=0.1, noise_std=0.0, normalizer="paper", variance="codeword",
      log_var_init=None, commitment=0.25, vq_weight=1.0, codebook_init="uniform",
      ema_decay=None, dead_code_threshold=0.0, quantizer_dim=None))
  config.update(QUANTIZED[name])
  return config


@pytest.mark.parametrize("name", sorted(QUANTIZED))
@pytest.mark.slow
def test_quantized_bottlenecks_put_a_latent_head_before_the_library_quantizer(name):
  config = quantized_model_config(name)
  module = autoencoder.make_bottleneck(config)
  h = jax.random.normal(jax.random.key(3), (2, 8, 7))
  variables = module.apply(module.init(helpers.RNGS, h, train=False), h, method="initialize",
                           mutable=True, rngs=helpers.RNGS)[1]
  (out, aux), _ = module.apply(variables, h, train=True, rngs={"noise": jax.random.key(2)},
                               mutable=["ema"])
  d = config.latent_dim
  assert variables["params"]["z_e"]["kernel"].shape == (7, d)
  assert out.shape == aux["latent"].shape == (2, 8, d)
  np.testing.assert_allclose(aux["latent"], h @ variables["params"]["z_e"]["kernel"]
                             + variables["params"]["z_e"]["bias"], rtol=1e-5, atol=1e-6)
  assert aux["loss"].shape == aux["perplexity"].shape == aux["usage"].shape == ()
  assert 1.0 <= float(aux["perplexity"]) <= module.num_codewords
  assert aux["indices"].shape == (2, 8) + ((config.num_stages,) if "residual" in name else ())
  assert int(aux["indices"].max()) < module.num_codewords
  if config.quantizer_dim:  # A LayerNorm of z_e, projected, is what is quantized.
    z = aux["latent"]
    normed = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-6)
    projected = normed @ variables["params"]["project_in"]["kernel"]
    assert projected.shape == (2, 8, config.quantizer_dim)
    if config.bottleneck == "lfq":
      signs = np.asarray(projected + variables["params"]["project_in"]["bias"]) > 0
      bits = 2 ** np.arange(config.quantizer_dim - 1, -1, -1)
      np.testing.assert_array_equal(aux["indices"], (signs * bits).sum(-1))
  if name != "residual_soft_vq":  # Hard codes: the output is the indices' embedding.
    np.testing.assert_allclose(module.apply(variables, aux["indices"], method="embed"),
                               out, rtol=1e-5, atol=1e-5)
