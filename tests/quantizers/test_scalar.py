"""FSQ and LFQ / BSQ against float64 references and their defining properties."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers
from softvq_jax.quantizers import nnx as vq_nnx
from softvq_jax.quantizers import scalar as sq
from tests.quantizers import helpers


def test_fsq_matches_the_float64_reference_and_lies_on_the_grid():
  z = 3.0 * np.random.default_rng(0).normal(size=(500, len(helpers.FSQ_LEVELS)))
  codes, indices = sq.fsq(jnp.asarray(z, jnp.float32), helpers.FSQ_LEVELS)
  np.testing.assert_allclose(codes, helpers.fsq_reference(z, helpers.FSQ_LEVELS), atol=1e-6)
  grid = [(np.arange(l) - l // 2) / (l // 2) for l in helpers.FSQ_LEVELS]
  for i, points in enumerate(grid):  # Every code on its dimension's L_i levels.
    assert np.all(np.min(np.abs(np.asarray(codes)[:, i, None] - points), axis=-1) < 1e-6)
  all_codes = np.array(list(itertools.product(*grid)))
  all_indices = sq.fsq_indices(jnp.asarray(all_codes), helpers.FSQ_LEVELS)
  assert sorted(np.asarray(all_indices).tolist()) == list(range(int(np.prod(helpers.FSQ_LEVELS))))
  np.testing.assert_allclose(sq.fsq_codes(all_indices, helpers.FSQ_LEVELS), all_codes, atol=1e-6)
  np.testing.assert_allclose(sq.fsq_codes(indices, helpers.FSQ_LEVELS), codes, atol=1e-6)


def test_fsq_gradient_is_the_bounds():
  z = jnp.linspace(-2, 2, 4 * 7).reshape(7, 4)
  grad = jax.grad(lambda z: jnp.sum(sq.fsq(z, helpers.FSQ_LEVELS)[0]))(z)
  levels = np.asarray(helpers.FSQ_LEVELS, np.float64)
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


@pytest.mark.slow
def test_lfq_module_loss_is_the_weighted_entropies_and_commitment():
  z = jax.random.normal(jax.random.key(0), (4, 5, 5, 8))
  module = quantizers.LFQ(8, entropy_weight=0.2, diversity_gamma=0.5, commitment=0.25)
  codes, aux = module.apply({}, z, train=True)
  expected = (0.2 * (aux["per_sample_entropy"] - 0.5 * aux["batch_entropy"])
              + 0.25 * jnp.mean(jnp.sum(jnp.square(z - codes), -1)))
  np.testing.assert_allclose(aux["loss"], expected, rtol=1e-6)
  assert "batch_entropy" not in module.apply({}, z, train=False)[1]


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
    quantizers.FSQ(helpers.FSQ_LEVELS).apply({}, jnp.ones((2, 3)), train=False)
  with pytest.raises(ValueError, match="last dimension must be the codeword size 6"):
    vq_nnx.LFQ(6)(jnp.ones((2, 3)), train=False)
