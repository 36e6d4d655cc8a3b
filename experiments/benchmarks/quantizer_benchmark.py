"""The quantizers side by side in one small tokenizer, against vector-quantize-pytorch.

  python -m experiments.benchmarks.quantizer_benchmark --torch_python=/path/to/venv/bin/python \
      --out=experiments/results/quantizer_benchmark/quantizer_benchmark_cpu

A conv autoencoder on MNIST, 28x28 to a 7x7 grid of tokens and back
(``Tokenizer``), trained with Adam on the same batches and seeds for each
quantizer (``QUANTIZERS``, about 2^10 codes each). For each quantizer and
seed it reports the test reconstruction MSE, the codebook usage on the test
set (the fraction of codes used; for residual VQ the mean over stages), the
test perplexity of the indices and the milliseconds per training step
(after the first ``WARMUP`` steps, compiled).

``--torch_python``: a Python with torch and vector-quantize-pytorch runs
``quantizer_benchmark_torch.py`` in the same run, on the same machine: the
same architecture, data, batches and steps with LVQ's implementations. The
project never depends on torch; without it the torch half is skipped.
Writes ``OUT.jsonl`` and the table ``OUT.md``.
"""

import json
import os
import platform
import time
from typing import Any, Callable, Dict

from absl import app
from absl import flags
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import jsonl
from experiments.common import mnist_arrays
from experiments.common import token_statistics
from experiments.common import tokenizer_init
from softvq_jax import quantizers as q  # pylint: disable=g-import-not-at-top

flags.DEFINE_integer("steps", 2000, "Adam steps per run.")
flags.DEFINE_integer("batch_size", 64, "Images per step.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: initialisation and batches.")
flags.DEFINE_list("quantizers", None, "A subset of QUANTIZERS; default all.")
flags.DEFINE_string("mnist_dir", "../shared/datasets/mnist", "The official MNIST files.")
flags.DEFINE_string("torch_python", None, "A Python with torch and vector-quantize-pytorch.")
flags.DEFINE_string("out", None, "Write OUT.jsonl and OUT.md.")
FLAGS = flags.FLAGS
WARMUP = 50  # Steps left out of the timing.
LEARNING_RATE = 1e-3
NUM_CODES = 1024

# name -> (latent size, the quantizer); about 2^10 codes each. VQ codebooks
# start at k-means of the first batch (``initialize``); EMA decay 0.99. Loss weights give the
# objective of the torch half: LVQ's terms are element means (over d too),
# ours sums over d, so LVQ's weight 0.25 is 0.25 / d here, and LVQ's learned
# codebook trains codebook and encoder with one term of that weight.
D = 16
VQ = dict(codebook_init="kmeans", commitment=1.0, vq_weight=0.25 / D)
EMA = dict(codebook_init="kmeans", commitment=0.25 / D, ema_decay=0.99)
QUANTIZERS: Dict[str, Any] = {
    "vq": (D, lambda: q.VectorQuantizer(NUM_CODES, **VQ)),
    "vq_ema": (D, lambda: q.VectorQuantizer(NUM_CODES, **EMA)),
    "vq_cosine": (D, lambda: q.VectorQuantizer(NUM_CODES, cosine=True, **EMA)),
    "vq_rotation": (D, lambda: q.VectorQuantizer(NUM_CODES, rotation_trick=True, **EMA)),
    "soft_vq": (D, lambda: q.SoftVectorQuantizer(NUM_CODES, **VQ)),
    "residual_vq4": (D, lambda: q.ResidualQuantizer(
        [q.VectorQuantizer(NUM_CODES, **EMA) for _ in range(4)])),
    "fsq": (4, lambda: q.FSQ((8, 5, 5, 5))),
    "lfq": (10, lambda: q.LFQ(10, commitment=0.25 / 10)),
    # 4 heads of 4 dimensions, a codebook each; the terms are means over a head's 4.
    "vq_heads4": (D, lambda: q.VectorQuantizer(
        NUM_CODES, heads=4, separate_codebook_per_head=True, **dict(EMA, commitment=0.25 / 4))),
    # LVQ's SimVQ: a codebook term of weight 1 and the input's of 0.25, rotation trick.
    "simvq": (D, lambda: q.SimVQ(NUM_CODES, vq_weight=1.0 / D, commitment=0.25)),
    # 2 groups of 8 dimensions, each 2 residual EMA stages.
    "grouped_rvq2x2": (D, lambda: q.GroupedResidualQuantizer([q.ResidualQuantizer(
        [q.VectorQuantizer(NUM_CODES, **dict(EMA, commitment=0.25 / 8)) for _ in range(2)])
        for _ in range(2)])),
}
# The tokenizer's convolutions, in the order of tokenizer_init.LAYERS.
CONVS = ("Conv_0", "Conv_1", "Conv_2", "Conv_3", "Conv_4")


class Tokenizer(nn.Module):
  """Conv encoder to a (B, 7, 7, latent) grid (a 4x4 stride-4 patch conv, a
  3x3 conv, a 1x1 conv), a quantizer, and a conv decoder (3x3, 1x1 to 16
  channels, depth-to-space to 28x28). Strided transposed convolutions are
  avoided: their gradient costs XLA's CPU backend about 20x more here."""
  latent: int
  quantizer: Callable[[], nn.Module]

  def setup(self):
    self.Conv_0 = nn.Conv(64, (4, 4), strides=4, padding="VALID")
    self.Conv_1 = nn.Conv(64, (3, 3))
    self.Conv_2 = nn.Conv(self.latent, (1, 1))
    self.vq = self.quantizer()
    self.Conv_3 = nn.Conv(64, (3, 3))
    self.Conv_4 = nn.Conv(16, (1, 1))

  def encode(self, x):
    return self.Conv_2(nn.relu(self.Conv_1(nn.relu(self.Conv_0(x)))))

  def initialize(self, x):
    """The quantizer's data start (k-means codebooks) from the batch x."""
    self.vq.initialize(self.encode(x))

  def __call__(self, x, *, train: bool):
    z_q, aux = self.vq(self.encode(x), train=train)
    h = self.Conv_4(nn.relu(self.Conv_3(z_q)))  # (B, 7, 7, 4 * 4): depth to space.
    b = h.shape[0]
    h = h.reshape(b, 7, 7, 4, 4).transpose(0, 1, 3, 2, 4).reshape(b, 28, 28, 1)
    return nn.sigmoid(h), aux


def run(name: str, seed: int, train_images, test_images) -> Dict[str, Any]:
  """One quantizer and seed: train, then the test figures."""
  latent, make = QUANTIZERS[name]
  model = Tokenizer(latent, make)
  rng = jax.random.key(seed)
  variables = model.init(rng, train_images[:1], train=False)
  weights = tokenizer_init.conv_weights(seed, latent)
  variables["params"] = {**variables["params"], **{
      conv: {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}
      for conv, (kernel, bias) in zip(CONVS, weights.values())}}
  batches = mnist_arrays.batch_indices(seed, FLAGS.steps, FLAGS.batch_size, len(train_images))
  variables = model.apply(variables, train_images[batches[0]], method=model.initialize,
                          mutable=True, rngs={"params": rng})[1]  # On the first batch.
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  optimizer = optax.adam(LEARNING_RATE)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, state, opt_state, x, key):
    def loss_fn(params):
      (recon, aux), new_state = model.apply({"params": params, **state}, x, train=True,
                                            mutable=["ema"], rngs={"noise": key})
      return jnp.mean(jnp.square(recon - x)) + aux["loss"], new_state
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**state, **new_state}, opt_state, loss

  for i, batch in enumerate(batches):
    if i == WARMUP:
      jax.block_until_ready(params)
      start = time.perf_counter()
    params, state, opt_state, loss = step(params, state, opt_state, train_images[batch],
                                          jax.random.fold_in(rng, i))
  jax.block_until_ready(params)
  ms = 1000 * (time.perf_counter() - start) / (FLAGS.steps - WARMUP)
  evaluate = jax.jit(lambda x: model.apply({"params": params, **state}, x, train=False))
  recons, indices = zip(*[(r, a["indices"]) for r, a in
                          (evaluate(x) for x in np.split(test_images, 10))])
  mse = float(np.mean(np.square(np.concatenate(recons) - test_images)))
  return {"framework": "jax", "quantizer": name, "seed": seed, "test_mse": round(mse, 6),
          **token_statistics.code_statistics(np.concatenate(indices), NUM_CODES, name),
          "ms_per_step": round(ms, 3),
          "final_train_loss": round(float(loss), 6)}


def torch_half(names, seeds):
  """The LVQ half, in ``--torch_python``'s process; its JSON lines."""
  return jsonl.run(FLAGS.torch_python, "experiments.benchmarks.quantizer_benchmark_torch",
                   f"--steps={FLAGS.steps}",
                   f"--batch_size={FLAGS.batch_size}", f"--seeds={','.join(map(str, seeds))}",
                   f"--quantizers={','.join(names)}", f"--mnist_dir={FLAGS.mnist_dir}",
                   f"--warmup={WARMUP}", f"--learning_rate={LEARNING_RATE}")


def table(records, wall_s, torch_version):
  """The markdown summary: mean and spread over seeds per framework and quantizer."""
  rows = ["| quantizer | framework | test MSE | test usage | test perplexity | ms/step |",
          "|---|---|---|---|---|---|"]
  for name in dict.fromkeys(r["quantizer"] for r in records):
    for framework in ("jax", "torch"):
      runs = [r for r in records if r["quantizer"] == name and r["framework"] == framework]
      if not runs:
        continue
      cell = lambda key, fmt: (f"{np.mean([r[key] for r in runs]):{fmt}} ± "
                               f"{np.std([r[key] for r in runs]):{fmt}}")
      rows.append(f"| {name} | {framework} | {cell('test_mse', '.5f')} | "
                  f"{cell('test_usage', '.3f')} | {cell('test_perplexity', '.1f')} | "
                  f"{cell('ms_per_step', '.2f')} |")
  return "\n".join([
      "# Quantizers in one MNIST tokenizer, softvq_jax against vector-quantize-pytorch", "",
      f"Command: `python -m experiments.benchmarks.quantizer_benchmark --steps={FLAGS.steps} "
      f"--batch_size={FLAGS.batch_size} --seeds={','.join(FLAGS.seeds)} "
      + (f"--quantizers={','.join(FLAGS.quantizers)} " if FLAGS.quantizers else "")
      + "--torch_python=<venv with torch and vector-quantize-pytorch>`", "",
      f"Machine: {jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} cores); "
      f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"
      f"{', ' + torch_version if torch_version else ''}; wall time {wall_s:.0f} s.", "",
      "Mean ± standard deviation over the seeds. Both frameworks train the same conv "
      "network (28x28 to a 7x7 token grid) from the same initial weights "
      "(`tokenizer_init.py`) on the same batches, steps, Adam settings and loss weights "
      "(the quantizer terms scaled to LVQ's element means); they differ in the quantizers "
      "alone, each library's own (codebook initialisation included). soft_vq has no LVQ "
      "counterpart.", "", *rows, ""])


def main(_):
  start = time.perf_counter()
  train_images, test_images = mnist_arrays.load(FLAGS.mnist_dir)
  names = FLAGS.quantizers or list(QUANTIZERS)
  seeds = [int(s) for s in FLAGS.seeds]
  lines = []
  for name in names:
    for seed in seeds:
      jsonl.emit(lines, run(name, seed, train_images, test_images))
  torch_version = None
  if FLAGS.torch_python:
    for record in torch_half(names, seeds):
      if "torch_version" in record:
        torch_version = record["torch_version"]
      else:
        jsonl.emit(lines, record)
  if FLAGS.out:
    jsonl.write(lines, FLAGS.out + ".jsonl")
    with open(FLAGS.out + ".md", "w") as f:
      f.write(table([json.loads(l) for l in lines], time.perf_counter() - start,
                    torch_version))


if __name__ == "__main__":
  app.run(main)
