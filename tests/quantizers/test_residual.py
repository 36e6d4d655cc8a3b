"""Residual quantization over any stack of quantizers, with quantizer dropout."""

import jax
import numpy as np
import pytest

from softvq_jax import quantizers
from tests.quantizers import helpers


@pytest.mark.parametrize("make", [
    lambda: quantizers.VectorQuantizer(16, codebook_init="kmeans"),
    lambda: quantizers.VectorQuantizer(16, codebook_init="kmeans", ema_decay=0.9),
    lambda: quantizers.SoftVectorQuantizer(16, codebook_init="kmeans", log_var_init=-4.0),
])
def test_the_residual_error_does_not_grow_with_the_stages(make):
  z = jax.random.normal(jax.random.key(0), (512, 6))
  module = quantizers.ResidualQuantizer([make() for _ in range(4)])
  variables = helpers.ready(module, z)
  z_q, aux = module.apply(variables, z, train=False)
  norms = np.concatenate([[np.mean(np.linalg.norm(z, axis=-1))], aux["residual_norms"]])
  assert np.all(np.diff(norms) <= 1e-6), norms
  assert norms[-1] < 0.6 * norms[0]
  np.testing.assert_allclose(np.mean(np.linalg.norm(z - z_q, axis=-1)), norms[-1], rtol=1e-5)


@pytest.mark.slow
def test_residual_quantization_sums_the_stages_and_embeds_back():
  z = jax.random.normal(jax.random.key(0), (64, 4))
  stages = [quantizers.VectorQuantizer(8), quantizers.FSQ((5, 5, 5, 5)), quantizers.LFQ(4)]
  module = quantizers.ResidualQuantizer(stages)
  variables = module.init(jax.random.key(1), z, train=False)
  z_q, aux = module.apply(variables, z, train=False)
  table = np.asarray(variables["params"]["stages_0"]["codebook"])
  first = table[np.argmin(((np.asarray(z)[:, None] - table) ** 2).sum(-1), -1)]
  second = helpers.fsq_reference(np.asarray(z) - first, (5, 5, 5, 5))
  third = np.where(np.asarray(z) - first - second > 0, 1.0, -1.0)
  np.testing.assert_allclose(z_q, first + second + third, atol=1e-5)
  assert aux["indices"].shape == (64, 3)
  np.testing.assert_allclose(module.apply(variables, aux["indices"], method=module.embed), z_q,
                             atol=1e-5)


def test_quantizer_dropout_uses_a_prefix_of_the_stages():
  z = jax.random.normal(jax.random.key(0), (32, 4))
  module = quantizers.ResidualQuantizer([quantizers.VectorQuantizer(8) for _ in range(4)],
                                        quantizer_dropout=1.0)
  variables = module.init(jax.random.key(1), z, train=False)
  counts = set()
  for seed in range(12):
    z_q, aux = module.apply(variables, z, train=True, rngs={"noise": jax.random.key(seed)})
    active = int(aux["active_stages"])
    counts.add(active)
    np.testing.assert_array_equal(np.asarray(aux["indices"])[:, active:], -1)
    assert np.all(np.asarray(aux["indices"])[:, :active] >= 0)
    np.testing.assert_allclose(module.apply(variables, aux["indices"], method=module.embed),
                               z_q, atol=1e-5)
  assert len(counts) > 1 and counts <= {1, 2, 3, 4}
  assert int(module.apply(variables, z, train=False)[1]["active_stages"]) == 4
