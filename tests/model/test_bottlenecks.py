"""The paper's bottleneck modules: one interface, their own heads, noise, gradient routing,
variances and codebook initialisation."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers
from softvq_jax.model import bottlenecks
from tests.model import helpers

MODULES = {
    "none": lambda: bottlenecks.Identity(helpers.D),
    "vae": lambda: bottlenecks.VAE(helpers.D, beta=2.0),
    "info_dropout": lambda: bottlenecks.InfoDropout(helpers.D, beta=0.5),
    "vq": lambda: bottlenecks.VQ(helpers.D, helpers.K, commitment=0.25, vq_weight=2.0),
    "vq_ema": lambda: bottlenecks.VQ(helpers.D, helpers.K, ema_decay=0.9),
    "soft_vq": lambda: bottlenecks.SoftVQ(helpers.D, helpers.K, noise_std=0.1, commitment=0.25,
                                          vq_weight=2.0),
}





@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("lead", [(4,), (2, 3, 3)])
@pytest.mark.slow
def test_interface_and_shapes(name, lead):
  h = jax.random.normal(jax.random.key(3), lead + (7,))
  _, out, aux = helpers.apply(MODULES[name](), h)
  assert out.shape == lead + (helpers.D,)
  assert aux["latent"].shape == lead + (helpers.D,)
  assert aux["loss"].shape == ()
  if name.startswith(("vq", "soft")):
    assert aux["indices"].shape == lead
    assert 1.0 <= float(aux["perplexity"]) <= helpers.K
    assert 0.0 < float(aux["usage"]) <= 1.0
  if name == "soft_vq":
    assert aux["probs"].shape == lead + (helpers.K,)


@pytest.mark.parametrize("name,heads", [
    ("none", {"z_e": helpers.D}),
    ("vae", {"z_e": helpers.D, "log_var": helpers.D}),
    ("info_dropout", {"z_e": helpers.D, "noise_scale": helpers.D}),
    ("vq", {"z_e": helpers.D}),
    ("soft_vq", {"z_e": helpers.D, "log_var": helpers.K}),
])
def test_modules_own_their_heads(name, heads):
  variables = MODULES[name]().init(helpers.RNGS, jnp.zeros((2, 7)), train=False)
  params = variables["params"]
  assert {k: v["kernel"].shape[1] for k, v in params.items() if k != "codebook"} == heads
  if name in ("vq", "soft_vq"):
    limit = np.sqrt(3 / helpers.K)  # Uniform unit scaling of a (helpers.K, d) codebook.
    assert params["codebook"].shape == (helpers.K, helpers.D)
    assert float(jnp.max(jnp.abs(params["codebook"]))) <= limit


@pytest.mark.parametrize("name", ["vae", "info_dropout", "soft_vq"])
def test_noise_only_in_training(name):
  h = jax.random.normal(jax.random.key(3), (4, 7))
  _, out_eval, aux = helpers.apply(MODULES[name](), h, train=False)
  _, out_train, _ = helpers.apply(MODULES[name](), h, train=True)
  assert not np.allclose(out_eval, out_train)
  if name != "soft_vq":
    np.testing.assert_allclose(out_eval, aux["latent"])


def _grads(module, term):
  h = jax.random.normal(jax.random.key(4), (8, 7))
  variables = module.init(helpers.RNGS, h, train=True)
  weights = jax.random.normal(jax.random.key(5), (8, helpers.D))

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
@pytest.mark.slow
def test_gradient_routing(name, term, receives):
  """Codebook learns only from the codebook term; z_e from commitment + decoder."""
  grads = _grads(MODULES[name](), term)
  nonzero = {path.split("/")[0] for path, g in grads.items() if np.any(np.asarray(g) != 0)}
  expected = receives if name == "soft_vq" else receives - {"log_var"}
  assert nonzero == expected


@pytest.mark.parametrize("variance,heads,trained", [
    ("sample", {"z_e": helpers.D, "log_var": helpers.K}, None),
    ("codeword", {"z_e": helpers.D}, True),
    ("fixed", {"z_e": helpers.D}, False),
])
def test_soft_vq_variances_from_a_head_per_codeword_or_fixed(variance, heads, trained):
  module = MODULES["soft_vq"]().clone(variance=variance)
  params = module.init(helpers.RNGS, jnp.zeros((2, 7)), train=False)["params"]
  assert {k: v["kernel"].shape[1] for k, v in params.items() if isinstance(v, dict)} == heads
  grads = _grads(module, "codebook_loss")
  if trained is not None:
    assert params["log_var"].shape == (helpers.K,)
    assert np.any(np.asarray(grads["log_var"]) != 0) == trained
  if trained is False:  # One variance for every codeword, which stays put.
    assert np.unique(np.asarray(params["log_var"])).size == 1
  if trained is not None:
    start = module.clone(log_var_init=0.5).init(helpers.RNGS, jnp.zeros((2, 7)), train=False)
    np.testing.assert_array_equal(start["params"]["log_var"], np.full(helpers.K, 0.5))


def test_a_soft_quantizer_takes_a_log_var_argument_exactly_when_variance_is_sample():
  with pytest.raises(ValueError, match="takes a log_var argument"):
    quantizers.SoftVectorQuantizer(helpers.K, variance="sample").init(
        helpers.RNGS, jnp.ones((3, helpers.D)), train=False)
  with pytest.raises(ValueError, match="holds its own log_var"):
    quantizers.SoftVectorQuantizer(helpers.K).init(
        helpers.RNGS, jnp.ones((3, helpers.D)), jnp.ones((3, helpers.K)), train=False)


def test_vq_decoder_input_is_nearest_codeword():
  h = jax.random.normal(jax.random.key(3), (5, 7))
  variables, out, aux = helpers.apply(MODULES["vq"](), h, train=False)
  np.testing.assert_allclose(out, variables["params"]["codebook"][aux["indices"]], atol=1e-6)


def test_ema_codebook_moves_and_has_no_codebook_term():
  module = MODULES["vq_ema"]()
  h = jax.random.normal(jax.random.key(3), (16, 7))
  variables = module.init(helpers.RNGS, h, train=True)
  assert "codebook" not in variables["params"]
  (_, aux), updated = module.apply(variables, h, train=True, mutable=["ema"])
  assert float(aux["codebook_loss"]) == 0.0
  assert not np.allclose(updated["ema"]["codebook"], variables["ema"]["codebook"])
  (_, _), frozen = module.apply(variables, h, train=False, mutable=["ema"])
  np.testing.assert_array_equal(frozen["ema"]["codebook"], variables["ema"]["codebook"])


@pytest.mark.parametrize("module", [bottlenecks.VQ(helpers.D, helpers.K, codebook_init="data"),
                                    bottlenecks.SoftVQ(helpers.D, helpers.K, codebook_init="data")])
@pytest.mark.slow
def test_data_codebook_init_takes_the_first_encodings_of_the_init_batch(module):
  h = jax.random.normal(jax.random.key(3), (2, 7, 7))  # 14 encodings >= helpers.K.
  params = module.init(helpers.RNGS, h, train=False)["params"]
  z_e = module.apply({"params": params}, h, train=False)[1]["latent"]
  np.testing.assert_array_equal(params["codebook"], z_e.reshape(-1, helpers.D)[:helpers.K])
  uniform = module.clone(codebook_init="uniform").init(helpers.RNGS, h, train=False)["params"]
  del params["codebook"], uniform["codebook"]
  jax.tree.map(np.testing.assert_array_equal, params, uniform)


@pytest.mark.parametrize("kind", ["data", "kmeans"])
def test_an_init_batch_with_fewer_encodings_than_k_gives_k_distinct_codewords(kind):
  params = bottlenecks.SoftVQ(helpers.D, helpers.K, codebook_init=kind).init(
      helpers.RNGS, jnp.ones((3, 7)), train=False)["params"]
  assert len(np.unique(np.asarray(params["codebook"]), axis=0)) == helpers.K


@pytest.mark.parametrize("build,message", [
    (lambda: bottlenecks.VQ(helpers.D, helpers.K, dead_code_threshold=0.5), "set ema_decay"),
    (lambda: bottlenecks.VQ(helpers.D, helpers.K, codebook_init="nope"),
     "codebook_init must be one of"),
])
def test_codebook_init_errors(build, message):
  with pytest.raises(ValueError, match=message):
    build()
