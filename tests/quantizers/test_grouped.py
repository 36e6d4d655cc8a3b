"""GroupedResidualQuantizer: each group quantizes its channels as on its own, in linen and NNX."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers as q
from softvq_jax.quantizers import nnx as vq_nnx
from tests.quantizers import helpers


def _stack():
  return q.ResidualQuantizer([q.VectorQuantizer(8, ema_decay=0.9, codebook_init="kmeans"),
                              q.FSQ((5, 5))])


@pytest.mark.slow
def test_groups_quantize_their_channels_as_on_their_own():
  z = jnp.asarray(helpers.clustered(32, d=6))
  mask = jnp.arange(32) < 24
  grouped = q.GroupedResidualQuantizer([_stack() for _ in range(3)])
  variables = helpers.ready(grouped, z, mask=mask)
  out, aux, trained = helpers.train(grouped, variables, z, mask=mask)
  assert aux["indices"].shape == (32, 2, 3) and aux["perplexity"].shape == (3, 2)
  stack = _stack()
  losses = 0.0
  for g in range(3):
    part = z[:, 2 * g:2 * g + 2]
    mine = {c: v[f"groups_{g}"] for c, v in variables.items()}  # Started by the group.
    out_g, aux_g, trained_g = helpers.train(stack, mine, part, mask=mask)
    np.testing.assert_allclose(out[:, 2 * g:2 * g + 2], out_g, atol=1e-6)
    np.testing.assert_array_equal(aux["indices"][..., g], aux_g["indices"])
    jax.tree.map(np.testing.assert_array_equal, trained["ema"][f"groups_{g}"], trained_g["ema"])
    losses += aux_g["loss"]
  np.testing.assert_allclose(aux["loss"], losses, rtol=1e-6)
  z_q, aux = grouped.apply(trained, z, train=False)
  np.testing.assert_allclose(grouped.apply(trained, aux["indices"], method=grouped.embed), z_q,
                             atol=1e-6)


@pytest.mark.slow
def test_nnx_groups_match_linen():
  z = jax.random.normal(jax.random.key(0), (4, 5, 8))
  linen = q.GroupedResidualQuantizer([
      q.ResidualFSQ((5, 3), 2), q.ResidualLFQ(2, 2),
      q.ResidualQuantizer([q.VectorQuantizer(4), q.FSQ((3, 3))])])
  variables = linen.init(helpers.PARAMS_RNG, z[..., :6], train=False)
  native = vq_nnx.GroupedResidualQuantizer([
      vq_nnx.ResidualFSQ((5, 3), 2), vq_nnx.ResidualLFQ(2, 2),
      vq_nnx.ResidualQuantizer([vq_nnx.VectorQuantizer(4, 2, rngs=nnx.Rngs(0)),
                                vq_nnx.FSQ((3, 3))])])
  native.groups[2].stages[0].codebook.set_value(
      variables["params"]["groups_2"]["stages_0"]["codebook"])
  expected = linen.apply(variables, z[..., :6], train=True)
  got = native(z[..., :6], train=True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, expected)
  assert got[1]["indices"].shape == (4, 5, 2, 3)
  np.testing.assert_allclose(native.embed(got[1]["indices"]), got[0], atol=1e-6)
  with pytest.raises(ValueError, match="indices need a last axis of 3 groups"):
    native.embed(jnp.zeros((3, 2), jnp.int32))


def test_groups_must_give_indices_of_one_shape():
  mixed = q.GroupedResidualQuantizer([q.ResidualFSQ((5, 3), 2), q.FSQ((5, 3))])
  with pytest.raises(ValueError, match="indices of one shape"):
    mixed.init(helpers.PARAMS_RNG, jnp.ones((2, 4)), train=False)


@pytest.mark.parametrize("groups,message", [([], "at least one"), ([q.FSQ((3,))] * 3, "divide")])
def test_bad_groups_are_one_error(groups, message):
  with pytest.raises(ValueError, match=message):
    q.GroupedResidualQuantizer(groups).init(helpers.PARAMS_RNG, jnp.ones((2, 4)), train=False)
