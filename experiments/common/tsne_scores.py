"""How long a 2-D embedding takes, and what it shows: neighbours kept
(trustworthiness) and classes apart (10-nearest-neighbour labels), for
``experiments/benchmarks/tsne_timing.py``."""

import statistics
import time

import numpy as np
import sklearn.manifold
import sklearn.neighbors


def shows(x: np.ndarray, labels: np.ndarray, xy: np.ndarray) -> dict:
  """What an embedding shows: neighbours kept, and classes apart."""
  knn = sklearn.neighbors.KNeighborsClassifier(11).fit(xy, labels)
  neighbours = knn.kneighbors(xy, return_distance=False)[:, 1:]  # Leave the point out.
  votes = [np.bincount(labels[row], minlength=labels.max() + 1).argmax() for row in neighbours]
  return {"trustworthiness": float(sklearn.manifold.trustworthiness(x, xy, n_neighbors=10)),
          "knn10_accuracy": float(np.mean(np.asarray(votes) == labels))}


def measure(embed, x: np.ndarray, labels: np.ndarray, repeats: int) -> dict:
  """``embed(x, seed)`` for seeds 0..repeats-1: its median seconds, and what
  it shows (``shows``), averaged."""
  seconds, shown = [], []
  for seed in range(repeats):
    start = time.perf_counter()
    xy = embed(x, seed)
    seconds.append(time.perf_counter() - start)
    shown.append(shows(x, labels, xy))
  return {"num_points": len(x), "seconds": statistics.median(seconds), "all_seconds": seconds,
          **{k: statistics.mean(s[k] for s in shown) for k in shown[0]}}
