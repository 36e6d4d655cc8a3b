"""The PyTorch half of ``quantizer_timing.py``: vector-quantize-pytorch's
quantizers alone, forward and gradient: on CUDA where torch has it (the same
command then compares both libraries on a GPU), else on one CPU thread.
Prints one JSON line per quantizer; needs torch and vector-quantize-pytorch."""

import argparse
import json
import time

import torch

from experiments.benchmarks import quantizer_benchmark_torch


def time_quantizer(name, batch_size, calls, repeats):
  """Milliseconds per forward-and-gradient call of quantizer ``name``."""
  latent, make = quantizer_benchmark_torch.QUANTIZERS[name]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  quantizer = make().train().to(device)
  generator = torch.Generator().manual_seed(0)
  z = torch.randn(batch_size, 49, latent, generator=generator).to(device).requires_grad_()
  g = torch.randn(batch_size, 49, latent, generator=generator).to(device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def call():
    out = quantizer(z)
    loss = (out[0] * g).sum()
    if len(out) > 2 and out[2] is not None:
      loss = loss + out[2].sum()
    loss.backward()
  call()  # k-means initialisation on the first batch.
  best = float("inf")
  for _ in range(repeats):
    sync()
    start = time.perf_counter()
    for _ in range(calls):
      call()
    sync()
    best = min(best, (time.perf_counter() - start) / calls)
  return 1000 * best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--calls", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("names", nargs="*")
  args = parser.parse_args()
  torch.set_num_threads(1)
  for name in args.names:
    if name in quantizer_benchmark_torch.QUANTIZERS:
      ms = time_quantizer(name, args.batch_size, args.calls, args.repeats)
      print(json.dumps({"quantizer": name, "framework": "torch", "ms": ms,
                        "device": "cuda" if torch.cuda.is_available() else "cpu"}), flush=True)


if __name__ == "__main__":
  main()
