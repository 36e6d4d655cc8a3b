"""The PyTorch half of ``residual_fsq_error.py``: vector-quantize-pytorch's
``ResidualFSQ`` on the same rows. Prints one JSON line per stage count; needs
torch and vector-quantize-pytorch."""

import argparse
import json

import torch
from vector_quantize_pytorch import ResidualFSQ

from experiments.common.fsq_repro import LEVELS
from experiments.common.fsq_repro import points


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_points", type=int, default=8192)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max_stages", type=int, default=3)
  args = parser.parse_args()
  z = torch.from_numpy(points(args.seed, args.num_points))[:, None, :]  # (N, 1, 4) tokens.
  for stages in range(1, args.max_stages + 1):
    module = ResidualFSQ(dim=4, levels=list(LEVELS), num_quantizers=stages).eval()
    with torch.no_grad():
      z_q = module(z)[0]
    print(json.dumps({"library": "vector-quantize-pytorch", "quantizer": "ResidualFSQ",
                      "stages": stages, "mse": float(torch.mean((z_q - z) ** 2))}), flush=True)


if __name__ == "__main__":
  main()
