"""The JAX K-means against scikit-learn's on real MNIST.

  python -m experiments.analyses.kmeans_agreement --latents=WORKDIR/latents.npz \
      --mnist_dir=../shared/datasets/mnist \
      --out=experiments/results/kmeans_agreement/kmeans_agreement_cpu.jsonl

For each input (a run's test-split latents, ``latents.npz``, and the raw test
pixels of MNIST) prints one JSON line: the best inertia of each backend over
``--inits`` initialisations (recomputed in float64 from the labels), their
relative difference, clustering ACC and NMI of each, and the wall time of
each (JAX: first call, with compilation, and a second call).
"""

import time

from absl import app
from absl import flags
import jax
import numpy as np

from experiments.common import jsonl
from softvq_jax import evaluation
from softvq_jax.data import input_pipeline
from softvq_jax.launch import presets

flags.DEFINE_list("latents", [], "latents.npz files of trained runs.")
flags.DEFINE_string("mnist_dir", None, "Official MNIST files: also cluster the raw test pixels.")
flags.DEFINE_integer("inits", 100, "K-means initialisations.")
flags.DEFINE_integer("seed", 0, "K-means seed.")
flags.DEFINE_string("out", None, "Also write the JSON lines to this file.")
FLAGS = flags.FLAGS


def inertia(x: np.ndarray, labels: np.ndarray) -> float:
  x = np.asarray(x, np.float64)
  return float(sum(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum()
                   for c in np.unique(labels)))


def compare(name: str, x: np.ndarray, y: np.ndarray, num_clusters: int) -> dict:
  row = {"input": name, "points": int(x.shape[0]), "dims": int(x.shape[1]),
         "inits": FLAGS.inits, "device": jax.devices()[0].device_kind}
  for backend in ("jax", "sklearn"):
    times = []
    for _ in range(2 if backend == "jax" else 1):
      t0 = time.perf_counter()
      labels = evaluation.kmeans(x, num_clusters, FLAGS.inits, FLAGS.seed, backend)
      times.append(time.perf_counter() - t0)
    row[f"{backend}_inertia"] = inertia(x, labels)
    row[f"{backend}_acc"] = evaluation.clustering_accuracy(y, labels)
    row[f"{backend}_nmi"] = evaluation.nmi(y, labels)
    row[f"{backend}_seconds"] = times
  row["inertia_relative_difference"] = (row["jax_inertia"] / row["sklearn_inertia"]) - 1
  return row


def main(_):
  inputs = []
  for path in FLAGS.latents:
    with np.load(path) as data:
      inputs.append((path, data["latents"].astype(np.float32), data["labels"]))
  if FLAGS.mnist_dir:
    config = presets.get_base_config().data
    config.name, config.source, config.dir = "mnist", "files", FLAGS.mnist_dir
    splits = input_pipeline.load(config)
    inputs.append(("mnist test pixels", splits.eval_images.reshape(len(splits.eval_images), -1),
                   splits.eval_labels))
  lines = []
  for name, x, y in inputs:
    jsonl.emit(lines, compare(name, x, y, num_clusters=10))
  jsonl.write(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
