"""Shared defaults of every experiment, and the paper's named presets.

Per-dataset files in ``configs/`` call ``get_base_config`` and then
``apply_args``, which reads the ``--config=FILE:ARGS`` string: comma-separated
preset names (a row of the paper's tables) and ``quick`` (a smoke-test run).
Their sweeps are lists of ``softvq_jax.runs.Point``s built by ``paper_point``.
This is a config file: it imports the engine's helpers, and no engine module
imports it.

Presets, one per row of Tables 1 and 2 (dataset-specific values come from
the per-dataset ``PaperValues``):
  ae            baseline autoencoder (bottleneck none)
  vae           VAE, beta = 1
  beta_vae      beta-VAE, beta = 20 (MNIST) or 100 (SVHN, CIFAR-10)
  info_dropout  information dropout with the authors' penalty weight
  vq_vae        VQ-VAE, K = 128 (MNIST) or 512 (SVHN, CIFAR-10)
  soft_vq_vae   soft VQ-VAE, K = 128 (MNIST) or 32 with the early stop at
                10000 steps (SVHN, CIFAR-10), with the normaliser that
                produced the paper's number (``PaperValues.soft_vq_normalizer``)
  soft_vq_vae_eq5  the soft VQ-VAE row with eq. (5) as printed (sigma^-d)

Presets beside Table 1 (``QUANTIZER_PRESETS``), the paper's question asked
of other quantizers, each with the paper's MLP, steps and loss weights:
  fsq               FSQ, levels (5, 5, 5) on a d = 3 latent: 125 codes
  lfq               LFQ on a d = 7 latent: 128 codes; entropy weight from
                    the dataset's config
  residual_vq       4 stages of the VQ-VAE row's codebook
  residual_soft_vq  4 stages of soft VQ with the soft VQ-VAE row's K and
                    normaliser, variances per codeword
"""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import ml_collections
from ml_collections import config_dict

from softvq_jax import runs


@dataclasses.dataclass(frozen=True)
class PaperValues:
  """The values of the paper's rows that differ between datasets."""
  beta_vae_beta: float  # beta of the beta-VAE row.
  vq_codewords: int  # K of the VQ-VAE row.
  soft_vq_codewords: int  # K of the soft VQ-VAE row.
  steps: int  # Training steps of every row but soft VQ-VAE.
  soft_vq_steps: int  # Training steps of the soft VQ-VAE row (early stop).
  info_dropout_beta: float  # Information-dropout penalty weight.
  soft_vq_normalizer: str  # Soft weights of the soft VQ-VAE row (bottlenecks.NORMALIZERS).


def get_base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all datasets; every key is declared here."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds init, data order, noise, K-means and the probe.

  config.model = model = ml_collections.ConfigDict()
  model.bottleneck = "soft_vq"  # none|vae|info_dropout|vq|soft_vq|fsq|lfq|residual_(soft_)vq.
  model.network = "mlp"  # mlp (MNIST, digits) | cnn (SVHN, CIFAR-10).
  model.mlp_hidden = (500, 500, 2000)  # Encoder trunk sizes; decoder mirrors.
  model.cnn_channels = (64, 128, 256, 512)  # Conv channels; decoder mirrors.
  model.latent_dim = 64  # d, the size of z_e.
  model.num_codewords = 128  # K, codebook size (vq, soft_vq; per stage for residual_*).
  model.num_stages = 4  # Quantizer stages of residual_vq and residual_soft_vq.
  model.fsq_levels = (5, 5, 5)  # fsq: levels per dimension; latent_dim = their count.
  model.entropy_weight = 0.1  # lfq: weight of MAGVIT-v2's entropy penalty (bits = latent_dim).
  model.noise_std = 0.0  # Std of the white noise on z_e in training (soft_vq).
  model.normalizer = "paper"  # soft_vq weights: paper (sigma^-d) | notebook (sigma^+1).
  model.variance = "sample"  # sigma_k^2: sample (soft_vq's head, the paper) | codeword | fixed.
  model.log_var_init = config_dict.placeholder(float)  # codeword/fixed start; None: data fit.
  model.beta = 1.0  # KL weight (vae) or penalty weight (info_dropout).
  model.max_alpha = 0.7  # Upper bound of information dropout's noise scale.
  model.commitment = 0.25  # beta of eq. (27), the commitment weight (codebooks; lfq's too).
  model.vq_weight = 1.0  # Scale of eq. (27)'s VQ terms (codebooks; lfq's commitment too).
  model.codebook_init = "uniform"  # Codebooks: uniform (TF1 unit scaling) | data | kmeans.
  model.ema_decay = config_dict.placeholder(float)  # Codebooks: EMA decay; None = off.
  model.dead_code_threshold = 0.0  # EMA codebooks: restart codewords under this count; 0 = off.
  model.recon = "nmse"  # Reconstruction term: nmse | bernoulli.
  model.output_activation = "sigmoid"  # Decoder output: sigmoid | identity.

  config.data = data = ml_collections.ConfigDict()
  data.name = "mnist"  # mnist | svhn_cropped | cifar10 | digits.
  data.source = "tfds"  # tfds | files | sklearn.
  data.dir = config_dict.placeholder(str)  # tfds data_dir, or the folder of files.
  data.verify_md5 = True  # files: check the known md5 sums of the official files.
  data.download = False  # files: fetch missing official files into data.dir (no TensorFlow).
  data.download_url = ""  # files: base URL of a mirror for data.download; "" = official.
  data.pixel_range = "unit"  # unit ([0, 1]) | centered ([-0.5, 0.5]).
  data.validation_size = 0  # >0: hold out this many train images, evaluate on them.

  config.train = train = ml_collections.ConfigDict()
  train.num_steps = 40000  # Optimizer updates.
  train.batch_size = 32  # Global batch, split across devices.
  train.learning_rate = 3e-4  # Adam learning rate.
  train.lr_schedule = "constant"  # constant | cosine (decay to 0 over num_steps).
  train.compute_dtype = "float32"  # float32 | bfloat16 (trunk activations; params stay f32).
  train.log_every = 500  # Steps between metrics lines (and per dispatch).
  train.checkpoint_every = 5000  # Steps between orbax checkpoints.
  train.max_checkpoints = 2  # Checkpoints kept on disk.
  train.num_seeds = 1  # >1: seeds seed..seed+num_seeds-1 in one vmapped program.
  train.vmap_key = ""  # A key of models.VMAPPABLE_KEYS: one run per value of vmap_values.
  train.vmap_values = ()  # The values of vmap_key, vmapped with the seeds in one program.

  config.eval = ev = ml_collections.ConfigDict()
  ev.kmeans_inits = 100  # K-means initialisations; the best inertia is kept.
  ev.kmeans_backend = "auto"  # K-means: jax (on device) | sklearn (host) | auto (jax off CPU).
  ev.num_clusters = 0  # K-means clusters; 0 = the number of classes.
  ev.probe_steps = 30000  # Adam steps of the linear probe.
  ev.probe_batch_size = 128  # Linear-probe batch size.
  ev.probe_learning_rate = 0.01  # Linear-probe Adam learning rate.
  ev.batch_size = 1000  # Batch size when encoding the splits.
  ev.figures = True  # Write t-SNE, reconstruction, usage and curve PNGs.
  ev.tsne_points = 2000  # Test latents shown in the t-SNE figure.
  return config


# The seeds of every table's rows.
SEEDS = (0, 1, 2)
PRESETS = ("ae", "vae", "beta_vae", "info_dropout", "vq_vae", "soft_vq_vae",
           "soft_vq_vae_eq5")
QUANTIZER_PRESETS = ("fsq", "lfq", "residual_vq", "residual_soft_vq")


def preset_overrides(name: str, values: PaperValues) -> Dict[str, Any]:
  """The dotted-key overrides of the paper's row ``name`` (module docstring)."""
  soft_vq = {"model.bottleneck": "soft_vq", "model.num_codewords": values.soft_vq_codewords}
  rows = {
      "ae": {"model.bottleneck": "none"},
      "vae": {"model.bottleneck": "vae", "model.beta": 1.0},
      "beta_vae": {"model.bottleneck": "vae", "model.beta": values.beta_vae_beta},
      "info_dropout": {"model.bottleneck": "info_dropout",
                       "model.beta": values.info_dropout_beta},
      "vq_vae": {"model.bottleneck": "vq", "model.num_codewords": values.vq_codewords},
      "soft_vq_vae": {**soft_vq, "model.normalizer": values.soft_vq_normalizer},
      "soft_vq_vae_eq5": {**soft_vq, "model.normalizer": "paper"},
      "fsq": {"model.bottleneck": "fsq", "model.latent_dim": 3,
              "model.fsq_levels": (5, 5, 5)},
      "lfq": {"model.bottleneck": "lfq", "model.latent_dim": 7},
      "residual_vq": {"model.bottleneck": "residual_vq",
                      "model.num_codewords": values.vq_codewords, "model.num_stages": 4},
      "residual_soft_vq": {"model.bottleneck": "residual_soft_vq",
                           "model.num_codewords": values.soft_vq_codewords,
                           "model.normalizer": values.soft_vq_normalizer,
                           "model.variance": "codeword", "model.num_stages": 4},
  }
  if name not in rows:
    raise ValueError(f"unknown preset {name!r}; choose from {PRESETS + QUANTIZER_PRESETS}")
  steps = values.soft_vq_steps if name.startswith("soft_vq_vae") else values.steps
  return {**rows[name], "train.num_steps": steps}


def apply_args(config: ml_collections.ConfigDict, args: str | None,
               values: PaperValues) -> ml_collections.ConfigDict:
  """Applies the comma-separated presets, then ``quick``, of ``FILE:ARGS``."""
  args = [arg for arg in (args or "").split(",") if arg]
  for arg in args:
    if arg != "quick":
      runs.apply_overrides(config, preset_overrides(arg, values))
  if "quick" in args:
    runs.make_quick(config)
  return config


def paper_point(row: str, seed: int, values: PaperValues, *, dataset: str = "",
                variant: str = "", swept: Optional[Mapping[str, Any]] = None,
                overrides: Optional[Mapping[str, Any]] = None) -> runs.Point:
  """One run of a sweep: a paper row (a preset, or ``raw`` for pixels) and a seed.

  The row's preset comes first among the overrides; ``dataset``, ``variant``
  and ``swept`` (dotted keys) also name the run's directory
  (``softvq_jax.workdir.point_dir``).
  """
  preset = {} if row == "raw" else preset_overrides(row, values)
  return runs.point(row, seed, dataset=dataset, variant=variant, swept=swept,
                    overrides={**preset, **(overrides or {})})


def table_sweep(rows: Sequence[str], values: PaperValues,
                seeds: Sequence[int] = SEEDS) -> list:
  """Every row x seed, seed-major: an interrupted sweep has all rows of seed 0."""
  return [paper_point(row, seed, values) for seed in seeds for row in rows]


def named_sweep(sweeps: Mapping[str, Callable[[], List[runs.Point]]],
                name: str) -> List[runs.Point]:
  """A config file's ``get_sweep``: the points of ``sweeps[name]``."""
  if name not in sweeps:
    *rest, last = sweeps
    raise ValueError(f"unknown sweep {name!r}; choose "
                     + (f"{', '.join(rest)} or {last}" if rest else last))
  return sweeps[name]()
