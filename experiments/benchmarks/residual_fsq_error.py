"""Residual FSQ's reconstruction error per stage, ours and vector-quantize-pytorch's.

  python -m experiments.benchmarks.residual_fsq_error --torch_python=/path/to/venv/bin/python \
      --out=experiments/results/quantizer_benchmark/residual_fsq_error

Issue 35's repro: z ~ U(-0.9, 0.9)^4 (``--num_points`` rows, numpy seed
``--seed``, the same rows in both halves), levels (8, 5, 5, 5). For 1 to
``--max_stages`` stages, the mean squared error of ``ResidualFSQ`` (scaled
stages), of ``ResidualQuantizer`` over unscaled ``FSQ`` stages, and, with
``--torch_python``, of vector-quantize-pytorch's ``ResidualFSQ``
(``residual_fsq_error_torch.py``). Writes ``OUT.jsonl``.
"""

from absl import app
from absl import flags
import jax.numpy as jnp

from experiments.common import jsonl
from experiments.common.fsq_repro import LEVELS
from experiments.common.fsq_repro import points
from softvq_jax import quantizers as q

flags.DEFINE_integer("num_points", 8192, "Rows of z.")
flags.DEFINE_integer("seed", 0, "numpy seed of z.")
flags.DEFINE_integer("max_stages", 3, "Stages 1 to this.")
flags.DEFINE_string("torch_python", None, "A Python with torch and vector-quantize-pytorch.")
flags.DEFINE_string("out", None, "Write OUT.jsonl.")
FLAGS = flags.FLAGS


def main(_):
  z = jnp.asarray(points(FLAGS.seed, FLAGS.num_points))
  lines = []
  for stages in range(1, FLAGS.max_stages + 1):
    for name, module in (("ResidualFSQ", q.ResidualFSQ(LEVELS, stages)),
                         ("unscaled FSQ stages",
                          q.ResidualQuantizer([q.FSQ(LEVELS) for _ in range(stages)]))):
      z_q, _ = module.apply({}, z, train=False)
      jsonl.emit(lines, {"library": "softvq_jax", "quantizer": name, "stages": stages,
                         "mse": float(jnp.mean(jnp.square(z_q - z)))})
  if FLAGS.torch_python:
    for record in jsonl.run(FLAGS.torch_python, "experiments.benchmarks.residual_fsq_error_torch",
                            f"--num_points={FLAGS.num_points}", f"--seed={FLAGS.seed}",
                            f"--max_stages={FLAGS.max_stages}"):
      jsonl.emit(lines, record)
  jsonl.write(lines, FLAGS.out and FLAGS.out + ".jsonl")


if __name__ == "__main__":
  app.run(main)
