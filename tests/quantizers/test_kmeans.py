"""K-means in JAX: k-means++ and Lloyd, every initialisation in one program."""

import jax
import numpy as np

from softvq_jax.quantizers import kmeans as kmeans_lib


def test_jax_kmeans_returns_consistent_labels_and_inertia():
  rng = np.random.default_rng(1)  # 5 overlapping blobs.
  centres = 4 * rng.normal(size=(5, 8))
  x = (centres[rng.integers(0, 5, 400)] + rng.normal(size=(400, 8))).astype(np.float32)
  fit = kmeans_lib.kmeans(jax.random.key(3), x, 5, num_inits=4)
  distances = ((x[:, None].astype(np.float64) - np.asarray(fit.centres)[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(np.asarray(fit.labels), distances.argmin(-1))
  np.testing.assert_allclose(float(fit.inertia), distances.min(-1).sum(), rtol=1e-4)
  # A centre is the mean of its points (Lloyd's fixed point, to the tolerance).
  for c in range(5):
    np.testing.assert_allclose(np.asarray(fit.centres)[c], x[fit.labels == c].mean(0),
                               atol=1e-2)
