"""k-means codebook initialisation and the restart of dead codewords."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import quantizers
from softvq_jax.quantizers import codebook_health as health
from softvq_jax.quantizers import core
from tests.quantizers import helpers


@pytest.mark.slow
def test_dead_code_restart_revives_an_unused_codeword():
  module = quantizers.VectorQuantizer(4, ema_decay=0.9, dead_code_threshold=0.5)
  z = jax.random.normal(jax.random.key(0), (32, 3))
  variables = module.init(helpers.RNGS, z, train=False)
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
  random = core.uniform_unit_scaling(jax.random.key(0), (8, 5))
  data = z[:8]
  inertia = lambda codebook: float(health.kmeans_inertia(z, codebook))
  assert inertia(kmeans) < 0.05 < inertia(data) < inertia(random)
  module = quantizers.SoftVectorQuantizer(8, codebook_init="kmeans")
  assert inertia(helpers.ready(module, z)["params"]["codebook"]) < 0.05
