"""The nearest-codeword search alone: argmin against top_k on the tokenizer's VQ step.

  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      taskset -c 0 python -m experiments.benchmarks.nearest_search \
      --out=experiments/results/quantizer_benchmark/nearest_search_cpu

Times, on the (N, K, d) = (3136, 1024, 64) problem of ``quantizer_timing``'s
VQ step (64 x 7 x 7 tokens), jitted: the squared distances alone, then the
distances and each way of finding the nearest codeword: ``jnp.argmin``, two
plain reductions (the minimum, then the first index equal to it),
``lax.top_k`` of the negated distances, and ``functional.nearest_indices``
(top_k on CPU). Each search is checked to give argmin's indices. Random
normal inputs, key 0 and 1; ms per call, best of ``--repeats`` blocks of
``--calls``. Writes ``OUT.jsonl``.
"""

import time

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from experiments.common import jsonl
from softvq_jax.quantizers import functional

flags.DEFINE_integer("num_latents", 3136, "N: latents (64 x 7 x 7 tokens).")
flags.DEFINE_integer("num_codewords", 1024, "K.")
flags.DEFINE_integer("dim", 64, "d.")
flags.DEFINE_integer("calls", 30, "Calls per timed block.")
flags.DEFINE_integer("repeats", 5, "Timed blocks; the best is kept.")
flags.DEFINE_string("out", None, "Path prefix of the JSONL output.")
FLAGS = flags.FLAGS


def _two_reductions(d):
  smallest = jnp.min(d, -1, keepdims=True)
  iota = lax.broadcasted_iota(jnp.int32, d.shape, d.ndim - 1)
  return jnp.min(jnp.where((d == smallest) | jnp.isnan(d), iota, d.shape[-1]), -1)


SEARCHES = {
    "distances_only": lambda d: jnp.sum(d),
    "argmin": lambda d: jnp.argmin(d, -1).astype(jnp.int32),
    "two_reductions": _two_reductions,
    "top_k": lambda d: lax.top_k(-d, 1)[1][..., 0],
    "nearest_indices": functional.nearest_indices,
}


def time_search(fn, z, codebook) -> tuple:
  """Milliseconds per call of ``fn(squared_distances(z, codebook))``, and its output."""
  call = jax.jit(lambda z, c: fn(functional.squared_distances(z, c)))
  out = jax.block_until_ready(call(z, codebook))  # Compiles.
  best = float("inf")
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    for _ in range(FLAGS.calls):
      out = call(z, codebook)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / FLAGS.calls)
  return 1000 * best, out


def main(_):
  z = jax.random.normal(jax.random.key(0), (FLAGS.num_latents, FLAGS.dim))
  codebook = jax.random.normal(jax.random.key(1), (FLAGS.num_codewords, FLAGS.dim))
  lines, reference = [], None
  for name, fn in SEARCHES.items():
    ms, out = time_search(fn, z, codebook)
    record = {"search": name, "ms": ms}
    if name == "argmin":
      reference = np.asarray(out)
    elif name != "distances_only":
      record["same_as_argmin"] = bool(np.array_equal(np.asarray(out), reference))
    jsonl.emit(lines, record)
  jsonl.write(lines, FLAGS.out and FLAGS.out + ".jsonl")


if __name__ == "__main__":
  app.run(main)
