"""Linear probe on raw MNIST pixels with and without feature standardisation.

Chooses the probe's input scaling on a validation split (10000 training
images held out; the test split is not touched):

  python -m experiments.analyses.probe_standardisation --data_dir=../shared/datasets/mnist

Prints one JSON object per variant.
"""

import json
import sys
import time

from absl import app
from absl import flags
import ml_collections

from softvq_jax import evaluation
from softvq_jax.data import input_pipeline

flags.DEFINE_string("data_dir", "../shared/datasets/mnist", "Official MNIST files.")
flags.DEFINE_integer("seed", 0, "Probe seed.")
FLAGS = flags.FLAGS


def main(_):
  data = input_pipeline.load(ml_collections.ConfigDict(dict(
      name="mnist", source="files", dir=FLAGS.data_dir, verify_md5=True,
      pixel_range="unit", validation_size=10000)))
  train_x = data.train_images.reshape(len(data.train_images), -1)
  val_x = data.eval_images.reshape(len(data.eval_images), -1)
  settings = dict(num_classes=10, steps=30000, batch_size=128, learning_rate=0.01,
                  seed=FLAGS.seed)
  for variant, standardize in (("standardised", True), ("raw_pixels", False)):
    t0 = time.time()
    acc = evaluation.linear_probe(train_x, data.train_labels, val_x, data.eval_labels,
                                  standardize=standardize, **settings)
    print(json.dumps({"variant": variant, "split": data.eval_split, "probe_acc": acc,
                      "seconds": round(time.time() - t0, 1)}))
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
