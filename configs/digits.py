"""The embedded default: scikit-learn's 8x8 digits (1797 real images).

The images ship inside scikit-learn, so this runs anywhere without a download.
Deterministic split: 1437 train / 360 test. The paper's MLP trunk at a
smaller scale (d = 16, K = 32) trains soft VQ in about a minute on 2 cores.
"""

from softvq_jax.launch import presets

LATENT_DIM = 16
NUM_PIXELS = 64
PAPER = presets.PaperValues(beta_vae_beta=20.0, vq_codewords=32,
                            soft_vq_codewords=32, steps=3000,
                            soft_vq_steps=3000,
                            info_dropout_beta=0.5 / LATENT_DIM,
                            soft_vq_normalizer="notebook", num_pixels=NUM_PIXELS)


def get_config(args=None):
  config = presets.get_base_config()
  config.data.name = "digits"
  config.data.source = "sklearn"
  config.data.pixel_range = "unit"
  config.model.network = "mlp"
  config.model.mlp_hidden = (256, 256, 512)
  config.model.latent_dim = LATENT_DIM
  config.model.num_codewords = PAPER.soft_vq_codewords
  config.model.noise_std = 0.01
  config.model.normalizer = PAPER.soft_vq_normalizer
  config.model.commitment = 2.5
  config.model.vq_weight = 3.0 * NUM_PIXELS / LATENT_DIM
  config.model.output_activation = "sigmoid"
  config.train.num_steps = PAPER.soft_vq_steps
  config.train.batch_size = 32
  config.train.log_every = 250
  config.train.checkpoint_every = 1000
  config.eval.probe_steps = 5000
  config.eval.tsne_points = 360
  return presets.apply_args(config, args, PAPER)
