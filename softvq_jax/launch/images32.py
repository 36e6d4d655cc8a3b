"""Shared config of the 32x32x3 datasets of Table 2 (SVHN, CIFAR-10).

CNN encoder/decoder, d = 256, pixels in [-0.5, 0.5], linear decoder output,
batch 32, Adam 3e-4. The default is the soft VQ-VAE row: K = 32 and the
paper's early stop at 10000 steps; the other rows' presets train 40000.

The authors' VQ weights 2.0 * (codebook + 7.5 commitment) on per-element means
are vq_weight = 2.0 * 3072 / 256 = 24 with commitment 7.5 in this library's
units; the information-dropout weight 0.5 is beta = 0.5 / 256. The soft
VQ-VAE row keeps eq. (5)'s normaliser: the SVHN notebook divides the already
normalised weights by the smoothing term, which is neither of
functional.NORMALIZERS.
"""

from softvq_jax.launch import presets

LATENT_DIM = 256
NUM_PIXELS = 32 * 32 * 3
PAPER = presets.PaperValues(beta_vae_beta=100.0, vq_codewords=512,
                            soft_vq_codewords=32, steps=40000,
                            soft_vq_steps=10000,
                            info_dropout_beta=0.5 / LATENT_DIM,
                            soft_vq_normalizer="paper", num_pixels=NUM_PIXELS)


def get_config(dataset: str, args=None):
  """The config of ``dataset`` (svhn_cropped or cifar10) with ``args`` applied."""
  config = presets.get_base_config()
  config.data.name = dataset
  config.data.source = "tfds"
  config.data.pixel_range = "centered"
  config.model.network = "cnn"
  config.model.latent_dim = LATENT_DIM
  config.model.num_codewords = PAPER.soft_vq_codewords
  config.model.noise_std = 0.01
  config.model.commitment = 7.5
  config.model.vq_weight = 2.0 * NUM_PIXELS / LATENT_DIM
  config.model.output_activation = "identity"
  config.train.num_steps = PAPER.soft_vq_steps
  config.train.batch_size = 32
  return presets.apply_args(config, args, PAPER)
