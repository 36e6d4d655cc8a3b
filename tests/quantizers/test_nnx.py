"""The NNX modules agree with their linen namesakes in outputs, state updates, options and masks."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers
from softvq_jax.quantizers import nnx as vq_nnx
from tests.quantizers import helpers


@pytest.mark.parametrize("kind,kwargs", [
    ("hard", dict(ema_decay=0.9, codebook_init="kmeans")),
    ("soft", dict(ema_decay=0.9, codebook_init="data")),
    ("soft", dict(chunk_size=3, commitment=0.5)),
    ("hard", dict(ema_decay=0.9, codebook_init="kmeans", heads=2,
                  separate_codebook_per_head=True)),
    ("soft", dict(heads=3, codebook_init="data")),
    ("soft", dict(codebook_transform=True, log_var_init=0.0))])
@pytest.mark.slow
def test_nnx_and_linen_agree_on_outputs_and_state_updates(kind, kwargs):
  z = jnp.asarray(helpers.clustered(48, d=6))
  linen = helpers.LINEN[kind](10, **kwargs)
  variables = helpers.ready(linen, z)
  module = helpers.NNX[kind](10, 6, rngs=nnx.Rngs(0), **kwargs)
  module.initialize(z)
  for name, value in variables.get("params", {}).items():  # The k-means draws differ.
    getattr(module, name).set_value(value)
  for name, value in variables["ema"].items():
    np.testing.assert_array_equal(getattr(module, name).get_value().shape, value.shape)
    getattr(module, name).set_value(value)
  step = nnx.jit(lambda module, z: module(z, train=True))
  for _ in range(2):
    out, aux, variables = jax.jit(functools.partial(helpers.train, linen))(variables, z)
    out_nnx, aux_nnx = step(module, z)
    np.testing.assert_allclose(out_nnx, out, rtol=1e-6, atol=1e-6)
    for key in aux:
      np.testing.assert_allclose(aux_nnx[key], aux[key], rtol=1e-6, atol=1e-6)
    for name, value in variables["ema"].items():  # Updated in place under nnx.jit.
      np.testing.assert_allclose(getattr(module, name).get_value(), value, rtol=1e-6, atol=1e-6)
  indices = aux["indices"]
  np.testing.assert_array_equal(module.embed(indices),
                                linen.apply(variables, indices, method=linen.embed))


def test_mask_and_options_in_nnx_match_linen():
  kwargs = dict(cosine=True, rotation_trick=True, codebook_dim=3, orthogonal_weight=0.1)
  z = jax.random.normal(jax.random.key(0), (10, 6))
  mask = jnp.arange(10) < 7
  linen = quantizers.VectorQuantizer(8, **kwargs)
  variables = linen.init(helpers.PARAMS_RNG, z, train=False)
  native = vq_nnx.VectorQuantizer(8, 6, rngs=nnx.Rngs(0), **kwargs)
  for name, value in variables["params"].items():
    getattr(native, name).set_value(value)
  expected = linen.apply(variables, z, train=True, mask=mask)
  got = native(z, train=True, mask=mask)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               got, expected)


def test_nnx_modules_agree_with_linen():
  z = jax.random.normal(jax.random.key(0), (16, 4))
  for linen, native in ((quantizers.FSQ(helpers.FSQ_LEVELS), vq_nnx.FSQ(helpers.FSQ_LEVELS)),
                        (quantizers.LFQ(4, spherical=True), vq_nnx.LFQ(4, spherical=True))):
    expected = linen.apply({}, z, train=True)
    got = nnx.jit(lambda m, z: m(z, train=True))(native, z)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, expected)
  linen = quantizers.ResidualQuantizer([quantizers.VectorQuantizer(8) for _ in range(2)])
  variables = linen.init(jax.random.key(1), z, train=False)
  native = vq_nnx.ResidualQuantizer([vq_nnx.VectorQuantizer(8, 4, rngs=nnx.Rngs(i))
                                     for i in range(2)])
  for i, stage in enumerate(native.stages):
    stage.codebook.set_value(variables["params"][f"stages_{i}"]["codebook"])
  expected = linen.apply(variables, z, train=False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               native(z, train=False), expected)
