"""A quantizer's bad options or inputs: one error naming the argument, at construction or at
the call."""

import textwrap

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
    # LVQ's names in linen (issue 35, item 8): the valid options, and ours.
    (lambda: quantizers.VectorQuantizer(8, decay=0.9), TypeError,
     r"unknown options \['decay'\] .*decay -> ema_decay.*the options are \['axis_name'"),
    (lambda: quantizers.SoftVectorQuantizer(codebook_size=8), TypeError,
     "codebook_size -> num_codewords"),
    (lambda: quantizers.LFQ(4, entropy_loss_weight=0.1), TypeError,
     "entropy_loss_weight -> entropy_weight"),
    (lambda: quantizers.VectorQuantizer(8, kmeans_iters=0), ValueError, "kmeans_iters"),
    (lambda: quantizers.SoftVectorQuantizer(8, sample_temperature=1.0), ValueError,
     "sample_temperature"),
    (lambda: quantizers.VectorQuantizer(8, ema_decay=0.9, freeze_codebook=True,
                                        dead_code_threshold=1.0), ValueError, "frozen"),
    (lambda: quantizers.ResidualFSQ((5, 5), 0), ValueError, "num_stages"),
    (lambda: vq_nnx.ResidualLFQ(4, 2, quantizer_dropout=0.5), ValueError, "rngs"),
    (lambda: quantizers.VectorQuantizer(8, heads=0), ValueError, "heads must be a positive"),
    (lambda: quantizers.VectorQuantizer(8, separate_codebook_per_head=True), ValueError,
     "needs heads > 1"),
    (lambda: quantizers.SimVQ(8, ema_decay=0.9), ValueError, "codebook_transform"),
    (lambda: vq_nnx.SimVQ(8, 4, rngs=nnx.Rngs(0), codebook_init="kmeans"), ValueError,
     "codebook_transform"),
    (lambda: quantizers.SoftVectorQuantizer(8, directional_reparam=True), ValueError,
     "directional_reparam"),
    (lambda: quantizers.VectorQuantizer(8, directional_reparam=True, rotation_trick=True),
     ValueError, "directional_reparam"),
    (lambda: quantizers.VectorQuantizer(8, directional_reparam_variance=-1.0), ValueError,
     "directional_reparam_variance"),
    (lambda: quantizers.GroupedResidualQuantizer([], decay=0.9), TypeError, "decay"),
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


SHARD_MAP_WITHOUT_AXIS = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from softvq_jax import quantizers
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    z = jax.random.normal(jax.random.key(0), (4, 6, 3))
    for module in (quantizers.VectorQuantizer(5, ema_decay=0.9),
                   quantizers.LFQ(3)):
      variables = module.init(jax.random.key(1), z[0], train=False)
      step = lambda v, z: module.apply(v, z[0], train=True, mutable=["ema"])[0][0][None]
      try:
        jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch")),
                              out_specs=P("batch")))(variables, z)
      except ValueError as e:
        assert "axis_name='batch'" in str(e), e
        print(type(module).__name__, "refused")
      named = module.clone(axis_name="batch")  # The same with axis_name trains.
      named_step = lambda v, z: named.apply(v, z[0], train=True, mutable=["ema"])[0][0][None]
      jax.jit(jax.shard_map(named_step, mesh=mesh, in_specs=(P(), P("batch")),
                            out_specs=P("batch")))(variables, z)
    """)


@pytest.mark.slow
def test_cross_batch_state_under_shard_map_without_axis_name_is_an_error():
  # Issue 35, item 3: codebooks used to drift apart by 1.05 after one step, silently.
  result = helpers.on_4_devices("-c", SHARD_MAP_WITHOUT_AXIS)
  assert result.stdout.split() == ["VectorQuantizer", "refused", "LFQ", "refused"], (
      result.stdout + result.stderr[-3000:])
