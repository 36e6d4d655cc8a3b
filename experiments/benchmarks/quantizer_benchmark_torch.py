"""The PyTorch half of ``quantizer_benchmark.py``: the same tokenizer with
vector-quantize-pytorch's quantizers. Run by it with ``--torch_python``;
prints one JSON line per run (and one with the versions). Needs torch and
vector-quantize-pytorch; nothing in the project imports this file."""

import argparse
import json
import time

import numpy as np
import torch
from torch import nn
import vector_quantize_pytorch as lvq

from experiments.common import mnist_arrays
from experiments.common import token_statistics
from experiments.common import tokenizer_init

NUM_CODES = 1024
VQ = dict(codebook_size=NUM_CODES, kmeans_init=True, commitment_weight=0.25,
          rotation_trick=False)
EMA = dict(VQ, decay=0.99)
# The JAX half's QUANTIZERS, in LVQ's terms (soft VQ has no LVQ counterpart).
QUANTIZERS = {
    "vq": (16, lambda: lvq.VectorQuantize(16, ema_update=False, learnable_codebook=True, **VQ)),
    "vq_ema": (16, lambda: lvq.VectorQuantize(16, **EMA)),
    "vq_cosine": (16, lambda: lvq.VectorQuantize(16, use_cosine_sim=True, **EMA)),
    "vq_rotation": (16, lambda: lvq.VectorQuantize(16, **dict(EMA, rotation_trick=True))),
    "residual_vq4": (16, lambda: lvq.ResidualVQ(dim=16, num_quantizers=4, **EMA)),
    "fsq": (4, lambda: lvq.FSQ(levels=[8, 5, 5, 5], dim=4)),
    "lfq": (10, lambda: lvq.LFQ(dim=10, codebook_size=NUM_CODES, entropy_loss_weight=0.1,
                                commitment_loss_weight=0.25)),
    "vq_heads4": (16, lambda: lvq.VectorQuantize(16, heads=4, codebook_dim=4,
                                                 separate_codebook_per_head=True, **EMA)),
    "simvq": (16, lambda: lvq.SimVQ(dim=16, codebook_size=NUM_CODES)),
    "grouped_rvq2x2": (16, lambda: lvq.GroupedResidualVQ(dim=16, groups=2, num_quantizers=2,
                                                         **EMA)),
}


class Tokenizer(nn.Module):
  """``quantizer_benchmark.Tokenizer`` in torch (NCHW)."""

  def __init__(self, latent, quantizer, weights):
    super().__init__()
    self.encoder = nn.Sequential(nn.Conv2d(1, 64, 4, stride=4), nn.ReLU(),
                                 nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(64, latent, 1))
    self.quantizer = quantizer
    self.decoder = nn.Sequential(nn.Conv2d(latent, 64, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(64, 16, 1), nn.PixelShuffle(4), nn.Sigmoid())
    convs = [self.encoder[0], self.encoder[2], self.encoder[4], self.decoder[0],
             self.decoder[2]]
    with torch.no_grad():  # The shared start, kernels (kh, kw, in, out) to (out, in, kh, kw).
      for conv, (kernel, bias) in zip(convs, weights.values()):
        conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
        conv.bias.copy_(torch.from_numpy(bias))

  def forward(self, x):
    z = self.encoder(x)  # (B, latent, 7, 7).
    b, c, h, w = z.shape
    out = self.quantizer(z.flatten(2).transpose(1, 2))  # LVQ's (B, 49, latent).
    z_q, indices = out[0], out[1]
    if isinstance(self.quantizer, lvq.GroupedResidualVQ):  # (groups, B, 49, q) to ours.
      indices = indices.permute(1, 2, 3, 0)
    loss = out[2].sum() if len(out) > 2 and out[2] is not None else torch.zeros(())
    z_q = z_q.transpose(1, 2).reshape(b, c, h, w)
    return self.decoder(z_q), indices, loss


def run(name, seed, train, test, args):
  torch.manual_seed(seed)
  latent, make = QUANTIZERS[name]
  model = Tokenizer(latent, make(), tokenizer_init.conv_weights(seed, latent))
  optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
  train_t = torch.from_numpy(train).permute(0, 3, 1, 2)
  model.train()
  batches = mnist_arrays.batch_indices(seed, args.steps, args.batch_size, len(train))
  for i, batch in enumerate(batches):
    if i == args.warmup:
      start = time.perf_counter()
    x = train_t[torch.from_numpy(batch)]
    optimizer.zero_grad(set_to_none=True)
    recon, _, aux_loss = model(x)
    loss = torch.mean((recon - x) ** 2) + aux_loss
    loss.backward()
    optimizer.step()
  ms = 1000 * (time.perf_counter() - start) / (args.steps - args.warmup)
  model.eval()
  with torch.no_grad():
    outputs = [model(torch.from_numpy(x).permute(0, 3, 1, 2)) for x in np.split(test, 10)]
  recon = torch.cat([o[0] for o in outputs]).permute(0, 2, 3, 1).numpy()
  indices = torch.cat([o[1] for o in outputs]).numpy()
  stats = token_statistics.code_statistics(indices, NUM_CODES, name)
  return {"framework": "torch", "quantizer": name, "seed": seed,
          "test_mse": round(float(np.mean((recon - test) ** 2)), 6), **stats,
          "ms_per_step": round(ms, 3), "final_train_loss": round(loss.item(), 6)}


def main():
  parser = argparse.ArgumentParser()
  for flag, kind in (("steps", int), ("batch_size", int), ("seeds", str), ("quantizers", str),
                     ("mnist_dir", str), ("warmup", int), ("learning_rate", float)):
    parser.add_argument(f"--{flag}", type=kind, required=True)
  args = parser.parse_args()
  print(json.dumps({"torch_version": f"torch {torch.__version__}, vector-quantize-pytorch "
                                     f"{lvq.__dict__.get('__version__', 'installed')}",
                    "threads": torch.get_num_threads()}), flush=True)
  train, test = mnist_arrays.load(args.mnist_dir)
  for name in args.quantizers.split(","):
    if name not in QUANTIZERS:
      continue
    for seed in args.seeds.split(","):
      print(json.dumps(run(name, int(seed), train, test, args)), flush=True)


if __name__ == "__main__":
  main()
