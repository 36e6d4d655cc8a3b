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


# The paper's Table 2: clustering ACC (%), classification (%); no NMI reported.
PAPER_RESULTS = {
    "svhn_cropped": {
        "ae": (11.96, None, 25.95), "vae": (13.58, None, 26.42),
        "beta_vae": (14.54, None, 49.62), "info_dropout": (12.75, None, 24.46),
        "vq_vae": (12.96, None, 31.57), "soft_vq_vae": (17.68, None, 50.48),
    },
    "cifar10": {
        "ae": (21.73, None, 40.92), "vae": (24.12, None, 38.83),
        "beta_vae": (22.80, None, 36.91), "info_dropout": (21.96, None, 39.89),
        "vq_vae": (20.30, None, 33.51), "soft_vq_vae": (23.83, None, 44.54),
    },
}


SWEEPS = {
    # Table 2: both datasets x the 6 trained rows x presets.SEEDS.
    "table2": lambda: [presets.paper_point(row, seed, PAPER, dataset=dataset)
                       for seed in presets.SEEDS for dataset in PAPER_RESULTS
                       for row in presets.PRESETS if row != "soft_vq_vae_eq5"],
}


def get_sweep(name):
  """The points of ``SWEEPS[name]``, for ``python -m softvq_jax.sweep --sweep=NAME``."""
  return presets.named_sweep(SWEEPS, name)
