"""The pure VQ functions (eqs. 1, 5-7, 27, EMA, statistics) against float64 numpy and limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from softvq_jax.model import variational
from softvq_jax.quantizers import functional
from softvq_jax.quantizers import scalar
from softvq_jax.quantizers import streaming
from softvq_jax.quantizers.functional import hard_quantize
from softvq_jax.quantizers.functional import soft_quantize


def numpy_soft_quantize(z, codebook, log_var):
  """Eqs. (5)-(7) in float64, straight from the definitions."""
  z, codebook, log_var = (np.asarray(a, np.float64) for a in (z, codebook, log_var))
  d = z.shape[-1]
  var = np.exp(log_var)
  sq = ((z[..., None, :] - codebook) ** 2).sum(-1)
  log_lik = -sq / (2 * var) - 0.5 * d * np.log(2 * np.pi * var)  # eq. (5)
  log_joint = np.log(1.0 / codebook.shape[0]) + log_lik  # uniform prior, eq. (7)
  probs = np.exp(log_joint - scipy.special.logsumexp(log_joint, axis=-1, keepdims=True))
  return probs @ codebook, probs  # eq. (6)


def random_inputs(seed, n, k, d, scale):
  rng = np.random.default_rng(seed)
  z = scale * rng.normal(size=(n, d))
  codebook = scale * rng.normal(size=(k, d))
  # Variances on the scale of the squared distances keep the posterior soft.
  log_var = 2 * np.log(scale) + np.log(d) + rng.uniform(-1, 1, size=(n, k))
  return [np.asarray(a, np.float32) for a in (z, codebook, log_var)]


@pytest.mark.parametrize("n,k,d,scale", [
    (5, 3, 2, 1.0),
    (64, 16, 8, 1.0),
    (32, 128, 64, 1.0),
    (16, 1024, 64, 1.0),
    (32, 128, 64, 1e2),
    (16, 1024, 64, 1e2),
])
def test_soft_quantize_matches_float64(n, k, d, scale):
  z, codebook, log_var = random_inputs(n + k, n, k, d, scale)
  z_hat, probs = soft_quantize(z, codebook, log_var)
  ref_z_hat, ref_probs = numpy_soft_quantize(z, codebook, log_var)
  np.testing.assert_allclose(probs, ref_probs, atol=2e-5)
  np.testing.assert_allclose(z_hat, ref_z_hat, atol=2e-4 * scale, rtol=1e-4)
  assert 1 / k - 1e-6 <= float(np.max(ref_probs)) < 1 - 1e-3  # Posterior is soft.


@pytest.mark.parametrize("log_var", [-12.0, -20.0, -30.0])
def test_small_sigma_recovers_hard_quantize(log_var):
  z, codebook, _ = random_inputs(0, 50, 32, 8, 1.0)
  log_var = np.full((50, 32), log_var, np.float32)
  z_hat, probs = soft_quantize(z, codebook, log_var)
  z_q, indices = hard_quantize(z, codebook)
  np.testing.assert_array_equal(np.argmax(probs, -1), indices)
  np.testing.assert_allclose(z_hat, z_q, atol=1e-5)
  np.testing.assert_allclose(np.max(probs, -1), 1.0, atol=1e-6)


@pytest.mark.parametrize("rows", [
    [[3.0, 1.0, 1.0, 2.0]],  # A tie: the first.
    [[0.0, 0.0, 5.0, 0.0]],  # Zero distances (a latent on duplicated codewords).
    [[2.0, np.nan, 1.0, np.nan]],  # A NaN row: its first NaN, as argmin.
    [[np.inf, np.inf, np.inf, np.inf], [np.nan] * 4],
    np.random.default_rng(0).integers(0, 3, (2, 5, 7)).astype(np.float32),  # Many ties.
])
def test_nearest_indices_is_numpys_argmin(rows):
  rows = np.asarray(rows, np.float32)
  expected = np.argmin(rows, axis=-1)
  for fn in (functional.nearest_indices, jax.jit(functional.nearest_indices)):
    np.testing.assert_array_equal(fn(rows), expected)
  flat = rows.reshape(-1, rows.shape[-1])
  np.testing.assert_array_equal(jax.vmap(functional.nearest_indices)(flat), expected.reshape(-1))
  assert functional.nearest_indices(rows).dtype == jnp.int32


def test_hard_quantize_hand_computed():
  codebook = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
  z = jnp.array([[0.1, 0.1], [0.9, -0.3], [0.2, 1.5], [5.0, 0.0]])
  z_q, indices = hard_quantize(z, codebook)
  np.testing.assert_array_equal(indices, [0, 1, 2, 1])
  np.testing.assert_array_equal(z_q, codebook[jnp.array([0, 1, 2, 1])])
  assert indices.dtype == jnp.int32


@pytest.mark.parametrize("log_var", [-2.0, 0.0, 3.0])
def test_equal_variances_far_away_z_picks_best_direction(log_var):
  _, codebook, _ = random_inputs(1, 1, 16, 4, 1.0)
  direction = np.array([1.0, -2.0, 0.5, 0.0], np.float32)
  z = 1e3 * direction[None]
  z_hat, probs = soft_quantize(z, codebook, np.full((1, 16), log_var, np.float32))
  best = np.argmax(codebook @ direction)
  assert np.all(np.isfinite(probs))
  np.testing.assert_allclose(probs[0, best], 1.0, atol=1e-6)
  np.testing.assert_allclose(z_hat[0], codebook[best], atol=1e-5)


def test_equal_huge_variances_give_codebook_mean():
  z, codebook, _ = random_inputs(2, 10, 8, 4, 1.0)
  z_hat, probs = soft_quantize(z, codebook, np.full((10, 8), 30.0, np.float32))
  np.testing.assert_allclose(probs, 1 / 8, atol=1e-6)
  np.testing.assert_allclose(z_hat, np.broadcast_to(codebook.mean(0), z_hat.shape), atol=1e-6)


def test_equal_variances_make_normalizers_agree():
  z, codebook, _ = random_inputs(3, 10, 8, 4, 1.0)
  log_var = np.full((10, 8), 0.3, np.float32)
  paper = jax.nn.softmax(functional.soft_assignment_logits(z, codebook, log_var, "paper"))
  notebook = jax.nn.softmax(functional.soft_assignment_logits(z, codebook, log_var, "notebook"))
  np.testing.assert_allclose(paper, notebook, atol=1e-6)


@pytest.mark.parametrize("quantize", ["hard", "soft"])
def test_straight_through_jacobian_is_identity(quantize):
  z, codebook, log_var = random_inputs(4, 3, 8, 5, 1.0)

  def decoder_input(z_e):
    z_sg = jax.lax.stop_gradient(z_e)
    z_q = hard_quantize(z_sg, codebook)[0] if quantize == "hard" else \
        soft_quantize(z_sg, codebook, log_var)[0]
    return functional.straight_through(z_e, z_q)

  jac = jax.jacobian(decoder_input)(z)  # (3, 5, 3, 5)
  np.testing.assert_array_equal(jac.reshape(15, 15), np.eye(15))


@pytest.mark.parametrize("term,expect_z,expect_codebook", [
    ("codebook", False, True),
    ("commitment", True, False),
])
def test_vq_terms_route_gradients(term, expect_z, expect_codebook):
  z, codebook, log_var = random_inputs(5, 6, 8, 4, 1.0)

  def loss(z_e, cb):
    z_q = soft_quantize(jax.lax.stop_gradient(z_e), cb, log_var)[0]
    return functional.codebook_loss(z_e, z_q) if term == "codebook" else \
        functional.commitment_loss(z_e, z_q, 0.25)

  g_z, g_cb = jax.grad(loss, argnums=(0, 1))(z, codebook)
  assert bool(np.any(g_z != 0)) == expect_z
  assert bool(np.any(g_cb != 0)) == expect_codebook


def test_vq_terms_hand_computed():
  z = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  z_q = jnp.array([[0.0, 0.0], [3.0, 4.0]])
  assert float(functional.codebook_loss(z, z_q)) == pytest.approx((5 + 25) / 2)
  assert float(functional.commitment_loss(z, z_q, 0.5)) == pytest.approx(0.5 * 15)


@pytest.mark.parametrize("assignments,perplexity", [
    ([[1, 0, 0, 0], [0, 1, 0, 0]], 2.0),
    ([[0.25] * 4, [0.25] * 4], 4.0),
    ([[1, 0, 0, 0], [1, 0, 0, 0]], 1.0),
])
def test_perplexity(assignments, perplexity):
  average = jnp.mean(jnp.array(assignments, jnp.float32), axis=0)
  assert float(functional.perplexity(average)) == pytest.approx(perplexity, rel=1e-5)


def test_index_counts_and_usage():
  counts = functional.index_counts(jnp.array([[0, 3], [3, 3]]), 8)
  np.testing.assert_array_equal(counts, [1, 0, 0, 3, 0, 0, 0, 0])
  assert float(functional.usage(counts)) == 2 / 8


@pytest.mark.parametrize("hard", [False, True])
def test_ema_update_hand_computed(hard):
  z = jnp.array([[2.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
  indices = jnp.array([0, 0, 1])
  sums = (functional.index_sums(z, indices, 2) if hard
          else functional.assignment_sums(z, jax.nn.one_hot(indices, 2)))
  size, embed_sum, codebook = functional.ema_codebook_step(jnp.ones(2), jnp.zeros((2, 2)),
                                                           *sums, decay=0.5, eps=0.0)
  np.testing.assert_allclose(size, [1.5, 1.0])
  np.testing.assert_allclose(embed_sum, [[3.0, 0.0], [0.0, 3.0]])
  np.testing.assert_allclose(codebook, [[2.0, 0.0], [0.0, 3.0]])


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 3, 4)])
def test_leading_shapes_jit_vmap_grad(shape):
  rng = np.random.default_rng(0)
  z = rng.normal(size=shape).astype(np.float32)
  codebook = rng.normal(size=(5, 4)).astype(np.float32)
  log_var = rng.normal(size=shape[:-1] + (5,)).astype(np.float32)
  z_hat, probs = jax.jit(soft_quantize)(z, codebook, log_var)
  assert z_hat.shape == shape and probs.shape == shape[:-1] + (5,)
  z_q, idx = jax.jit(hard_quantize)(z, codebook)
  assert z_q.shape == shape and idx.shape == shape[:-1]
  flat_hat, _ = soft_quantize(z.reshape(-1, 4), codebook, log_var.reshape(-1, 5))
  np.testing.assert_allclose(z_hat.reshape(-1, 4), flat_hat, atol=1e-6)
  vmapped, _ = jax.vmap(soft_quantize, in_axes=(0, None, 0))(z, codebook, log_var)
  np.testing.assert_allclose(vmapped, z_hat, atol=1e-6)
  vq, _ = jax.vmap(hard_quantize, in_axes=(0, None))(z, codebook)
  np.testing.assert_array_equal(vq, z_q)
  grads = jax.grad(lambda *a: soft_quantize(*a)[0].sum(), argnums=(0, 1, 2))(
      z, codebook, log_var)
  assert all(np.all(np.isfinite(g)) for g in grads)
  kl = variational.gaussian_kl(z, z)
  assert kl.shape == shape[:-1]


@pytest.mark.parametrize("with_grad", [False, True])
def test_soft_quantize_memory_is_linear_in_nk(with_grad):
  n, k, d = 4096, 1024, 64
  args = (jnp.zeros((n, d)), jnp.zeros((k, d)), jnp.zeros((n, k)))
  fn = soft_quantize
  if with_grad:
    fn = jax.grad(lambda *a: soft_quantize(*a)[0].sum(), argnums=(0, 1, 2))
  memory = jax.jit(fn).lower(*args).compile().memory_analysis()
  # An (N, K, d) float32 intermediate alone would be 1 GiB.
  assert memory.temp_size_in_bytes < 256 * 2**20


def test_directional_reparam_value_and_gradients_in_float64():
  """DiVeQ: z + ||c - z|| sg(u); at variance 0 the value is c, d/dz = I - ..., d/dc through the
  distance alone, against the hand-derived float64 gradients."""
  rng = np.random.default_rng(0)
  z, c, g = (rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3))
  key = jax.random.key(0)
  out = functional.directional_reparam(key, z, c, 0.0)
  np.testing.assert_allclose(out, c, rtol=1e-5, atol=1e-6)
  grad_z, grad_c = jax.grad(
      lambda z, c: jnp.sum(g * functional.directional_reparam(key, z, c, 0.0)), (0, 1))(z, c)
  e = np.float64(c) - np.float64(z)
  u = e / np.linalg.norm(e, axis=-1, keepdims=True)
  along = np.sum(np.float64(g) * u, -1, keepdims=True) * u  # (g . u) d||e||/dc.
  np.testing.assert_allclose(grad_c, along, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_z, np.float64(g) - along, rtol=1e-5, atol=1e-6)
  noisy = functional.directional_reparam(key, z, c, 0.5)
  np.testing.assert_allclose(np.linalg.norm(noisy - z, axis=-1), np.linalg.norm(e, axis=-1),
                             rtol=1e-5)  # The noise turns the step, never lengthens it.
  assert not np.allclose(noisy, c, atol=1e-3)


def test_a_nan_latent_is_index_minus_one_and_a_nan_output():
  z = jnp.asarray([[0.0, 0.1], [jnp.nan, 0.0], [jnp.inf, 1.0], [1.0, 1.0]])
  codebook = jnp.asarray([[0.0, 0.0], [1.0, 1.0]])
  for quantize in (hard_quantize, jax.jit(hard_quantize)):
    z_q, indices = quantize(z, codebook)
    np.testing.assert_array_equal(indices, [0, -1, -1, 1])
    z_q = np.asarray(z_q)
    assert np.all(np.isnan(z_q[1:3])) and np.all(np.isfinite(z_q[[0, 3]]))
  for codes, indices in (scalar.fsq(z, (5, 5))[:2], scalar.lfq(z)[:2],
                         jax.jit(lambda z: scalar.lfq(z, spherical=True))(z)[:2]):
    np.testing.assert_array_equal(np.asarray(indices)[[1, 2]], [-1, -1])
    assert np.all(np.asarray(indices)[[0, 3]] >= 0)
    codes = np.asarray(codes)
    assert np.all(np.isnan(codes[1:3])) and np.all(np.isfinite(codes[[0, 3]]))


@pytest.mark.parametrize("log_var", [-1e4, -100.0, -88.0, 88.0, 1e4])
@pytest.mark.slow
def test_soft_quantization_is_finite_at_any_finite_log_variance(log_var):
  """The limits: a one-hot posterior on the nearest codeword as sigma^2 -> 0, a flat one as
  sigma^2 -> infinity; never a NaN (also with codewords too far for float32)."""
  z = jnp.asarray([[0.1, 0.0], [0.9, 1.2], [3e3, -3e3]])
  codebook = jnp.asarray([[0.0, 0.0], [1.0, 1.0], [-2.0, 5.0]])
  for normalizer in functional.NORMALIZERS:
    z_hat, probs = soft_quantize(z, codebook, jnp.full((3,), log_var), normalizer)
    assert np.all(np.isfinite(z_hat)) and np.all(np.isfinite(probs))
    chunked = streaming.soft_quantize_chunked(z, codebook, jnp.full((3,), log_var),
                                              normalizer, chunk_size=2)
    np.testing.assert_allclose(chunked, z_hat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.sum(probs, -1), 1.0, rtol=1e-6)
    if log_var < 0:
      np.testing.assert_allclose(probs[:2], np.eye(3)[[0, 1]], atol=1e-6)
    else:
      np.testing.assert_allclose(probs, np.full((3, 3), 1 / 3), rtol=1e-5)
    grads = jax.grad(lambda v: jnp.sum(soft_quantize(z, codebook, v, normalizer)[0]))(
        jnp.full((3,), log_var))
    assert np.all(np.isfinite(grads))
