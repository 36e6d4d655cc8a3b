"""heads / separate_codebook_per_head: each head is quantized as on its own, against float64
references and against one-head quantizers run per head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers
from tests.quantizers import helpers

HEADS, K, C = 3, 8, 2


def _z(n=40, seed=0):
  return jnp.asarray(helpers.clustered(n, k=K, d=HEADS * C, seed=seed))


def _nearest64(x, codebook):
  """Float64 nearest codewords of rows ``x`` ``(n, c)`` in ``codebook`` ``(K, c)``."""
  x, codebook = np.float64(x), np.float64(codebook)
  return np.argmin(((x[:, None] - codebook[None]) ** 2).sum(-1), axis=1)


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.slow
def test_each_head_takes_its_nearest_codeword(separate):
  z = _z()
  vq = quantizers.VectorQuantizer(K, heads=HEADS, separate_codebook_per_head=separate)
  variables = vq.init(helpers.PARAMS_RNG, z, train=False)
  codebook = np.asarray(variables["params"]["codebook"])
  assert codebook.shape == ((HEADS,) if separate else ()) + (K, C)
  z_q, aux = vq.apply(variables, z, train=False)
  parts = np.asarray(z).reshape(-1, HEADS, C)
  for h in range(HEADS):
    table = codebook[h] if separate else codebook
    expected = _nearest64(parts[:, h], table)
    np.testing.assert_array_equal(aux["indices"][:, h], expected)
    np.testing.assert_allclose(np.asarray(z_q).reshape(-1, HEADS, C)[:, h], table[expected],
                               atol=1e-6)  # z + sg(z_q - z) in float32.
  np.testing.assert_allclose(vq.apply(variables, aux["indices"], method=vq.embed), z_q,
                             atol=1e-6)
  assert np.shape(aux["perplexity"]) == ((HEADS,) if separate else ())


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.slow
def test_separate_codebooks_train_as_one_quantizer_per_head(kind):
  """Heads with separate EMA codebooks take the steps of ``heads`` one-head
  quantizers, each on its part of z: outputs, losses and state."""
  z = _z()
  kwargs = dict(ema_decay=0.9, codebook_init="kmeans")
  multi = helpers.LINEN[kind](K, heads=HEADS, separate_codebook_per_head=True, **kwargs)
  variables = helpers.ready(multi, z)
  single = helpers.LINEN[kind](K, **kwargs)
  parts = [z[:, h * C:(h + 1) * C] for h in range(HEADS)]
  singles = [{"ema": {name: value[h] for name, value in variables["ema"].items()
                      if name != "initialized"} | {"initialized": variables["ema"]["initialized"]},
              **({"params": {n: v[h] for n, v in variables["params"].items()}}
                 if "params" in variables else {})} for h in range(HEADS)]
  for _ in range(2):
    out, aux, variables = helpers.train(multi, variables, z)
    results = [helpers.train(single, singles[h], parts[h]) for h in range(HEADS)]
    singles = [r[2] for r in results]
    np.testing.assert_allclose(out, jnp.concatenate([r[0] for r in results], -1), atol=1e-6)
    np.testing.assert_array_equal(aux["indices"], jnp.stack([r[1]["indices"] for r in results],
                                                            -1))
    np.testing.assert_allclose(aux["loss"], np.mean([r[1]["loss"] for r in results]), rtol=1e-5)
    np.testing.assert_allclose(aux["perplexity"], [r[1]["perplexity"] for r in results],
                               rtol=1e-6)
    for name in ("cluster_size", "embed_sum", "codebook"):
      np.testing.assert_allclose(variables["ema"][name],
                                 np.stack([s["ema"][name] for s in singles]), rtol=1e-6,
                                 atol=1e-6)


def test_soft_heads_posterior_is_eq5_per_head_in_float64():
  z = _z(12)
  vq = quantizers.SoftVectorQuantizer(K, heads=HEADS, separate_codebook_per_head=True,
                                      log_var_init=-1.0)
  variables = vq.init(helpers.PARAMS_RNG, z, train=False)
  z_hat, aux = vq.apply(variables, z, train=False)
  codebook = np.float64(variables["params"]["codebook"])
  parts = np.float64(z).reshape(-1, HEADS, C)
  for h in range(HEADS):
    logits = -0.5 * ((parts[:, h, None] - codebook[h][None]) ** 2).sum(-1) / np.exp(-1.0)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(aux["probs"][:, h], probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(z_hat).reshape(-1, HEADS, C)[:, h],
                               probs @ codebook[h], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.slow
def test_heads_with_codebook_dim_project_and_embed_back(separate):
  z = _z()
  vq = quantizers.VectorQuantizer(K, heads=4, codebook_dim=3, separate_codebook_per_head=separate,
                                  ema_decay=0.9, dead_code_threshold=0.5)
  variables = vq.init(helpers.PARAMS_RNG, z, train=False)
  assert variables["params"]["project_in"].shape == (HEADS * C, 12)
  out, aux, variables = helpers.train(vq, variables, z, rngs=helpers.RNGS)
  assert aux["indices"].shape == (40, 4)
  z_q, aux = vq.apply(variables, z, train=False)
  np.testing.assert_allclose(vq.apply(variables, aux["indices"], method=vq.embed), z_q,
                             atol=1e-6)


@pytest.mark.slow
def test_masked_rows_change_no_head_state():
  z, mask = _z(), jnp.arange(40) < 30
  vq = quantizers.VectorQuantizer(K, heads=HEADS, separate_codebook_per_head=True,
                                  ema_decay=0.9, codebook_init="data")
  variables = helpers.ready(vq, z, mask=mask)
  garbage = z.at[30:].set(1e3)
  _, aux, trained = helpers.train(vq, variables, garbage, mask=mask)
  _, aux_kept, kept = helpers.train(vq, helpers.ready(vq, z[:30]), z[:30])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), trained, kept)
  np.testing.assert_allclose(aux["loss"], aux_kept["loss"], rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(heads=4), "heads=4 must divide"),
    (dict(heads=2, separate_codebook_per_head=False), None),
])
def test_heads_that_do_not_divide_d_are_one_error(kwargs, message):
  z = jnp.ones((2, 6))
  vq = quantizers.VectorQuantizer(K, **kwargs)
  if message is None:
    assert vq.init(helpers.PARAMS_RNG, z, train=False)["params"]["codebook"].shape == (K, 3)
    return
  with pytest.raises(ValueError, match=message):
    vq.init(helpers.PARAMS_RNG, z, train=False)


def test_embed_needs_one_index_per_head():
  z = _z()
  vq = quantizers.VectorQuantizer(K, heads=HEADS)
  variables = vq.init(helpers.PARAMS_RNG, z, train=False)
  with pytest.raises(ValueError, match="last axis of 3 heads"):
    vq.apply(variables, jnp.zeros((4,), jnp.int32), method=vq.embed)
  with pytest.raises(ValueError, match="indices must lie in"):
    quantizers.VectorQuantizer(K, heads=HEADS, separate_codebook_per_head=True).apply(
        variables | {"params": {"codebook": jnp.zeros((HEADS, K, C))}},
        jnp.full((4, HEADS), K), method="embed")
