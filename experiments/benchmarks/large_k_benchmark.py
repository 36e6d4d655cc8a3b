"""Memory and time of the quantizer modules at large K: dense against ``chunk_size``.

  python -m experiments.benchmarks.large_k_benchmark \
      --out=experiments/results/quantizer_modules_large_k/large_k_cpu

For each ``NxKxd`` in ``--sizes`` and each module (``VectorQuantizer``,
``SoftVectorQuantizer`` with a learned per-codeword variance), one training
step's forward and gradient (with respect to the parameters and ``z``),
compiled with and without ``chunk_size``:

* ``temp_gib``: XLA's compiled temporaries (``memory_analysis``), from the
  program alone, whatever the machine's memory;
* ``ms``: the fastest of ``--repeats`` timed steps after a warm-up, where
  the dense program's temporaries stay under ``--max_dense_gib`` (else
  only memory is reported for both).

Prints one JSON line per measurement and, with ``--out``, writes
``OUT.jsonl`` and the table ``OUT.md`` with the machine, versions and wall
time.
"""

import functools
import json
import os
import platform
import time

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import jsonl
from experiments.common import timing
from softvq_jax import quantizers  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("sizes", ["8192x8192x32", "4096x16384x256", "8192x65536x32",
                            "65536x65536x32", "65536x16384x256"], "NxKxd cases.")
flags.DEFINE_integer("chunk_size", 2048, "Codewords per chunk.")
flags.DEFINE_integer("repeats", 3, "Timed steps per case.")
flags.DEFINE_float("max_dense_gib", 6.0, "Time a case only if dense temporaries fit this.")
flags.DEFINE_string("out", None, "Write OUT.jsonl and OUT.md.")
FLAGS = flags.FLAGS
GIB = 2 ** 30
# The soft one with a given variance start: a fit would need initialize's
# pass over the data, which this times nothing of.
MODULES = {"VectorQuantizer": quantizers.VectorQuantizer,
           "SoftVectorQuantizer": functools.partial(quantizers.SoftVectorQuantizer,
                                                    log_var_init=0.0)}


def train_step(module):
  """Gradient of a decoder-like loss plus the VQ terms, and the new state."""
  def step(variables, z):
    def loss(params, z):
      (z_q, aux), state = module.apply({**variables, "params": params}, z, train=True,
                                       mutable=["ema"])
      return jnp.sum(z_q * z_q) + aux["loss"], state
    return jax.grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], z)
  return jax.jit(step)


def measure(lines, name, n, k, d):
  """One size and module: both programs' temporaries, and their times."""
  dense = MODULES[name](k)
  modules = {"dense": dense, "chunked": dense.clone(chunk_size=FLAGS.chunk_size)}
  z_shape = jax.ShapeDtypeStruct((n, d), jnp.float32)
  shapes = jax.eval_shape(lambda z: dense.init({"params": jax.random.key(0)}, z,
                                               train=False), z_shape)
  compiled = {path: train_step(m).lower(shapes, z_shape).compile()
              for path, m in modules.items()}
  record = {"module": name, "n": n, "k": k, "d": d, "chunk_size": FLAGS.chunk_size}
  for path, program in compiled.items():
    record[f"{path}_temp_gib"] = round(program.memory_analysis().temp_size_in_bytes / GIB, 4)
  if record["dense_temp_gib"] <= FLAGS.max_dense_gib:
    z = jax.random.normal(jax.random.key(1), (n, d))
    variables = dense.init({"params": jax.random.key(0)}, z, train=False)
    for path, program in compiled.items():
      seconds = timing.best_time(program, variables, z, repeats=FLAGS.repeats)
      record[f"{path}_ms"] = round(1000 * seconds, 1)
    record["chunked_over_dense"] = round(record["chunked_ms"] / record["dense_ms"], 3)
  jsonl.emit(lines, record)


def table(records, wall_s):
  rows = ["| module | N | K | d | dense temporaries GiB | chunked GiB | dense ms | "
          "chunked ms | chunked / dense |", "|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    times = [str(r.get(key, "-")) for key in ("dense_ms", "chunked_ms", "chunked_over_dense")]
    rows.append(f"| {r['module']} | {r['n']} | {r['k']} | {r['d']} | {r['dense_temp_gib']} | "
                f"{r['chunked_temp_gib']} | " + " | ".join(times) + " |")
  return "\n".join([
      "# Quantizer modules at large K: dense against `chunk_size`", "",
      "Command: `python -m experiments.benchmarks.large_k_benchmark "
      f"--sizes={','.join(FLAGS.sizes)} "
      f"--chunk_size={FLAGS.chunk_size} --repeats={FLAGS.repeats} "
      f"--max_dense_gib={FLAGS.max_dense_gib}`", "",
      f"Machine: {jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} "
      f"cores), jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__}; "
      f"wall time {wall_s:.0f} s.", "",
      "One training step (forward and gradient with respect to the parameters and z; "
      "float32; per-codeword learned variance for the soft quantizer). Temporaries are "
      "XLA's compiled `temp_size_in_bytes`; times are the best of the repeats, measured "
      f"only where the dense program's temporaries are under {FLAGS.max_dense_gib} GiB.",
      "", *rows, ""])


def main(_):
  start = time.perf_counter()
  lines = []
  for size in FLAGS.sizes:
    n, k, d = (int(x) for x in size.split("x"))
    for name in MODULES:
      measure(lines, name, n, k, d)
  if FLAGS.out:
    jsonl.write(lines, FLAGS.out + ".jsonl")
    records = [json.loads(line) for line in lines]
    with open(FLAGS.out + ".md", "w") as f:
      f.write(table(records, time.perf_counter() - start))


if __name__ == "__main__":
  app.run(main)
