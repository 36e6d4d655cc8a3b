"""Checks of a config against its valid ranges, before any work starts.

``train_and_evaluate`` also validates the config of every run it trains
together (each seed, each value of ``train.vmap_key``).

``validate_config`` (the config alone) and ``validate_data`` (the config
against the loaded data) raise ``InputError`` with a one-line message that
names the key, its value and the valid range or choices.
"""

import os

import ml_collections

from softvq_jax import bottlenecks
from softvq_jax import input_pipeline
from softvq_jax import layers
from softvq_jax import models
from softvq_jax.errors import InputError

LR_SCHEDULES = ("constant", "cosine")


def _choice(config, key: str, choices) -> None:
  value = config[key]
  if value not in choices:
    raise InputError(f"config.{key}={value!r} is not valid; choose one of "
                     f"{', '.join(choices)}")


def _positive(config, key: str, allow_zero: bool = False) -> None:
  value = config[key]
  if value is None or not (value >= 0 if allow_zero else value > 0):
    bound = ">= 0" if allow_zero else "> 0"
    raise InputError(f"config.{key}={value!r} is not valid; it must be {bound}")


def _validate_vmap(config: ml_collections.ConfigDict) -> None:
  key, values = config.train.vmap_key, tuple(config.train.vmap_values)
  if not key:
    if values:
      raise InputError(f"config.train.vmap_values={values!r} needs config.train.vmap_key")
    return
  _choice(config, "train.vmap_key", models.VMAPPABLE_KEYS)
  if key.removeprefix("model.") not in models.BOTTLENECKS[config.model.bottleneck].scalars:
    raise InputError(f"config.train.vmap_key={key!r} is not read by "
                     f"config.model.bottleneck={config.model.bottleneck!r}")
  if not values or len(set(values)) != len(values):
    raise InputError(f"config.train.vmap_values={values!r} is not valid; "
                     f"it must list distinct values of {key}")
  for value in values:
    if not isinstance(value, (int, float)) or not value >= 0:
      raise InputError(f"config.train.vmap_values={values!r} is not valid; "
                       f"the values of {key} must be numbers >= 0")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ``InputError`` for the first invalid key of ``config``."""
  c = config  # ConfigDict answers dotted keys: c["model.latent_dim"].
  _choice(c, "model.bottleneck", models.BOTTLENECKS)
  _choice(c, "model.network", models.NETWORKS)
  _choice(c, "model.recon", models.RECONSTRUCTIONS)
  _choice(c, "model.output_activation", models.OUTPUT_ACTIVATIONS)
  _choice(c, "model.normalizer", bottlenecks.NORMALIZERS)
  _choice(c, "data.name", input_pipeline.DATASETS)
  _choice(c, "data.source", input_pipeline.SOURCES)
  _choice(c, "data.pixel_range", input_pipeline.PIXEL_RANGES)
  _choice(c, "train.lr_schedule", LR_SCHEDULES)
  _choice(c, "model.codebook_init", layers.CODEBOOK_INITS)
  for key in ("model.latent_dim", "model.num_codewords", "train.num_steps",
              "train.batch_size", "train.learning_rate", "train.log_every",
              "train.checkpoint_every", "train.max_checkpoints", "train.num_seeds",
              "eval.kmeans_inits", "eval.probe_steps", "eval.probe_batch_size",
              "eval.probe_learning_rate", "eval.batch_size"):
    _positive(c, key)
  for key in ("model.noise_std", "model.beta", "model.commitment",
              "model.vq_weight", "model.max_alpha", "model.dead_code_threshold",
              "data.validation_size",
              "eval.num_clusters", "eval.tsne_points"):
    _positive(c, key, allow_zero=True)
  _validate_vmap(config)
  if config.train.batch_size % num_devices:
    raise InputError(f"config.train.batch_size={config.train.batch_size} is not valid; "
                     f"it must be a multiple of the device count {num_devices}")
  decay = config.model.ema_decay
  if decay is not None and not 0 < decay < 1:
    raise InputError(f"config.model.ema_decay={decay!r} is not valid; "
                     "it must be in (0, 1), or None for no EMA")
  quantizer = config.model.bottleneck in ("vq", "soft_vq")
  if config.model.codebook_init != "uniform" and not quantizer:
    raise InputError(f"config.model.codebook_init={config.model.codebook_init!r} needs a "
                     "codebook: model.bottleneck vq or soft_vq")
  if config.model.dead_code_threshold > 0 and (not quantizer or decay is None):
    raise InputError("config.model.dead_code_threshold > 0 restarts codewords of an EMA "
                     "codebook: model.bottleneck vq or soft_vq with model.ema_decay")
  if config.model.recon == "bernoulli" and config.data.pixel_range != "unit":
    raise InputError("config.model.recon='bernoulli' needs config.data.pixel_range='unit'")
  if (config.data.name == "digits") != (config.data.source == "sklearn"):
    raise InputError(f"config.data.source={config.data.source!r} cannot load "
                     f"config.data.name={config.data.name!r}; digits comes from "
                     "sklearn and sklearn has only digits")
  if config.data.source == "files" and not config.data.dir:
    raise InputError("config.data.dir is missing; data.source='files' needs the "
                     "folder of the official files")
  if config.data.dir and not os.path.isdir(config.data.dir):
    raise InputError(f"config.data.dir={config.data.dir!r} is not a directory")


def validate_data(config: ml_collections.ConfigDict, data: input_pipeline.Splits) -> None:
  """Raises ``InputError`` where ``config`` does not fit the loaded ``data``."""
  init = config.model.codebook_init
  if init != "uniform" and config.model.num_codewords > len(data.train_images):
    raise InputError(f"config.model.num_codewords={config.model.num_codewords} is more than "
                     f"the {len(data.train_images)} training images that "
                     f"model.codebook_init={init!r} draws the codebook from")
