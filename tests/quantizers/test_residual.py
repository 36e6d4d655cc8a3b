"""Residual quantization over any stack of quantizers, with quantizer dropout."""

from flax import nnx
import jax
import numpy as np
import pytest

from softvq_jax import quantizers
from softvq_jax.quantizers import nnx as vq_nnx
from tests.quantizers import helpers


@pytest.mark.parametrize("make", [
    lambda: quantizers.VectorQuantizer(16, codebook_init="kmeans"),
    lambda: quantizers.VectorQuantizer(16, codebook_init="kmeans", ema_decay=0.9),
    lambda: quantizers.SoftVectorQuantizer(16, codebook_init="kmeans", log_var_init=-4.0),
])
@pytest.mark.slow
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


def test_residual_fsq_scales_each_stage_and_three_stages_reach_4e_3():
  # Issue 35, item 5: stacked FSQ stalled at MSE 1.85e-2 after 2 stages.
  z = jax.random.uniform(jax.random.key(0), (8192, 4), minval=-0.9, maxval=0.9)
  levels = (8, 5, 5, 5)
  errors = []
  for num_stages in (1, 2, 3):
    module = quantizers.ResidualFSQ(levels, num_stages)
    z_q, aux = module.apply({}, z, train=True)
    errors.append(float(np.mean((np.asarray(z_q) - np.asarray(z)) ** 2)))
    np.testing.assert_allclose(module.apply({}, aux["indices"], method=module.embed), z_q,
                               atol=1e-6)
  assert errors[0] > errors[1] > errors[2] and errors[2] <= 4e-3, errors
  # By hand in float64: stage s rounds the residual times (L - 1)^s.
  expected, residual = 0.0, np.asarray(z, np.float64)
  for s in range(3):
    scale = (np.asarray(levels) - 1.0) ** -s
    q = helpers.fsq_reference(residual / scale, levels) * scale
    expected, residual = expected + q, residual - q
  np.testing.assert_allclose(z_q, expected, atol=1e-5)


def test_residual_lfq_halves_the_code_per_stage_in_linen_and_nnx():
  z = jax.random.normal(jax.random.key(0), (64, 5))
  module = quantizers.ResidualLFQ(5, 3, commitment=0.1)
  z_q, aux = module.apply({}, z, train=True)
  expected, residual = 0.0, np.asarray(z, np.float64)
  for s in range(3):
    q = np.where(residual > 0, 1.0, -1.0) * 2.0 ** -s
    expected, residual = expected + q, residual - q
  np.testing.assert_allclose(z_q, expected, atol=1e-6)
  np.testing.assert_allclose(module.apply({}, aux["indices"], method=module.embed), z_q, atol=1e-6)
  native = vq_nnx.ResidualLFQ(5, 3, rngs=nnx.Rngs(0), commitment=0.1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               native(z, train=True), (z_q, aux))
