"""Each quantizer of ``quantizer_benchmark`` alone: forward and gradient.

  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      python -m experiments.benchmarks.quantizer_timing --torch_python=/path/to/venv/bin/python \
      --out=experiments/results/quantizer_benchmark/quantizer_timing_cpu

The tokenizer benchmark's step is the network, the quantizer and Adam. This
times the quantizer alone on the tokenizer's latent grid, ``(batch, 7, 7, d)``
with the benchmark's ``QUANTIZERS`` (training mode: the forward pass, the
gradient of ``sum(z_q * g) + aux loss`` with respect to z and the quantizer's
parameters, and the EMA state update), milliseconds per call after a warm-up,
best of ``--timing_repeats`` blocks. ``--torch_python`` runs
``quantizer_timing_torch.py``, the same with vector-quantize-pytorch's
quantizers, in the same run. Both frameworks on one thread (run this under
the XLA flags above; the torch half sets ``torch.set_num_threads(1)``).
Writes ``OUT.jsonl``.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from experiments.benchmarks import quantizer_benchmark  # Its flags too.
from experiments.common import jsonl

flags.DEFINE_integer("timing_calls", 50, "Calls per timed block.")
flags.DEFINE_integer("timing_repeats", 5, "Timed blocks; the best is kept.")
FLAGS = flags.FLAGS


def time_quantizer(name: str) -> float:
  """Milliseconds per forward-and-gradient call of quantizer ``name``."""
  latent, make = quantizer_benchmark.QUANTIZERS[name]
  module = make()
  key = jax.random.key(0)
  z = jax.random.normal(key, (FLAGS.batch_size, 7, 7, latent))
  g = jax.random.normal(jax.random.fold_in(key, 1), z.shape)
  variables = module.init({"params": key, "noise": key}, z, train=False)
  variables = module.apply(variables, z, method="initialize", mutable=True,
                           rngs={"params": key})[1]  # The k-means start.
  params = variables.get("params", {})
  state = {k: v for k, v in variables.items() if k != "params"}

  @jax.jit
  def call(params, state, z):
    def loss(params, z):
      (z_q, aux), new_state = module.apply({"params": params, **state}, z, train=True,
                                           mutable=["ema"], rngs={"noise": key})
      return jnp.sum(z_q * g) + aux["loss"], new_state
    (_, new_state), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, z)
    return grads, {**state, **new_state}
  grads, state = call(params, state, z)  # Compiles.
  jax.block_until_ready(grads)
  best = float("inf")
  for _ in range(FLAGS.timing_repeats):
    start = time.perf_counter()
    for _ in range(FLAGS.timing_calls):
      grads, state = call(params, state, z)
    jax.block_until_ready(grads)
    best = min(best, (time.perf_counter() - start) / FLAGS.timing_calls)
  return 1000 * best


def main(_):
  lines = []
  names = FLAGS.quantizers or list(quantizer_benchmark.QUANTIZERS)
  for name in names:
    jsonl.emit(lines, {"quantizer": name, "framework": "jax", "ms": time_quantizer(name)})
  if FLAGS.torch_python:
    for record in jsonl.run(FLAGS.torch_python, "experiments.benchmarks.quantizer_timing_torch",
                            f"--batch_size={FLAGS.batch_size}", f"--calls={FLAGS.timing_calls}",
                            f"--repeats={FLAGS.timing_repeats}", *names):
      jsonl.emit(lines, record)
  jsonl.write(lines, FLAGS.out and FLAGS.out + ".jsonl")


if __name__ == "__main__":
  app.run(main)
