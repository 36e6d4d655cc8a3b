"""MNIST, Table 1: MLP 784-500-500-2000-64, batch 32, 40000 steps, Adam 3e-4.

Usage: --config=configs/mnist.py[:PRESETS] with PRESETS from
softvq_jax.configs.default (e.g. ``:beta_vae`` or ``:vq_vae,quick``). The
default is the soft VQ-VAE row.

Loss weights are the authors' (reference-code-facts.md) in this library's
units (recon summed over the 784 pixels, VQ terms summed over d = 64):
3.0 * (codebook + 2.5 commitment) on per-element means is
vq_weight = 3.0 * 784 / 64 = 36.75 with commitment 2.5; the information-
dropout cost weight 0.5 on a per-element mean is beta = 0.5 / 64.
"""

from softvq_jax.configs import default

LATENT_DIM = 64
PAPER = default.PaperValues(beta_vae_beta=20.0, vq_codewords=128,
                            soft_vq_codewords=128, steps=40000,
                            soft_vq_steps=40000,
                            info_dropout_beta=0.5 / LATENT_DIM)


def get_config(args=None):
  config = default.get_base_config()
  config.data.name = "mnist"
  config.data.source = "tfds"
  config.model.network = "mlp"
  config.model.latent_dim = LATENT_DIM
  config.model.num_codewords = 128
  config.model.noise_std = 0.01
  config.model.commitment = 2.5
  config.model.vq_weight = 3.0 * 784 / LATENT_DIM
  config.model.output_activation = "sigmoid"
  config.data.pixel_range = "unit"
  config.train.num_steps = 40000
  config.train.batch_size = 32
  return default.apply_args(config, args, PAPER)

