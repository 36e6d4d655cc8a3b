"""Timing of compiled JAX calls for the experiments' benchmarks."""

import time

import jax


def best_time(fn, *args, repeats: int) -> float:
  """Fastest of ``repeats`` timed calls after one warm-up (compile) call, in seconds."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)
