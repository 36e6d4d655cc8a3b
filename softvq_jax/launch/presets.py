"""Shared defaults of every experiment, and the paper's named presets.

Per-dataset files in ``configs/`` call ``get_base_config`` and then
``apply_args``, which reads the ``--config=FILE:ARGS`` string: comma-separated
preset names (a row of the paper's tables) and ``quick`` (a smoke-test run).
Their sweeps are lists of ``softvq_jax.launch.runs.Point``s built by ``paper_point``.
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
  fsq               FSQ, levels (5, 5, 5): 125 codes, of a LayerNorm of z_e
                    projected to d = 3 (model.quantizer_dim)
  lfq               LFQ of a LayerNorm of z_e projected to d = 7: 128 codes;
                    entropy weight 0.1 per pixel-mean loss
                    (PaperValues.num_pixels), commitment 0.25
  residual_vq       4 stages of the VQ-VAE row's codebook
  residual_soft_vq  4 stages of soft VQ with the soft VQ-VAE row's K and
                    normaliser, variances per codeword
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence

import ml_collections

from softvq_jax.launch import config_keys
from softvq_jax.launch import runs


@dataclasses.dataclass(frozen=True)
class PaperValues:
  """The values of the paper's rows that differ between datasets."""
  beta_vae_beta: float  # beta of the beta-VAE row.
  vq_codewords: int  # K of the VQ-VAE row.
  soft_vq_codewords: int  # K of the soft VQ-VAE row.
  steps: int  # Training steps of every row but soft VQ-VAE.
  soft_vq_steps: int  # Training steps of the soft VQ-VAE row (early stop).
  info_dropout_beta: float  # Information-dropout penalty weight.
  soft_vq_normalizer: str  # Soft weights of the soft VQ-VAE row (functional.NORMALIZERS).
  num_pixels: int  # Per image: LFQ's entropy weight is 0.1 per pixel-mean loss (LVQ's).


def get_base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all datasets: every key, declared once in
  ``softvq_jax.launch.config_keys`` with its meaning."""
  return config_keys.base_config()


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
      "fsq": {"model.bottleneck": "fsq", "model.quantizer_dim": 3,
              "model.fsq_levels": (5, 5, 5)},
      "lfq": {"model.bottleneck": "lfq", "model.quantizer_dim": 7,
              "model.entropy_weight": 0.1 * values.num_pixels, "model.commitment": 0.25},
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
  (``softvq_jax.launch.runs.point_dir``).
  """
  preset = {} if row == "raw" else preset_overrides(row, values)
  return runs.point(row, seed, dataset=dataset, variant=variant, swept=swept,
                    overrides={**preset, **(overrides or {})})


def table_sweep(rows: Sequence[str], values: PaperValues,
                seeds: Sequence[int] = SEEDS) -> list:
  """Every row x seed, seed-major: an interrupted sweep has all rows of seed 0."""
  return [paper_point(row, seed, values) for seed in seeds for row in rows]
