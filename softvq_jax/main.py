"""Trains and evaluates one autoencoder.

  python -m softvq_jax.main --config=configs/digits.py --workdir=/tmp/digits
  python -m softvq_jax.main --config=configs/mnist.py:vq_vae \
      --config.data.source=files --config.data.dir=../shared/datasets/mnist \
      --workdir=/tmp/mnist_vq

Bad input (an invalid key, missing data, a workdir of another config) ends in
a one-line error and exit status 2 before anything is written; a run that
stops on its way (a non-finite loss, a failed checkpoint save, Ctrl-C) ends
in one line naming the last good checkpoint (``softvq_jax.launch.cli``). One
launcher at a time holds a workdir (``locks.lock``).

Several processes: start the same command in each with ``--distributed``
(``softvq_jax.launch.distributed``).
"""

from softvq_jax.launch import cli

with cli.interruptible_start(__name__):
  import os

  from absl import flags
  from ml_collections import config_flags

  from softvq_jax.errors import InputError
  from softvq_jax.launch import compilation
  from softvq_jax.launch import distributed
  from softvq_jax.launch import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally FILE:PRESETS.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {' '.join(argv[1:])!r}; every option is a "
                     "--flag")
  distributed.initialize_from_flags()
  compilation.enable_cache()
  distributed.check_same("config and workdir", FLAGS.config.to_json_best_effort(
      sort_keys=True) + "\n" + os.path.abspath(FLAGS.workdir))
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
