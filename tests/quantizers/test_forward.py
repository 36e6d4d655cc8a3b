"""The VQ forward passes' options against float64 references: the rotation trick, cosine
codebooks, a low-dimensional codebook, orthogonal regularisation and padding masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers
from softvq_jax.quantizers import functional
from tests.quantizers import helpers


@pytest.mark.slow
def test_rotation_trick_forward_is_vq_and_its_gradient_is_the_rotation():
  z = np.random.default_rng(0).normal(size=(20, 5))
  plain = quantizers.VectorQuantizer(7)
  rotated = plain.clone(rotation_trick=True)
  variables = plain.init(helpers.PARAMS_RNG, z, train=False)
  out = rotated.apply(variables, z, train=False)[0]
  np.testing.assert_allclose(out, plain.apply(variables, z, train=False)[0], atol=1e-6)
  g = np.random.default_rng(1).normal(size=z.shape)
  grad = jax.grad(lambda z: jnp.sum(rotated.apply(variables, z, train=False)[0] * g))(
      jnp.asarray(z, jnp.float32))
  q = np.asarray(out, np.float64)
  for e, q_row, g_row, got in zip(z, q, g, np.asarray(grad)):  # Fifty et al., eq. 4.
    u, q_hat = e / np.linalg.norm(e), q_row / np.linalg.norm(q_row)
    r = (u + q_hat) / np.linalg.norm(u + q_hat)
    rotation = np.eye(5) - 2 * np.outer(r, r) + 2 * np.outer(q_hat, u)
    np.testing.assert_allclose(rotation @ e, np.linalg.norm(e) * q_hat, atol=1e-9)
    scale = np.linalg.norm(q_row) / np.linalg.norm(e)
    np.testing.assert_allclose(got, scale * rotation.T @ g_row, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.slow
def test_cosine_codebooks_quantize_directions(kind):
  cls = quantizers.VectorQuantizer if kind == "hard" else quantizers.SoftVectorQuantizer
  module = cls(9, cosine=True, **({} if kind == "hard" else {"log_var_init": -3.0}))
  z = np.random.default_rng(0).normal(size=(40, 4)) * np.linspace(0.1, 10, 40)[:, None]
  variables = module.init(helpers.PARAMS_RNG, z, train=False)
  out, aux = module.apply(variables, z, train=False)
  table = np.asarray(variables["params"]["codebook"], np.float64)
  table /= np.linalg.norm(table, axis=-1, keepdims=True)
  cosines = (z / np.linalg.norm(z, axis=-1, keepdims=True)) @ table.T
  np.testing.assert_array_equal(aux["indices"], np.argmax(cosines, -1))  # Scale-free.
  if kind == "hard":
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(module.apply(variables, aux["indices"], method=module.embed),
                               out, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [quantizers.VectorQuantizer, quantizers.SoftVectorQuantizer])
def test_a_low_dimensional_codebook_projects_in_and_out(cls):
  module = cls(16, codebook_dim=3)
  z = jax.random.normal(jax.random.key(0), (2, 5, 5, 12))
  variables = module.init(helpers.PARAMS_RNG, z, train=False)
  params = variables["params"]
  assert params["codebook"].shape == (16, 3) and params["project_in"].shape == (12, 3)
  out, aux = module.apply(variables, z, train=False)
  assert out.shape == z.shape
  low = np.asarray(z).reshape(-1, 12) @ params["project_in"] + params["project_in_bias"]
  nearest = np.argmin(((low[:, None] - np.asarray(params["codebook"])) ** 2).sum(-1), -1)
  if cls is quantizers.VectorQuantizer:
    np.testing.assert_array_equal(np.asarray(aux["indices"]).reshape(-1), nearest)
    np.testing.assert_allclose(module.apply(variables, aux["indices"], method=module.embed),
                               out, atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(module.apply({**variables, "params": p}, z,
                                                  train=False)[0]))(params)
  assert float(jnp.abs(grads["project_in"]).sum()) > 0  # Straight through, then projected.


def test_orthogonal_regularisation_matches_the_pairwise_definition():
  codebook = np.random.default_rng(0).normal(size=(12, 5))
  normed = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
  expected = np.mean((normed @ normed.T) ** 2) - 1 / 12
  np.testing.assert_allclose(functional.orthogonal_loss(jnp.asarray(codebook)), expected, rtol=1e-5)
  np.testing.assert_allclose(functional.orthogonal_loss(jnp.eye(5)), 0.0, atol=1e-7)
  module = quantizers.VectorQuantizer(12, orthogonal_weight=0.5)
  z = jnp.ones((3, 5))
  _, aux = module.apply({"params": {"codebook": codebook}}, z, train=False)
  plain = module.clone(orthogonal_weight=0.0).apply({"params": {"codebook": codebook}}, z,
                                                    train=False)[1]
  np.testing.assert_allclose(aux["loss"] - plain["loss"], 0.5 * expected, rtol=1e-4)


MASKED_MODULES = [
    lambda: quantizers.VectorQuantizer(6, ema_decay=0.8, codebook_init="kmeans",
                                       dead_code_threshold=0.3),
    lambda: quantizers.SoftVectorQuantizer(6, ema_decay=0.8, codebook_init="data"),
    lambda: quantizers.SoftVectorQuantizer(6, codebook_init="kmeans", chunk_size=4),
    lambda: quantizers.FSQ((5, 4, 3)),
    lambda: quantizers.LFQ(3, commitment=0.5),
    lambda: quantizers.ResidualQuantizer([
        quantizers.SoftVectorQuantizer(6, ema_decay=0.8, codebook_init="kmeans"),
        quantizers.FSQ((5, 4, 3)), quantizers.LFQ(3, commitment=0.5)]),
]


@pytest.mark.slow
@pytest.mark.parametrize("make", MASKED_MODULES)
def test_masked_positions_change_nothing(make):
  module = make()
  rng = np.random.default_rng(0)
  z = rng.normal(size=(40, 3)).astype(np.float32)
  padded = np.concatenate([z[:17], 1e3 * rng.normal(size=(9, 3)), z[17:]]).astype(np.float32)
  mask = np.arange(49) < 17
  mask[26:] = True
  variables = module.init(helpers.PARAMS_RNG, z, train=False)
  rngs = {"noise": jax.random.key(3)}
  ones = np.ones(40, bool)
  ref = helpers.train(module, helpers.initialize(module, variables, z, mask=ones), z,
                      mask=ones, rngs=rngs)
  got = helpers.train(module, helpers.initialize(module, variables, padded, mask=mask), padded,
                      mask=mask, rngs=rngs)
  for key in ("loss", "codebook_loss", "commitment_loss", "perplexity", "usage",
              "per_sample_entropy", "batch_entropy", "residual_norms"):
    if key in ref[1]:
      np.testing.assert_allclose(got[1][key], ref[1][key], rtol=1e-5, err_msg=key)
  # The start (params included) and the statistics; restarts draw rows anew.
  restarts = "dead_code_fraction" in ref[1]
  drawn = lambda path: restarts and path[-1].key in ("codebook", "embed_sum")
  jax.tree_util.tree_map_with_path(
      lambda path, a, b: drawn(path) or np.testing.assert_allclose(
          a, b, rtol=1e-5, atol=1e-6, err_msg=str(path)), got[2], ref[2])
  for table in jax.tree_util.tree_leaves(got[2]):  # No padded row became a codeword.
    assert np.abs(np.asarray(table, np.float32)).max() < 100


@pytest.mark.parametrize("build", [
    lambda: quantizers.VectorQuantizer(16, ema_decay=0.9, dead_code_threshold=0.5),
    lambda: quantizers.SoftVectorQuantizer(16, ema_decay=0.9, log_var_init=0.0),
    lambda: quantizers.SoftVectorQuantizer(16, ema_decay=0.9, log_var_init=0.0, chunk_size=5),
    lambda: quantizers.VectorQuantizer(16, ema_decay=0.9, codebook_init="kmeans", heads=2,
                                       separate_codebook_per_head=True),
])
@pytest.mark.slow
def test_a_nan_in_a_batch_leaves_the_state_finite_and_skips_its_rows(build):
  """Issue 37's repro: one NaN element in one training batch; the rows that hold one are
  left out of the state (as if masked), get index -1, and are counted."""
  z = jax.random.normal(jax.random.key(0), (64, 8))
  bad = z.at[0, 0].set(jnp.nan).at[0, 7].set(jnp.nan)  # One in each head.
  bad = bad.at[5, 3].set(jnp.inf).at[5, 4].set(jnp.nan)
  module = build()
  variables = helpers.ready(module, bad)  # The start skips them too.
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(variables))
  _, aux, trained = helpers.train(module, variables, bad, rngs=helpers.RNGS)
  assert np.all(np.asarray(aux["indices"])[[0, 5]] == -1)
  assert np.all(np.asarray(aux["nonfinite_rows"]) == 2)
  mask = jnp.ones(64, bool).at[0].set(False).at[5].set(False)
  _, _, masked = helpers.train(module, variables, z, mask=mask, rngs=helpers.RNGS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               trained, masked)
  z_q, aux = module.apply(trained, z, train=False)
  assert np.all(np.isfinite(z_q)) and np.all(np.asarray(aux["indices"]) >= 0)
