"""A quantizer's bad options or inputs: one error naming the argument, at construction or at
the call."""

from flax import nnx
import jax.numpy as jnp
import pytest

from softvq_jax import quantizers
from softvq_jax.quantizers import nnx as vq_nnx
from tests.quantizers import helpers


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
  module = helpers.LINEN[kind](8)
  variables = module.init(helpers.PARAMS_RNG, jnp.ones((3, 4)), train=False)
  with pytest.raises(ValueError, match="last dimension must be the codeword size 4"):
    module.apply(variables, jnp.ones((3, 5)), train=False)
  with pytest.raises(TypeError, match="floating-point"):
    module.apply(variables, jnp.ones((3, 4), jnp.int32), train=False)
  nnx_module = helpers.NNX[kind](8, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="last dimension must be the codeword size 4"):
    nnx_module(jnp.ones((3, 5)), train=False)
  if kind == "soft":
    sampled = module.clone(variance="sample")
    with pytest.raises(ValueError, match="does not broadcast"):
      sampled.init(helpers.PARAMS_RNG, jnp.ones((3, 4)), jnp.ones((3, 7)), train=False)


@pytest.mark.parametrize("build,message", [
    (lambda: quantizers.VectorQuantizer(8, codebook_dim=0), "codebook_dim must be"),
    (lambda: quantizers.VectorQuantizer(8, ema_decay=0.9, orthogonal_weight=1.0),
     "orthogonal_weight regularises"),
    (lambda: quantizers.SoftVectorQuantizer(8, orthogonal_weight=-1.0), "orthogonal_weight"),
])
def test_bad_options(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_a_mask_of_the_wrong_shape_is_one_error():
  module = quantizers.VectorQuantizer(8)
  variables = module.init(helpers.PARAMS_RNG, jnp.ones((4, 3)), train=False)
  with pytest.raises(ValueError, match=r"mask must be booleans of shape \(4,\)"):
    module.apply(variables, jnp.ones((4, 3)), train=False, mask=jnp.ones((4, 3), bool))
