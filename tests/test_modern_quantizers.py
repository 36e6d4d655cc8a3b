"""FSQ, LFQ / BSQ and residual quantization against float64 references and
their defining properties, in linen and NNX."""

import itertools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import nnx as vq_nnx
from softvq_jax import quantizers
from softvq_jax import scalar_quantization as sq

LEVELS = (8, 5, 5, 3)


def _fsq_reference(z, levels, eps=1e-3):
  """Mentzer et al.'s bound-and-round in float64 numpy."""
  levels = np.asarray(levels, np.float64)
  half_l = (levels - 1) * (1 + eps) / 2
  offset = np.where(levels % 2 == 0, 0.5, 0.0)
  bounded = np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset
  return np.round(bounded) / (levels // 2)


def test_fsq_matches_the_float64_reference_and_lies_on_the_grid():
  z = 3.0 * np.random.default_rng(0).normal(size=(500, len(LEVELS)))
  codes, indices = sq.fsq(jnp.asarray(z, jnp.float32), LEVELS)
  np.testing.assert_allclose(codes, _fsq_reference(z, LEVELS), atol=1e-6)
  grid = [(np.arange(l) - l // 2) / (l // 2) for l in LEVELS]
  for i, points in enumerate(grid):  # Every code on its dimension's L_i levels.
    assert np.all(np.min(np.abs(np.asarray(codes)[:, i, None] - points), axis=-1) < 1e-6)
  all_codes = np.array(list(itertools.product(*grid)))
  all_indices = sq.fsq_indices(jnp.asarray(all_codes), LEVELS)
  assert sorted(np.asarray(all_indices).tolist()) == list(range(int(np.prod(LEVELS))))
  np.testing.assert_allclose(sq.fsq_codes(all_indices, LEVELS), all_codes, atol=1e-6)
  np.testing.assert_allclose(sq.fsq_codes(indices, LEVELS), codes, atol=1e-6)


def test_fsq_gradient_is_the_bounds():
  z = jnp.linspace(-2, 2, 4 * 7).reshape(7, 4)
  grad = jax.grad(lambda z: jnp.sum(sq.fsq(z, LEVELS)[0]))(z)
  levels = np.asarray(LEVELS, np.float64)
  half_l = (levels - 1) * 1.001 / 2
  shift = np.arctanh(np.where(levels % 2 == 0, 0.5, 0.0) / half_l)
  expected = (1 - np.tanh(np.asarray(z) + shift) ** 2) * half_l / (levels // 2)
  np.testing.assert_allclose(grad, expected, rtol=1e-5)


def _lfq_entropy_reference(u, inv_temperature, scale):
  """Both entropies over all 2^d codes, densely, in float64."""
  d = u.shape[-1]
  codes = scale * np.array(list(itertools.product([-1.0, 1.0], repeat=d)))
  logits = 2 * inv_temperature * u @ codes.T
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  entropy = lambda p: -np.sum(p * np.log(np.maximum(p, 1e-300)), axis=-1)
  return entropy(probs).mean(), entropy(probs.mean(0))


@pytest.mark.parametrize("spherical", [False, True])
def test_lfq_codes_indices_and_entropies(spherical):
  z = np.random.default_rng(1).normal(size=(300, 6))
  codes, indices, u = sq.lfq(jnp.asarray(z, jnp.float32), spherical)
  scale = 1 / np.sqrt(6) if spherical else 1.0
  np.testing.assert_allclose(np.abs(np.asarray(codes)), scale, rtol=1e-7)  # {-s, +s}^d.
  np.testing.assert_array_equal(np.sign(codes), np.sign(z))
  bits = (z > 0) @ (2 ** np.arange(5, -1, -1))
  np.testing.assert_array_equal(indices, bits)
  np.testing.assert_allclose(sq.lfq_codes(indices, 6, spherical), codes, atol=1e-7)
  u64 = z / np.linalg.norm(z, axis=-1, keepdims=True) if spherical else z
  for inv_t in (0.3, 100.0):
    got = sq.lfq_entropy(u, inv_t, spherical)
    np.testing.assert_allclose(got, _lfq_entropy_reference(u64, inv_t, scale), rtol=2e-4,
                               atol=1e-5)


def test_lfq_module_loss_is_the_weighted_entropies_and_commitment():
  z = jax.random.normal(jax.random.key(0), (4, 5, 5, 8))
  module = quantizers.LFQ(8, entropy_weight=0.2, diversity_gamma=0.5, commitment=0.25)
  codes, aux = module.apply({}, z, train=True)
  expected = (0.2 * (aux["per_sample_entropy"] - 0.5 * aux["batch_entropy"])
              + 0.25 * jnp.mean(jnp.sum(jnp.square(z - codes), -1)))
  np.testing.assert_allclose(aux["loss"], expected, rtol=1e-6)
  assert "batch_entropy" not in module.apply({}, z, train=False)[1]


@pytest.mark.parametrize("make", [
    lambda: quantizers.VectorQuantizer(16, codebook_init="kmeans"),
    lambda: quantizers.VectorQuantizer(16, codebook_init="kmeans", ema_decay=0.9),
    lambda: quantizers.SoftVectorQuantizer(16, codebook_init="kmeans", log_var_init=-4.0),
])
def test_the_residual_error_does_not_grow_with_the_stages(make):
  z = jax.random.normal(jax.random.key(0), (512, 6))
  module = quantizers.ResidualQuantizer([make() for _ in range(4)])
  variables = module.init(jax.random.key(1), z, train=False)
  _, state = module.apply(variables, z, train=True, mutable=["ema"])
  z_q, aux = module.apply({**variables, **state}, z, train=False)
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
  second = _fsq_reference(np.asarray(z) - first, (5, 5, 5, 5))
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


def test_nnx_modules_agree_with_linen():
  z = jax.random.normal(jax.random.key(0), (16, 4))
  for linen, native in ((quantizers.FSQ(LEVELS), vq_nnx.FSQ(LEVELS)),
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


@pytest.mark.parametrize("build,message", [
    (lambda: quantizers.FSQ((8, 1)), "levels must be"),
    (lambda: quantizers.FSQ(()), "levels must be"),
    (lambda: vq_nnx.FSQ((2 ** 16, 2 ** 16)), "more than int32"),
    (lambda: quantizers.LFQ(0), "dim must be an integer in"),
    (lambda: vq_nnx.LFQ(40), "dim must be an integer in"),
    (lambda: quantizers.ResidualQuantizer([]), "at least one"),
    (lambda: quantizers.ResidualQuantizer([quantizers.FSQ((3,))], quantizer_dropout=2.0),
     "quantizer_dropout"),
])
def test_bad_options_are_one_error(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_wrong_latent_size_is_one_error():
  with pytest.raises(ValueError, match="last dimension must be the codeword size 4"):
    quantizers.FSQ(LEVELS).apply({}, jnp.ones((2, 3)), train=False)
  with pytest.raises(ValueError, match="last dimension must be the codeword size 6"):
    vq_nnx.LFQ(6)(jnp.ones((2, 3)), train=False)
