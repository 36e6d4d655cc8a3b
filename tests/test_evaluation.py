"""Clustering accuracy, NMI, K-means on either backend and the linear probe."""

import ml_collections
import numpy as np
import pytest

from softvq_jax import evaluation


@pytest.mark.parametrize("y_true,y_pred,expected", [
    ([0, 0, 1, 1], [1, 1, 0, 0], 100.0),  # Relabelled clusters are perfect.
    ([0, 0, 1, 1], [0, 1, 0, 1], 50.0),
    ([0, 0, 0, 1, 1, 2], [2, 2, 0, 1, 1, 1], 4 / 6 * 100),
    ([0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1], 4 / 6 * 100),  # Fewer clusters than classes.
    ([0, 0, 1, 1], [0, 1, 2, 3], 50.0),  # More clusters than classes.
    ([0, 1, 2, 3], [5, 5, 5, 5], 25.0),
])
def test_clustering_accuracy(y_true, y_pred, expected):
  assert evaluation.clustering_accuracy(np.array(y_true), np.array(y_pred)) == \
      pytest.approx(expected)


@pytest.mark.parametrize("y_true,y_pred,expected", [
    ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),
    ([0, 0, 1, 1], [0, 1, 0, 1], 0.0),
    # H(y) = log 2, H(c) = 1.5 log 2, I = log 2 (c determines y): 2I / (H + H).
    ([0, 0, 1, 1], [0, 0, 1, 2], 2 * np.log(2) / (np.log(2) + 1.5 * np.log(2))),
])
def test_nmi_arithmetic(y_true, y_pred, expected):
  assert evaluation.nmi(np.array(y_true), np.array(y_pred)) == pytest.approx(expected)


def blobs(seed, n=300, d=5, classes=3, spread=0.3):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, d)) * 4
  labels = rng.integers(0, classes, n)
  return (centres[labels] + spread * rng.normal(size=(n, d))).astype(np.float32), labels


def eval_config(**kw):
  config = ml_collections.ConfigDict(dict(kmeans_inits=5, num_clusters=0, probe_steps=300,
                                          probe_batch_size=64, probe_learning_rate=0.01,
                                          kmeans_backend="auto"))
  config.update(kw)
  return config


def test_separable_blobs_are_solved_and_deterministic():
  train_x, train_y = blobs(0)
  test_x, test_y = blobs(0, n=100)
  a = evaluation.evaluate(train_x, train_y, test_x, test_y, eval_config(), 3, seed=1)
  b = evaluation.evaluate(train_x, train_y, test_x, test_y, eval_config(), 3, seed=1)
  assert a == b
  assert a["clustering_acc"] == 100.0 and a["nmi"] == pytest.approx(1.0)
  assert a["ari"] == pytest.approx(1.0) and a["probe_acc"] == 100.0


def test_probe_on_random_labels_is_near_chance():
  rng = np.random.default_rng(0)
  train_x, test_x = rng.normal(size=(2000, 8)), rng.normal(size=(1000, 8))
  acc = evaluation.linear_probe(train_x, rng.integers(0, 4, 2000), test_x,
                                rng.integers(0, 4, 1000), num_classes=4, steps=500,
                                batch_size=64, learning_rate=0.01, seed=0)
  assert 20.0 < acc < 30.0


def test_a_diverged_probe_or_non_finite_latents_are_errors_not_numbers():
  train_x, train_y = blobs(0)
  test_x, test_y = blobs(0, n=100)
  with pytest.raises(FloatingPointError, match="the linear probe diverged"):
    evaluation.linear_probe(train_x, train_y, test_x, test_y, num_classes=3, steps=50,
                            batch_size=64, learning_rate=3e38, seed=0)
  test_x[3, 1] = np.nan
  with pytest.raises(FloatingPointError, match="evaluation representations hold non-finite"):
    evaluation.evaluate(train_x, train_y, test_x, test_y, eval_config(), 3, seed=1)


def inertia(x, ids):
  """Sum of squared distances to the cluster means, in float64."""
  x = np.asarray(x, np.float64)
  return sum(((x[ids == c] - x[ids == c].mean(0)) ** 2).sum() for c in np.unique(ids))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "sklearn"])
def test_kmeans_keeps_best_inertia(backend):
  x, _ = blobs(2, classes=4, spread=1.5)
  many = evaluation.kmeans(x, 4, num_inits=20, seed=0, backend=backend)
  single = [evaluation.kmeans(x, 4, num_inits=1, seed=s, backend=backend) for s in range(5)]
  assert inertia(x, many) <= min(inertia(x, s) for s in single) + 1e-3


@pytest.mark.parametrize("n,d,k", [(500, 2, 4), (300, 64, 25)])
@pytest.mark.slow
def test_jax_kmeans_matches_sklearn_inertia(n, d, k):
  x, labels = blobs(0, n=n, d=d, classes=k, spread=2.0)
  ours = evaluation.kmeans(x, k, num_inits=10, seed=0, backend="jax")
  theirs = evaluation.kmeans(x, k, num_inits=10, seed=0, backend="sklearn")
  assert inertia(x, ours) <= 1.005 * inertia(x, theirs)
  assert evaluation.clustering_accuracy(labels, ours) >= evaluation.clustering_accuracy(
      labels, theirs) - 2.0


def test_probe_ignores_features_constant_in_training():
  train_x, train_y = blobs(3)
  test_x, test_y = blobs(3, n=100)
  blank = lambda x, v: np.concatenate([x, np.full((len(x), 1), v, np.float32)], axis=1)
  kwargs = dict(num_classes=3, steps=300, batch_size=64, learning_rate=0.01, seed=0)
  # A pixel that is always 0 in training but not at test time must not swamp the logits.
  acc = evaluation.linear_probe(blank(train_x, 0.0), train_y, blank(test_x, 0.5), test_y,
                                **kwargs)
  assert acc == evaluation.linear_probe(train_x, train_y, test_x, test_y, **kwargs) == 100.0
