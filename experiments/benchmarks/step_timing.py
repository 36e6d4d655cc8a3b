"""The launcher's training step of a config file, one run and seeds
vmapped, on random images of the config's shape.

  python -m experiments.benchmarks.step_timing --config=cifar10 --steps=100
  python -m experiments.benchmarks.step_timing --config=mnist --seeds=1,3,21 --steps=500

``--config=NAME`` is ``configs/NAME.py`` (its default row: the soft VQ-VAE
for mnist, the headline CNN for cifar10) at its batch size (or
``--batch_size``). The step's time does not depend on the pixels, and no
CIFAR-10 copy can be reached from the GPU machines. Prints JSON lines
``{"name", "value", "unit"}``: ``<config>_b<B>[_seeds<S>]_compile_seconds``
(lowering and compiling one chunk of ``--steps`` steps of ``S`` runs
vmapped) and ``..._ms_per_step`` (the whole vmapped step; best of
``--repeats`` chunks).
"""

import importlib
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import chunks
from experiments.common import jsonl
from experiments.common.timing import best_time

flags.DEFINE_string("config", "cifar10", "A config file of configs/: mnist, cifar10, ...")
flags.DEFINE_integer("steps", 100, "Steps per timed chunk.")
flags.DEFINE_integer("repeats", 3, "Timed chunks; the best is kept.")
flags.DEFINE_list("seeds", ["1", "3"], "Runs trained together (vmapped), one case each.")
flags.DEFINE_integer("batch_size", 0, "0: the config's train.batch_size.")
flags.DEFINE_integer("num_images", 4096, "Random training images on the device.")
FLAGS = flags.FLAGS

IMAGE_SHAPES = {"mnist": (28, 28, 1), "digits": (8, 8, 1), "cifar10": (32, 32, 3),
                "svhn": (32, 32, 3)}


def time_case(config, images, num_runs: int, steps: int, repeats: int):
  """(compile seconds, seconds per chunk of ``steps``) of ``num_runs`` runs."""
  state, rngs, _, (chunk,) = chunks.chunk_programs(config, images[:1], num_runs, (steps,),
                                                   pixel_var=float(jnp.var(images)))
  t0 = time.perf_counter()
  compiled = chunk.lower(state, images, rngs, {}).compile()
  compile_seconds = time.perf_counter() - t0
  return compile_seconds, best_time(compiled, state, images, rngs, {}, repeats=repeats)


def main(_):
  config = importlib.import_module(f"configs.{FLAGS.config}").get_config()
  config.train.batch_size = FLAGS.batch_size or config.train.batch_size
  shape = IMAGE_SHAPES[FLAGS.config]
  images = jnp.asarray(np.random.default_rng(0).random((FLAGS.num_images, *shape), np.float32))
  lines = []
  for num_runs in map(int, FLAGS.seeds):
    name = (f"{FLAGS.config}_{config.model.network}_{config.model.bottleneck}_"
            f"b{config.train.batch_size}" + (f"_seeds{num_runs}" if num_runs > 1 else ""))
    compile_seconds, seconds = time_case(config, images, num_runs, FLAGS.steps, FLAGS.repeats)
    jsonl.emit(lines, {"name": name + "_compile_seconds", "value": round(compile_seconds, 3),
                       "unit": "s"})
    jsonl.emit(lines, {"name": name + "_ms_per_step",
                       "value": round(1000 * seconds / FLAGS.steps, 4), "unit": "ms"})
  jsonl.emit(lines, {"name": "devices", "value": jax.device_count(),
                     "unit": jax.devices()[0].device_kind})


if __name__ == "__main__":
  app.run(main)
