"""Prepares tfds's mnist (array_record) from the official files on disk.

  pip install -e '.[tfds]'   # Preparing needs TensorFlow.
  python -m experiments.benchmarks.prepare_tfds_mnist_offline \
      --mnist_dir=../shared/datasets/mnist --tfds_data_dir=TFDS_DIR

For a machine without internet: the files are served on 127.0.0.1 and tfds's
MNIST URL points there, so tfds downloads, checks and prepares them as it
would from its mirror; then the library's own tfds reader
(``input_pipeline._tfds``) reads both splits. Prints the wall time. The
loading benchmark reads the result: ``python -m experiments.benchmarks.benchmark
--parts=loading --tfds_data_dir=TFDS_DIR``.
"""

import functools
import http.server
import threading
import time

from absl import app
from absl import flags
from tensorflow_datasets.image_classification import mnist

from softvq_jax.data import input_pipeline

flags.DEFINE_string("mnist_dir", "../shared/datasets/mnist", "The official MNIST .gz files.")
flags.DEFINE_string("tfds_data_dir", None, "The tfds data_dir to prepare into.")
flags.mark_flag_as_required("tfds_data_dir")
FLAGS = flags.FLAGS


def main(_):
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=FLAGS.mnist_dir)
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  mnist.MNIST.URL = f"http://127.0.0.1:{server.server_address[1]}/"
  t0 = time.time()
  raw = input_pipeline._tfds("mnist", FLAGS.tfds_data_dir)  # pylint: disable=protected-access
  print(f"prepared and read in {time.time() - t0:.1f} s:",
        {split: images.shape for split, (images, _) in raw.items()})
  server.shutdown()


if __name__ == "__main__":
  app.run(main)
