"""The t-SNE figures' cost: scikit-learn's Barnes-Hut against openTSNE.

  taskset -c 0 python -m experiments.benchmarks.tsne_timing \
      --mnist_dir=../shared/datasets/mnist \
      --out=experiments/results/tsne_timing/tsne_timing_cpu

Embeds the first ``--num_points`` MNIST test images (the table's ``raw``
panel, as ``softvq_jax.launch.figures.tsne`` draws it: 2000 on MNIST), and
the latents of any ``--latents`` files (a run's ``latents.npz``), with each
method, one thread, ``--repeats`` times (seeds 0, 1, ...). Per method and
input: seconds per embedding (median), and what the figure shows, so that
a faster method is kept only if it shows the same: the trustworthiness of
the embedding (``sklearn.manifold.trustworthiness``, 10 neighbours) and the
leave-one-out accuracy of 10-nearest-neighbour labels in 2-D (how well the
classes separate). Writes ``OUT.jsonl``.

* ``sklearn_bh``: ``sklearn.manifold.TSNE`` as the launcher calls it
  (Barnes-Hut, PCA start, perplexity 30);
* ``opentsne_bh`` / ``opentsne_fft``: openTSNE's Barnes-Hut and its
  FFT-accelerated interpolation (FIt-SNE), PCA start, perplexity 30, if
  openTSNE is installed.
"""

import importlib.util

from absl import app
from absl import flags
import numpy as np

from experiments.common import jsonl
from experiments.common import mnist_arrays
from experiments.common import tsne_scores
from softvq_jax.launch import figures

flags.DEFINE_string("mnist_dir", "../shared/datasets/mnist",
                    "The official MNIST files; empty: embed only --latents.")
flags.DEFINE_list("latents", [], "latents.npz files of finished runs to embed too.")
flags.DEFINE_integer("num_points", 2000, "Points per embedding (config.eval.tsne_points).")
flags.DEFINE_integer("repeats", 3, "Embeddings per method and input, seeds 0, 1, ...")
flags.DEFINE_string("out", None, "Path prefix of the JSONL output.")
FLAGS = flags.FLAGS

PERPLEXITY = 30.0


def sklearn_bh(x: np.ndarray, seed: int) -> np.ndarray:
  """The launcher's own embedding (``figures.tsne_embedding``) of every point."""
  return figures.tsne_embedding(x, len(x), seed)


def opentsne(method: str):
  def embed(x: np.ndarray, seed: int) -> np.ndarray:
    import openTSNE  # pylint: disable=import-outside-toplevel
    return np.asarray(openTSNE.TSNE(n_components=2, perplexity=PERPLEXITY, initialization="pca",
                                    negative_gradient_method=method, n_jobs=1,
                                    random_state=seed).fit(x))
  return embed


def inputs():
  """``(name, points, labels)``: the raw test pixels, then each latents file."""
  if FLAGS.mnist_dir:
    images = mnist_arrays.load(FLAGS.mnist_dir)[1][:FLAGS.num_points]
    labels = mnist_arrays.load_labels(FLAGS.mnist_dir)[1][:FLAGS.num_points]
    yield "mnist_raw", images.reshape(len(images), -1), labels
  for path in FLAGS.latents:
    with np.load(path, allow_pickle=False) as stored:
      yield path, stored["latents"][:FLAGS.num_points], stored["labels"][:FLAGS.num_points]


def main(_):
  methods = {"sklearn_bh": sklearn_bh}
  if importlib.util.find_spec("openTSNE"):
    methods.update(opentsne_bh=opentsne("bh"), opentsne_fft=opentsne("fft"))
  lines = []
  for name, x, labels in inputs():
    for method, embed in methods.items():
      jsonl.emit(lines, {"input": name, "method": method,
                         **tsne_scores.measure(embed, x, labels, FLAGS.repeats)})
  jsonl.write(lines, FLAGS.out and FLAGS.out + ".jsonl")


if __name__ == "__main__":
  app.run(main)
