"""The paper's MNIST soft VQ-VAE training step in PyTorch, for speed comparison.

``python -m experiments.benchmarks.benchmark --parts=torch`` runs this script with
``--torch_python`` and times it beside the JAX step
(``mnist_mlp_soft_vq_b32_ms_per_step``): the same MLP 784-500-500-2000-64 and
mirror decoder, the per-sample log-variance head of size K = 128, the
notebook's weighting (``functional.soft_assignment_logits``), the noise
0.01, the losses of ``configs/mnist.py`` (squared error over pixels,
vq_weight 36.75, commitment 2.5) and Adam 3e-4 at batch 32. It is a timing
reference, not a second implementation: nothing else in the project uses it,
and the project does not depend on torch.

  python -m experiments.benchmarks.torch_reference --steps=500 --repeats=5

prints one JSON line per mode, ``{"name", "value", "unit"}``: eager and
``torch.compile``d, on the GPU if torch sees one, and torch's version.
"""

import argparse
import json
import sys
import time

import torch
from torch import nn


class SoftVQAutoencoder(nn.Module):
  """MLP encoder, soft VQ bottleneck (eqs. (5)-(7)), MLP decoder."""

  def __init__(self, image_size=784, hidden=(500, 500, 2000), d=64, k=128):
    super().__init__()
    sizes = (image_size,) + tuple(hidden)
    self.encoder = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:])
                                   for m in (nn.Linear(a, b), nn.ReLU())])
    self.z_head = nn.Linear(hidden[-1], d)
    self.log_var_head = nn.Linear(hidden[-1], k)
    self.codebook = nn.Parameter(torch.rand(k, d) * 2 - 1)
    back = (d,) + tuple(reversed(hidden))
    self.decoder = nn.Sequential(*[m for a, b in zip(back, back[1:])
                                   for m in (nn.Linear(a, b), nn.ReLU())],
                                 nn.Linear(hidden[0], image_size), nn.Sigmoid())

  def forward(self, x, noise_std=0.01, vq_weight=36.75, commitment=2.5):
    h = self.encoder(x)
    z, log_var = self.z_head(h), self.log_var_head(h)
    noisy = z + noise_std * torch.randn_like(z)
    dist = ((noisy ** 2).sum(-1, keepdim=True) - 2 * noisy @ self.codebook.T
            + (self.codebook ** 2).sum(-1))
    probs = torch.softmax(-0.5 * dist * torch.exp(-log_var) + 0.5 * log_var, dim=-1)
    z_hat = probs @ self.codebook
    recon = ((self.decoder(z_hat) - x) ** 2).sum(-1).mean()
    vq = (((z.detach() - z_hat) ** 2).sum(-1)
          + commitment * ((z - z_hat.detach()) ** 2).sum(-1)).mean()
    return recon + vq_weight * vq


def ms_per_step(device, compiled, steps, repeats, batch_size=32):
  """Fastest of ``repeats`` timings of ``steps`` Adam steps, in ms per step."""
  torch.manual_seed(0)
  model = SoftVQAutoencoder().to(device)
  optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
  images = torch.rand(60000, 784, device=device)
  loss_fn = torch.compile(model) if compiled else model

  def step(batch):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(batch)
    loss.backward()
    optimizer.step()

  def run(n):
    for i in torch.randint(0, 60000, (n, batch_size), device=device):
      step(images[i])
    if device.type == "cuda":
      torch.cuda.synchronize()
  run(20)  # Warm-up (and compilation).
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    run(steps)
    best = min(best, time.perf_counter() - t0)
  return 1000 * best / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  print(json.dumps({"name": "torch_version", "value": torch.__version__,
                    "unit": f"{torch.get_num_threads()} threads"}), flush=True)
  for compiled in (False, True):
    tag = "compiled" if compiled else "eager"
    try:
      ms = ms_per_step(device, compiled, args.steps, args.repeats)
    except Exception as e:  # pylint: disable=broad-except
      print(f"torch {tag} failed: {type(e).__name__}: {e}", file=sys.stderr)
      continue
    print(json.dumps({"name": f"torch_mnist_mlp_soft_vq_b32_{tag}_{device.type}_ms_per_step",
                      "value": round(ms, 4), "unit": "ms"}), flush=True)


if __name__ == "__main__":
  main()
