"""softvq_jax's soft quantizer inside someone else's model, trained data-parallel.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      python -m experiments.analyses.tokenizer_example --mode=all

A small conv autoencoder on scikit-learn's 8x8 digits whose encoder yields a
``(B, 4, 4, d)`` latent grid, quantized by ``quantizers.SoftVectorQuantizer``
with a learned per-codeword variance, an EMA codebook, k-means
initialisation (``initialize``) on the first training batch and dead-code
restart. ``--mode``:

  single     one device;
  jit        jit with NamedSharding: the batch split over all devices, the
             quantizer sees the global batch (XLA inserts the collectives);
  shard_map  shard_map with ``axis_name``: each device quantizes its shard,
             EMA statistics, usage and restarts are combined over the axis;
  all        the three from the same start, and how far apart they end.

Prints the reconstruction MSE on held-out images, the codebook perplexity,
the dead-code fraction and the codeword restarts; with ``all``, how far each
parallel form ends from one device. Losses and reconstructions agree to
float rounding; the largest parameter difference grows with the steps
(about 5e-7 after one step and 1e-3 after 30 here, with K = 32) because Adam moves parameters
whose gradient is near zero by a full step in a direction set by rounding.
"""

from typing import Optional

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import sklearn.datasets

from softvq_jax import quantizers

flags.DEFINE_enum("mode", "all", ["single", "jit", "shard_map", "all"], "How to train.")
flags.DEFINE_integer("steps", 300, "Adam steps.")
flags.DEFINE_integer("batch_size", 64, "Global batch; a multiple of the device count.")
flags.DEFINE_integer("num_codewords", 32, "K.")
FLAGS = flags.FLAGS
AXIS = "batch"


class Tokenizer(nn.Module):
  """Conv encoder to a (B, 4, 4, d) grid, soft quantizer, conv decoder."""
  num_codewords: int
  latent_dim: int = 8
  axis_name: Optional[str] = None

  def setup(self):
    self.encoder = nn.Conv(32, (3, 3), strides=2)
    self.z_e = nn.Conv(self.latent_dim, (1, 1))
    self.quantizer = quantizers.SoftVectorQuantizer(
        self.num_codewords, ema_decay=0.9, codebook_init="kmeans",
        dead_code_threshold=0.05, axis_name=self.axis_name)
    self.decoder = nn.ConvTranspose(32, (3, 3), strides=(2, 2))
    self.output = nn.Conv(1, (3, 3))

  def encode(self, x):
    return self.z_e(nn.relu(self.encoder(x)))

  def __call__(self, x, *, train: bool):
    z_q, aux = self.quantizer(self.encode(x), train=train)
    return self.output(nn.relu(self.decoder(z_q))), aux

  def initialize(self, x):
    """The codebook and variances from the encodings of the batch x."""
    self.quantizer.initialize(self.encode(x))


def load_digits():
  """Digits in [0, 1], (N, 8, 8, 1): 1437 to train on, 360 held out."""
  images = sklearn.datasets.load_digits().images.astype(np.float32)[..., None] / 16.0
  order = np.random.default_rng(0).permutation(len(images))
  return images[order[:1437]], images[order[1437:]]


def loss_fn(params, ema, x, rng, model, num_shards=1):
  """MSE + the quantizer's VQ terms; divided by the shards, whose gradients
  shard_map sums (the transpose of using replicated parameters per shard)."""
  (recon, aux), state = model.apply({"params": params, "ema": ema}, x, train=True,
                                    rngs={"noise": rng}, mutable=["ema"])
  loss = jnp.mean(jnp.square(recon - x)) + aux["loss"]
  return loss / num_shards, (state["ema"], aux["perplexity"], aux["dead_code_fraction"])


def make_step(model, optimizer, num_shards=1):
  def step(params, opt_state, ema, x, rng):
    (loss, (ema, perplexity, dead)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, ema, x, rng, model, num_shards)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    if num_shards > 1:
      loss = jax.lax.psum(loss, AXIS)
    return optax.apply_updates(params, updates), opt_state, ema, loss, perplexity, dead
  return step


def init(num_codewords: int, first_batch):
  """The start every mode trains from: ``init`` reads shapes only; the
  codebook is k-means of the first training batch's encodings, and its
  variances that batch's fit (``initialize``)."""
  model = Tokenizer(num_codewords)

  def start(x):
    variables = model.init({"params": jax.random.key(0)}, x[:1], train=False)
    return model.apply(variables, x, method=model.initialize, mutable=True,
                       rngs={"params": jax.random.key(1)})[1]
  return jax.jit(start)(first_batch)


def batches(train_images, steps: int, batch_size: int):
  """The training batches of every mode, in order."""
  order = np.random.default_rng(0)
  return [train_images[order.integers(0, len(train_images), batch_size)]
          for _ in range(steps)]


def train(mode: str, variables, train_images, steps: int, batch_size: int,
          num_codewords: int):
  """Trains from ``variables``; the same batches and keys in every mode."""
  model = Tokenizer(num_codewords)
  params, ema = variables["params"], variables["ema"]
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)
  mesh = Mesh(np.array(jax.devices()), (AXIS,))
  if mode == "single":
    step = jax.jit(make_step(model, optimizer))
    place = lambda x: x
  elif mode == "jit":
    step = jax.jit(make_step(model, optimizer))
    place = lambda x: jax.device_put(x, NamedSharding(mesh, P(AXIS)))
    params, opt_state, ema = jax.device_put((params, opt_state, ema),
                                            NamedSharding(mesh, P()))
  else:
    sharded = Tokenizer(num_codewords, axis_name=AXIS)
    step = jax.jit(jax.shard_map(
        make_step(sharded, optimizer, num_shards=mesh.size), mesh=mesh,
        in_specs=(P(), P(), P(), P(AXIS), P()), out_specs=P()))
    place = lambda x: jax.device_put(x, NamedSharding(mesh, P(AXIS)))
  restarts = []
  for i, x in enumerate(batches(train_images, steps, batch_size)):
    x = place(x)
    params, opt_state, ema, loss, perplexity, dead = step(
        params, opt_state, ema, x, jax.random.fold_in(jax.random.key(2), i))
    restarts.append(dead * num_codewords)  # Dead codewords restarted at this step.
  restarted = [i for i, n in enumerate(np.asarray(restarts)) if n > 0]
  print(f"{mode}: {int(np.sum(restarts))} codeword restarts, at steps {restarted[:8]}"
        f"{' ...' if len(restarted) > 8 else ''}")
  return model, jax.device_get({"params": params, "ema": ema}), float(loss)


def report(mode, model, variables, loss, test_images) -> float:
  """Prints the run's held-out figures; returns its test reconstruction MSE."""
  recon, aux = model.apply(variables, test_images, train=False)
  mse = float(jnp.mean(jnp.square(recon - test_images)))
  print(f"{mode:9s}  train loss {loss:.5f}  test reconstruction MSE {mse:.5f}  "
        f"perplexity {float(aux['perplexity']):.2f} of {model.num_codewords}  "
        f"dead codes {float(aux['dead_code_fraction']):.3f}")
  return mse


def main(argv):
  del argv
  train_images, test_images = load_digits()
  modes = ["single", "jit", "shard_map"] if FLAGS.mode == "all" else [FLAGS.mode]
  print(f"{jax.device_count()} devices, {FLAGS.steps} steps, batch {FLAGS.batch_size}")
  start = init(FLAGS.num_codewords, batches(train_images, 1, FLAGS.batch_size)[0])
  finals, mses = {}, {}
  for mode in modes:
    model, variables, loss = train(mode, start, train_images, FLAGS.steps, FLAGS.batch_size,
                                   FLAGS.num_codewords)
    mses[mode] = report(mode, model, variables, loss, test_images)
    finals[mode] = variables
  for mode in modes[1:]:
    gap = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
              for a, b in zip(jax.tree.leaves(finals[mode]), jax.tree.leaves(finals[modes[0]])))
    print(f"{mode} vs {modes[0]}: largest parameter/codebook difference {gap:.2e}, "
          f"test MSE difference {abs(mses[mode] - mses[modes[0]]):.2e}")


if __name__ == "__main__":
  app.run(main)
