"""The linen modules as a model uses them: embed, dtypes, the state collection, several devices."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers
from softvq_jax.model import bottlenecks
from softvq_jax.quantizers import functional
from softvq_jax.quantizers import streaming
from tests.quantizers import helpers


@pytest.mark.parametrize("scale", [1.0, 1e2])
def test_bfloat16_matches_float32_without_nan(scale):
  z, codebook, log_var, _ = helpers.random_problem(64, 32, 16, scale)
  log_var = log_var + 2 * np.log(scale)  # Variances on the latents' scale.
  z16, cb16 = jnp.asarray(z, jnp.bfloat16), jnp.asarray(codebook, jnp.bfloat16)
  # References on the bf16-rounded inputs in float32: differences are then
  # the outputs' bf16 rounding alone.
  z_r, cb_r = np.asarray(z16, np.float32), np.asarray(cb16, np.float32)
  outputs = {
      "hard": (functional.hard_quantize(z16, cb16)[0], functional.hard_quantize(z_r, cb_r)[0]),
      "soft": (functional.soft_quantize(z16, cb16, log_var)[0],
               functional.soft_quantize(z_r, cb_r, log_var)[0]),
      "probs": (functional.soft_quantize(z16, cb16, log_var)[1],
                functional.soft_quantize(z_r, cb_r, log_var)[1]),
      "chunked": (streaming.soft_quantize_chunked(z16, cb16, log_var, chunk_size=8),
                  functional.soft_quantize(z_r, cb_r, log_var)[0]),
      "lookup": (functional.lookup(cb16, jnp.arange(5)), cb_r[:5]),
  }
  for name, (low, ref) in outputs.items():
    assert low.dtype == jnp.bfloat16, name
    low = np.asarray(low, np.float32)
    assert np.all(np.isfinite(low)), name
    np.testing.assert_allclose(low, ref, rtol=2 ** -7, atol=2 ** -7 * scale, err_msg=name)
  np.testing.assert_array_equal(functional.hard_quantize(z16, cb16)[1],
                                functional.hard_quantize(z_r, cb_r)[1])
  assert functional.squared_distances(z16, cb16).dtype == jnp.float32
  assert functional.codebook_loss(z16, cb16[:64 // 2].repeat(2, 0)).dtype == jnp.float32


@pytest.mark.parametrize("module", [
    quantizers.VectorQuantizer(12), quantizers.VectorQuantizer(12, ema_decay=0.9),
    quantizers.SoftVectorQuantizer(12), quantizers.SoftVectorQuantizer(12, ema_decay=0.9),
    bottlenecks.VQ(4, 12), bottlenecks.SoftVQ(4, 12)])
@pytest.mark.slow
def test_embed_round_trip(module):
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  variables = module.init(helpers.RNGS, x, train=False)
  z_q, aux = module.apply(variables, x, train=False)
  codewords = module.apply(variables, aux["indices"], method=module.embed)
  assert codewords.shape == (2, 3, 3, 4)
  if not isinstance(module, (quantizers.SoftVectorQuantizer, bottlenecks.SoftVQ)):
    np.testing.assert_allclose(codewords, z_q, atol=1e-6)
  codebook = variables["params" if module.ema_decay is None else "ema"]["codebook"]
  np.testing.assert_array_equal(codewords, codebook[aux["indices"]])


@pytest.mark.parametrize("module", [quantizers.VectorQuantizer(8, dtype=jnp.bfloat16),
                                    quantizers.SoftVectorQuantizer(8, dtype=jnp.bfloat16)])
def test_modules_keep_float32_parameters_and_return_their_dtype(module):
  x = 100.0 * jax.random.normal(jax.random.key(0), (16, 4))
  variables = helpers.ready(module, x)
  floats = [v for v in jax.tree.leaves(variables) if jnp.issubdtype(v.dtype, jnp.floating)]
  assert floats and all(v.dtype == jnp.float32 for v in floats)
  (z_q, aux), _ = module.apply(variables, x, train=True, rngs={"noise": jax.random.key(2)},
                               mutable=["ema"])
  assert z_q.dtype == jnp.bfloat16 and aux["loss"].dtype == jnp.float32
  assert np.isfinite(float(aux["loss"]))


@pytest.mark.parametrize("module", [quantizers.VectorQuantizer(8, ema_decay=0.9),
                                    quantizers.SoftVectorQuantizer(8, ema_decay=0.9)])
def test_training_an_ema_codebook_without_a_mutable_collection_is_an_error(module):
  x = jax.random.normal(jax.random.key(0), (6, 4))
  variables = helpers.ready(module, x)
  with pytest.raises(ValueError, match="mutable=\\['ema'\\]"):
    module.apply(variables, x, train=True, rngs={"noise": jax.random.key(1)})
  module.apply(variables, x, train=False)  # Evaluation needs no mutable collection.


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
      if cls is quantizers.SoftVectorQuantizer:
        kwargs["log_var_init"] = 0.0
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
  result = helpers.on_4_devices("-c", EMA_ON_4_DEVICES)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.slow
def test_tokenizer_example_agrees_on_one_device_jit_and_shard_map():
  result = helpers.on_4_devices("-m", "experiments.analyses.tokenizer_example", "--mode=all",
                                "--steps=10", "--num_codewords=8")
  assert result.returncode == 0, result.stderr[-3000:]
  gaps = [line for line in result.stdout.splitlines() if " vs single: " in line]
  assert [line.split()[0] for line in gaps] == ["jit", "shard_map"]
  for line in gaps:
    parameters = float(line.split("difference ")[1].split(",")[0])
    mse = float(line.split("test MSE difference ")[1])
    assert parameters < 1e-3 and mse < 1e-5, line
  assert result.stdout.count("test reconstruction MSE") == 3


def test_simvq_codebook_is_the_frozen_one_times_the_learned_map():
  z = jax.random.normal(jax.random.key(0), (64, 4))
  vq = quantizers.SimVQ(16)
  assert vq.rotation_trick and vq.options.codebook_transform
  variables = vq.init(helpers.PARAMS_RNG, z, train=False)
  frozen = np.float64(variables["ema"]["frozen_codebook"])
  transform = np.float64(variables["params"]["codebook_transform"])
  assert set(variables["params"]) == {"codebook_transform"}  # The frozen codebook is state.
  np.testing.assert_allclose(vq.apply(variables, jnp.arange(16), method=vq.embed),
                             frozen @ transform, rtol=1e-5, atol=1e-6)

  def loss(params):
    (z_q, aux) = vq.apply({**variables, "params": params}, z, train=True)  # No mutable state.
    return aux["loss"] + jnp.mean(jnp.square(z_q - z))

  params, losses = variables["params"], []
  for _ in range(30):
    value, grads = jax.value_and_grad(loss)(params)
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    losses.append(float(value))
  assert losses[-1] < 0.8 * losses[0]
  usage = vq.apply({**variables, "params": params}, z, train=False)[1]["usage"]
  assert usage > 0.5, usage


def test_directional_reparam_trains_the_codebook_through_the_output():
  z = jax.random.normal(jax.random.key(0), (32, 4))
  vq = quantizers.VectorQuantizer(8, directional_reparam=True)
  variables = vq.init(helpers.PARAMS_RNG, z, train=False)
  (z_q, aux) = vq.apply(variables, z, train=False)
  assert aux["loss"] == 0  # No eq. (27) terms: the estimator trains both sides.
  grads = jax.grad(lambda p: jnp.sum(vq.apply({"params": p}, z, train=True, rngs=helpers.RNGS)[0]))(
      variables["params"])
  used = np.zeros(8, bool)
  used[np.asarray(aux["indices"])] = True
  assert np.all(np.abs(grads["codebook"]).sum(-1)[used] > 0)
  assert np.all(grads["codebook"][~used] == 0)
