"""Quantizers for other models: streaming soft VQ, mixed precision, embed,
EMA across devices, codebook health."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import bottlenecks as bn
from softvq_jax import codebook_health as health
from softvq_jax import layers
from softvq_jax import quantizer_core
from softvq_jax import quantizers
from softvq_jax import streaming

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNGS = {"params": jax.random.key(0), "noise": jax.random.key(1)}


def _data(n, k, d, scale=1.0, seed=0):
  rng = np.random.default_rng(seed)
  return (scale * rng.normal(size=(n, d)).astype(np.float32),
          scale * rng.normal(size=(k, d)).astype(np.float32),
          (0.5 * rng.normal(size=(k,))).astype(np.float32),
          rng.normal(size=(n, d)).astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("n,k,d,chunk,normalizer", [
    (37, 50, 5, 16, "paper"),  # Both N and K padded.
    (9, 7, 3, 1024, "paper"),  # Chunk larger than K.
    (300, 96, 16, 32, "notebook"),
])
def test_chunked_equals_dense_values_and_gradients(n, k, d, chunk, normalizer):
  z, codebook, log_var, g = _data(n, k, d)
  dense = lambda *a: jnp.sum(bn.soft_quantize(*a, normalizer)[0] * g)
  chunked = lambda *a: jnp.sum(streaming.soft_quantize_chunked(*a, normalizer, chunk) * g)
  np.testing.assert_allclose(
      streaming.soft_quantize_chunked(z, codebook, log_var, normalizer, chunk),
      bn.soft_quantize(z, codebook, log_var, normalizer)[0], atol=2e-6, rtol=1e-5)
  for a, b in zip(jax.grad(chunked, (0, 1, 2))(z, codebook, log_var),
                  jax.grad(dense, (0, 1, 2))(z, codebook, log_var)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_chunked_leading_shape_and_log_var_shape():
  z, codebook, log_var, _ = _data(24, 10, 4)
  out = streaming.soft_quantize_chunked(z.reshape(2, 3, 4, 4), codebook, log_var, chunk_size=4)
  np.testing.assert_allclose(out.reshape(24, 4),
                             streaming.soft_quantize_chunked(z, codebook, log_var, chunk_size=4))
  per_latent = np.random.default_rng(1).normal(size=(2, 3, 4, 10)).astype(np.float32)
  np.testing.assert_allclose(
      streaming.soft_quantize_chunked(z.reshape(2, 3, 4, 4), codebook, per_latent, chunk_size=4),
      bn.soft_quantize(z.reshape(2, 3, 4, 4), codebook, per_latent)[0], atol=2e-6)


def test_chunked_memory_at_large_k_stays_under_1_gib():
  n, k, d = 65536, 16384, 256  # N x K float32 alone is 4 GiB.
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (k, d), (k,))]
  grad = jax.grad(lambda *a: jnp.sum(streaming.soft_quantize_chunked(*a)), argnums=(0, 1, 2))
  memory = jax.jit(grad).lower(*args).compile().memory_analysis()
  assert memory.temp_size_in_bytes < 2 ** 30


@pytest.mark.parametrize("scale", [1.0, 1e2])
def test_bfloat16_matches_float32_without_nan(scale):
  z, codebook, log_var, _ = _data(64, 32, 16, scale)
  log_var = log_var + 2 * np.log(scale)  # Variances on the latents' scale.
  z16, cb16 = jnp.asarray(z, jnp.bfloat16), jnp.asarray(codebook, jnp.bfloat16)
  # References on the bf16-rounded inputs in float32: differences are then
  # the outputs' bf16 rounding alone.
  z_r, cb_r = np.asarray(z16, np.float32), np.asarray(cb16, np.float32)
  outputs = {
      "hard": (bn.hard_quantize(z16, cb16)[0], bn.hard_quantize(z_r, cb_r)[0]),
      "soft": (bn.soft_quantize(z16, cb16, log_var)[0], bn.soft_quantize(z_r, cb_r, log_var)[0]),
      "probs": (bn.soft_quantize(z16, cb16, log_var)[1], bn.soft_quantize(z_r, cb_r, log_var)[1]),
      "chunked": (streaming.soft_quantize_chunked(z16, cb16, log_var, chunk_size=8),
                  bn.soft_quantize(z_r, cb_r, log_var)[0]),
      "lookup": (bn.lookup(cb16, jnp.arange(5)), cb_r[:5]),
  }
  for name, (low, ref) in outputs.items():
    assert low.dtype == jnp.bfloat16, name
    low = np.asarray(low, np.float32)
    assert np.all(np.isfinite(low)), name
    np.testing.assert_allclose(low, ref, rtol=2 ** -7, atol=2 ** -7 * scale, err_msg=name)
  np.testing.assert_array_equal(bn.hard_quantize(z16, cb16)[1], bn.hard_quantize(z_r, cb_r)[1])
  assert bn.squared_distances(z16, cb16).dtype == jnp.float32
  assert bn.codebook_loss(z16, cb16[:64 // 2].repeat(2, 0)).dtype == jnp.float32


@pytest.mark.parametrize("module", [
    quantizers.VectorQuantizer(12), quantizers.VectorQuantizer(12, ema_decay=0.9),
    quantizers.SoftVectorQuantizer(12), quantizers.SoftVectorQuantizer(12, ema_decay=0.9),
    layers.VQ(4, 12), layers.SoftVQ(4, 12)])
def test_embed_round_trip(module):
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  variables = module.init(RNGS, x, train=False)
  z_q, aux = module.apply(variables, x, train=False)
  codewords = module.apply(variables, aux["indices"], method=module.embed)
  assert codewords.shape == (2, 3, 3, 4)
  if not isinstance(module, (quantizers.SoftVectorQuantizer, layers.SoftVQ)):
    np.testing.assert_allclose(codewords, z_q, atol=1e-6)
  codebook = variables["params" if module.ema_decay is None else "ema"]["codebook"]
  np.testing.assert_array_equal(codewords, codebook[aux["indices"]])


@pytest.mark.parametrize("module", [quantizers.VectorQuantizer(8, dtype=jnp.bfloat16),
                                    quantizers.SoftVectorQuantizer(8, dtype=jnp.bfloat16)])
def test_modules_keep_float32_parameters_and_return_their_dtype(module):
  x = 100.0 * jax.random.normal(jax.random.key(0), (16, 4))
  variables = module.init(RNGS, x, train=False)
  floats = [v for v in jax.tree.leaves(variables) if jnp.issubdtype(v.dtype, jnp.floating)]
  assert floats and all(v.dtype == jnp.float32 for v in floats)
  (z_q, aux), _ = module.apply(variables, x, train=True, rngs={"noise": jax.random.key(2)},
                               mutable=["ema"])
  assert z_q.dtype == jnp.bfloat16 and aux["loss"].dtype == jnp.float32
  assert np.isfinite(float(aux["loss"]))


def test_soft_log_var_is_an_argument_or_fitted_on_the_first_training_batch():
  x = jax.random.normal(jax.random.key(0), (6, 4))
  module = quantizers.SoftVectorQuantizer(5)
  variables = module.init(RNGS, x, train=False)
  np.testing.assert_array_equal(variables["params"]["log_var"], np.zeros(5))
  _, state = module.apply(variables, x, train=True, mutable=["ema"])
  log_var = variables["params"]["log_var"] + state["ema"]["log_var_offset"]
  codebook = np.asarray(variables["params"]["codebook"])
  nearest = np.min(np.sum((np.asarray(x)[:, None] - codebook[None]) ** 2, axis=-1), axis=1)
  np.testing.assert_allclose(log_var, np.full(5, np.log(nearest.mean() / 4)), rtol=1e-5)
  given = module.clone(variance="sample").init(RNGS, x, jnp.zeros((6, 5)), train=False)
  assert set(given["params"]) == {"codebook"}
  # A per-codeword log-variance is eq. (5) with sigma_k: compare by hand.
  _, aux = module.apply({**variables, **state}, x, train=False)
  expected = jax.nn.softmax(-0.5 * bn.squared_distances(x, codebook) / np.exp(log_var), -1)
  np.testing.assert_allclose(aux["probs"], expected, atol=1e-6)


@pytest.mark.parametrize("module", [quantizers.VectorQuantizer(8, ema_decay=0.9),
                                    quantizers.SoftVectorQuantizer(8, ema_decay=0.9)])
def test_training_an_ema_codebook_without_a_mutable_collection_is_an_error(module):
  x = jax.random.normal(jax.random.key(0), (6, 4))
  variables = module.init(RNGS, x, train=False)
  with pytest.raises(ValueError, match="mutable=\\['ema'\\]"):
    module.apply(variables, x, train=True, rngs={"noise": jax.random.key(1)})
  module.apply(variables, x, train=False)  # Evaluation needs no mutable collection.


def test_soft_ema_statistics_are_weighted_by_the_posterior():
  z = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  probs = jnp.array([[0.75, 0.25], [0.5, 0.5]])
  size, embed_sum, _ = bn.ema_codebook_step(jnp.zeros(2), jnp.zeros((2, 2)),
                                            *bn.assignment_sums(z, probs), decay=0.5, eps=0.0)
  np.testing.assert_allclose(size, [0.5 * 1.25, 0.5 * 0.75])
  np.testing.assert_allclose(embed_sum, [[0.5 * 0.75, 0.5 * 1.0], [0.5 * 0.25, 0.5 * 1.0]])


@pytest.mark.slow
def test_dead_code_restart_revives_an_unused_codeword():
  module = quantizers.VectorQuantizer(4, ema_decay=0.9, dead_code_threshold=0.5)
  z = jax.random.normal(jax.random.key(0), (32, 3))
  variables = module.init(RNGS, z, train=False)
  ema = dict(variables["ema"])
  far = jnp.full((3,), 1e3)  # No encoding is near: codeword 2 is never used.
  ema["codebook"] = ema["codebook"].at[2].set(far)
  ema["embed_sum"] = ema["embed_sum"].at[2].set(far * 0.1)
  ema["cluster_size"] = ema["cluster_size"].at[2].set(0.1)
  (_, aux), updated = module.apply({"ema": ema}, z, train=True, mutable=["ema"],
                                   rngs={"noise": jax.random.key(5)})
  assert float(aux["dead_code_fraction"]) == 0.25
  revived = updated["ema"]["codebook"][2]
  assert jnp.min(jnp.sum(jnp.square(z - revived), axis=-1)) < 1e-10  # An encoding.
  assert float(updated["ema"]["cluster_size"][2]) == 0.5
  _, aux = module.apply(updated, z, train=False)
  assert 2 in set(np.asarray(aux["indices"]).tolist())


@pytest.mark.slow
def test_kmeans_init_beats_random_init_on_clustered_data():
  rng = np.random.default_rng(0)
  centres = 10.0 * rng.normal(size=(8, 5))
  z = (centres[rng.integers(0, 8, 800)] + 0.1 * rng.normal(size=(800, 5))).astype(np.float32)
  kmeans = health.kmeans_codebook(jax.random.key(0), z, 8)
  random = quantizer_core.uniform_unit_scaling(jax.random.key(0), (8, 5))
  data = z[:8]
  inertia = lambda codebook: float(health.kmeans_inertia(z, codebook))
  assert inertia(kmeans) < 0.05 < inertia(data) < inertia(random)
  module = quantizers.SoftVectorQuantizer(8, codebook_init="kmeans")
  variables = module.init(RNGS, z, train=False)
  _, state = module.apply(variables, z, train=True, mutable=["ema"])
  assert inertia(variables["params"]["codebook"] + state["ema"]["codebook_offset"]) < 0.05


EMA_ON_4_DEVICES = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from softvq_jax import quantizers
    assert jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    z = jax.random.normal(jax.random.key(0), (4, 6, 3))  # 4 shards of 6 latents.
    rngs = {"params": jax.random.key(1), "noise": jax.random.key(2)}
    for cls in (quantizers.VectorQuantizer, quantizers.SoftVectorQuantizer):
      kwargs = dict(ema_decay=0.5, dead_code_threshold=0.8)
      one = cls(5, **kwargs)
      variables = one.init(rngs, z.reshape(24, 3), train=False)
      ema = dict(variables["ema"])  # A starved codeword, restarted in this step.
      ema["cluster_size"] = ema["cluster_size"].at[1].set(0.1)
      variables = {**variables, "ema": ema}
      (out, aux), ref = one.apply(variables, z.reshape(24, 3), train=True, mutable=["ema"],
                                  rngs={"noise": jax.random.key(3)})
      sharded = cls(5, axis_name="batch", **kwargs)
      def step(variables, z):
        (out, aux), new = sharded.apply(variables, z[0], train=True, mutable=["ema"],
                                        rngs={"noise": jax.random.key(3)})
        return out[None], aux["perplexity"], aux["usage"], new
      out4, perplexity, usage, new = jax.jit(jax.shard_map(
          step, mesh=mesh, in_specs=(P(), P("batch")),
          out_specs=(P("batch"), P(), P(), P())))(variables, z)
      for name in ("cluster_size", "embed_sum"):
        np.testing.assert_allclose(new["ema"][name], ref["ema"][name], rtol=1e-5, atol=1e-5)
      # The restarted codewords too: each takes the same row of the batch.
      assert np.any(ref["ema"]["cluster_size"] == 0.8)
      np.testing.assert_allclose(new["ema"]["codebook"], ref["ema"]["codebook"],
                                 rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(out4.reshape(24, 3), out, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(perplexity, aux["perplexity"], rtol=1e-5)
      np.testing.assert_allclose(usage, aux["usage"])
    print("ok")
    """)


@pytest.mark.slow
def test_ema_with_axis_name_on_4_devices_equals_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", EMA_ON_4_DEVICES], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.slow
def test_tokenizer_example_agrees_on_one_device_jit_and_shard_map():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "experiments/tokenizer_example.py", "--mode=all", "--steps=10",
       "--num_codewords=8"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-3000:]
  gaps = [line for line in result.stdout.splitlines() if " vs single: " in line]
  assert [line.split()[0] for line in gaps] == ["jit", "shard_map"]
  for line in gaps:
    parameters = float(line.split("difference ")[1].split(",")[0])
    mse = float(line.split("test MSE difference ")[1])
    assert parameters < 1e-3 and mse < 1e-5, line
  assert result.stdout.count("test reconstruction MSE") == 3
