"""Checks of a config against its valid ranges, before any work starts.

A launch is validated once: ``main`` through ``train.prepare_runs``, a sweep
every launch before the first starts. The checks of a value alone are its
key's (``softvq_jax.launch.config_keys``); this module adds those that relate keys
to each other, the workdir and the data.

``validate_config`` (the config alone), ``validate_workdir`` and
``validate_data`` (the config against the loaded data: image size, cluster
count, a memory estimate) raise ``InputError`` with a one-line message that
names the key, its value and the valid range or choices. All of them run
before anything is written.
"""

import math
import os
import resource
from typing import Optional

import jax
import ml_collections
import numpy as np

from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError
from softvq_jax.launch import checkpoints
from softvq_jax.launch import config_keys
from softvq_jax.launch import locks
from softvq_jax.launch import steps
from softvq_jax.launch import training_log
from softvq_jax.launch import workdir as workdir_lib
from softvq_jax.model import autoencoder

# Seeds reach numpy and scikit-learn, whose seeds are 32-bit.
SEED_LIMIT = 2**32


def _seeds_and_figures(config) -> None:
  """The seeds 32-bit; a t-SNE figure of at least 2 points."""
  last_seed = config.seed + config.train.num_seeds - 1
  if not isinstance(config.seed, int) or last_seed >= SEED_LIMIT:
    raise InputError(f"config.seed={config.seed!r} is not valid; seeds (with "
                     f"train.num_seeds={config.train.num_seeds}) must be integers < 2**32")
  if config.eval.figures and config.eval.tsne_points < 2:
    raise InputError(f"config.eval.tsne_points={config.eval.tsne_points} is not valid; "
                     "the t-SNE figure needs at least 2 points (or eval.figures=False)")


def _validate_vmap(config: ml_collections.ConfigDict) -> None:
  key, values = config.train.vmap_key, tuple(config.train.vmap_values)
  if not key:
    if values:
      raise InputError(f"config.train.vmap_values={values!r} needs config.train.vmap_key")
    return
  config_keys.choice(autoencoder.VMAPPABLE_KEYS)("train.vmap_key", key)
  if key.removeprefix("model.") not in autoencoder.BOTTLENECKS[config.model.bottleneck].scalars:
    raise InputError(f"config.train.vmap_key={key!r} is not read by "
                     f"config.model.bottleneck={config.model.bottleneck!r}")
  if not values or len(set(values)) != len(values):
    raise InputError(f"config.train.vmap_values={values!r} is not valid; "
                     f"it must list distinct values of {key}")
  for value in values:
    if not isinstance(value, (int, float)) or not value >= 0:
      raise InputError(f"config.train.vmap_values={values!r} is not valid; "
                       f"the values of {key} must be numbers >= 0")


def _validate_data_keys(data: ml_collections.ConfigDict) -> None:
  """The ``config.data`` keys that depend on each other and on the disk."""
  if (data.name == "digits") != (data.source == "sklearn"):
    raise InputError(f"config.data.source={data.source!r} cannot load "
                     f"config.data.name={data.name!r}; digits comes from "
                     "sklearn and sklearn has only digits")
  if data.source == "files" and not data.dir:
    raise InputError("config.data.dir is missing; config.data.source='files' needs the "
                     "folder of the official files")
  if (data.download or data.download_url) and data.source != "files":
    raise InputError("config.data.download and config.data.download_url need "
                     f"config.data.source='files', not {data.source!r}")
  url = data.download_url
  if url and not url.startswith(("http://", "https://")):
    raise InputError(f"config.data.download_url={url!r} is not an http:// or https:// URL")
  if data.dir and os.path.exists(data.dir) and not os.path.isdir(data.dir):
    raise InputError(f"config.data.dir={data.dir!r} is not a directory")
  # tfds creates its data_dir, and so does data.download.
  if data.dir and not os.path.isdir(data.dir) and not (data.source == "tfds" or data.download):
    hint = (" (set config.data.download=True to fetch the official files into it)"
            if data.source == "files" else "")
    raise InputError(f"config.data.dir={data.dir!r} is not a directory{hint}")


def _validate_quantizer(model: ml_collections.ConfigDict) -> None:
  """The codebook and variance options against each other and the bottleneck."""
  if model.log_var_init is not None and (model.variance == "sample"
                                         or not math.isfinite(model.log_var_init)):
    raise InputError(f"config.model.log_var_init={model.log_var_init!r} is not valid; it "
                     "must be finite, and it starts variances per codeword or fixed "
                     "(model.variance codeword or fixed), not the head's")
  decay = model.ema_decay
  if decay is not None and not 0 < decay < 1:
    raise InputError(f"config.model.ema_decay={decay!r} is not valid; "
                     "it must be in (0, 1), or None for no EMA")
  codebook = model.bottleneck in autoencoder.CODEBOOKS
  if model.codebook_init != "uniform" and not codebook:
    raise InputError(f"config.model.codebook_init={model.codebook_init!r} needs a "
                     f"codebook: model.bottleneck one of {', '.join(autoencoder.CODEBOOKS)}")
  if model.dead_code_threshold > 0 and (not codebook or decay is None):
    raise InputError("config.model.dead_code_threshold > 0 restarts codewords of an EMA "
                     f"codebook: model.bottleneck one of {', '.join(autoencoder.CODEBOOKS)} "
                     "with model.ema_decay")
  if model.bottleneck == "residual_soft_vq" and model.variance == "sample":
    raise InputError("config.model.variance='sample' needs soft_vq's head; "
                     "model.bottleneck='residual_soft_vq' takes codeword or fixed")


def _validate_scalar_quantizer(model: ml_collections.ConfigDict) -> None:
  """FSQ's levels and LFQ's bits against the size they quantize."""
  dim = model.quantizer_dim or model.latent_dim
  where = ("config.model.quantizer_dim" if model.quantizer_dim else "config.model.latent_dim")
  if model.quantizer_dim is not None and model.quantizer_dim < 1:
    raise InputError(f"config.model.quantizer_dim={model.quantizer_dim!r} is not valid; it "
                     "must be a positive integer or None")
  levels = tuple(model.fsq_levels)
  if model.bottleneck == "fsq" and (
      not levels or not all(isinstance(v, int) and v >= 2 for v in levels)
      or len(levels) != dim):
    raise InputError(f"config.model.fsq_levels={levels!r} is not valid; it must list "
                     f"integers >= 2, one per quantized dimension ({where}={dim})")
  if model.bottleneck == "lfq" and dim > 24:
    raise InputError(f"{where}={dim} is not valid for model.bottleneck='lfq'; it is the "
                     "bits per code (2^d codes), at most 24")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ``InputError`` for the first invalid or missing key of ``config``."""
  try:
    _validate_config(config, num_devices)
  except (KeyError, AttributeError) as e:  # ConfigDict's KeyError: ("'model'",).
    key = str(e.args[0] if e.args else e).strip("'\"")
    raise InputError(f"the config has no key {key!r}; config files build on "
                     "softvq_jax.launch.presets.get_base_config(), which declares every "
                     "key") from None


def _validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  config_keys.check_values(config)
  _seeds_and_figures(config)
  _validate_vmap(config)
  if config.train.batch_size % num_devices:
    raise InputError(f"config.train.batch_size={config.train.batch_size} is not valid; "
                     f"it must be a multiple of the device count {num_devices}")
  _validate_quantizer(config.model)
  _validate_scalar_quantizer(config.model)
  if config.model.recon == "bernoulli" and config.data.pixel_range != "unit":
    raise InputError("config.model.recon='bernoulli' needs config.data.pixel_range='unit'")
  _validate_data_keys(config.data)


# What a workdir holds, by kind: a directory, or a regular file.
WORKDIR_ENTRIES = {
    checkpoints.CHECKPOINTS_DIR: "directory", checkpoints.CHECKSUMS_DIR: "directory",
    checkpoints.SET_ASIDE_DIR: "directory", workdir_lib.CONFIG_FILE: "file",
    workdir_lib.EVAL_FILE: "file", workdir_lib.TIMING_FILE: "file",
    training_log.METRICS_FILE: "file", locks.LOCK_FILE: "file"}


def validate_workdir(workdir: str) -> None:
  """Raises ``InputError`` for a workdir that cannot be a directory we write:
  a file, a dangling symlink, an entry of the wrong kind (``checkpoints`` a
  file, ``config.json`` a directory, ``.lock`` a symlink), no write access,
  or a string that cannot be a path (``path_string``)."""
  path_string(workdir, "--workdir")
  if os.path.islink(workdir) and not os.path.exists(workdir):
    raise InputError(f"--workdir={workdir} is a symlink to {os.readlink(workdir)}, "
                     "which does not exist")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"--workdir={workdir} is a file, not a directory")
  for name, kind in WORKDIR_ENTRIES.items():
    path = os.path.join(workdir, name)
    if os.path.islink(path) or (os.path.exists(path) and os.path.isdir(path) != (
        kind == "directory")):
      found = ("a symlink" if os.path.islink(path) else
               "a directory" if os.path.isdir(path) else "a file")
      raise InputError(f"{path} should be a {kind}, not {found}; move it away or use a "
                       "new --workdir")
  writable(workdir, "--workdir")
  if os.path.isdir(os.path.join(workdir, checkpoints.CHECKPOINTS_DIR)):
    writable(os.path.join(workdir, checkpoints.CHECKPOINTS_DIR), "--workdir")


def _nearest_existing(path: str) -> str:
  """``path`` made absolute, or its nearest ancestor that exists."""
  existing = os.path.abspath(path)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  return existing


def path_string(path: str, flag: str) -> None:
  """Raises ``InputError`` for a string that no file system takes as a path:
  empty, with a NUL, longer than PATH_MAX or with a component longer than
  NAME_MAX (the limits of the nearest existing parent's file system)."""
  if not path:
    raise InputError(f"{flag} is empty; give a directory")
  if "\0" in path:
    raise InputError(f"{flag}={path!r} holds a NUL character")
  full, existing = os.path.abspath(path), _nearest_existing(path)
  existing = existing if os.path.isdir(existing) else os.path.dirname(existing)
  path_max, name_max = (os.pathconf(existing, name) for name in ("PC_PATH_MAX", "PC_NAME_MAX"))
  if len(os.fsencode(full)) >= path_max:
    raise InputError(f"{flag} is {len(os.fsencode(full))} bytes long as an absolute path; "
                     f"this file system takes at most {path_max - 1}")
  longest = max(full.split(os.sep), key=lambda part: len(os.fsencode(part)))
  if len(os.fsencode(longest)) > name_max:
    raise InputError(f"{flag} has a component of {len(os.fsencode(longest))} bytes "
                     f"({longest[:20]}...); this file system takes at most {name_max}")


def writable(path: str, flag: str) -> None:
  """Raises ``InputError`` unless ``path`` (or its nearest existing parent,
  which must be a directory) can be written."""
  path_string(path, flag)
  existing = _nearest_existing(path)
  if not os.path.isdir(existing):
    raise InputError(f"{flag}={path}: {existing} is a file, not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(f"{flag}={path}: {existing} is not writable")


def _limit_bytes() -> Optional[int]:
  """This process's memory limit below the RAM: cgroup v2 or v1, or rlimits."""
  limits = []
  for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      with open(path) as f:
        text = f.read().strip()
      if text.isdigit():
        limits.append(int(text))
    except OSError:
      pass
  for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
    soft, _ = resource.getrlimit(limit)
    if soft != resource.RLIM_INFINITY:
      limits.append(soft)
  return min(limits, default=None)


def available_memory() -> int:
  """Bytes of memory of the first device: on CPU, the host's RAM or the
  process's limit (cgroup, ``ulimit``), whichever is less."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  limit = _limit_bytes()
  return ram if limit is None else min(ram, limit)


def memory_estimate(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
                    num_runs: int) -> int:
  """A lower bound of the bytes a training program needs on one device.

  Per run trained together: the parameters, their gradients, Adam's two
  moments and the step's updated parameters and moments (7 copies), and for
  a codebook the (batch, K) distances, weights and their gradients; once:
  the training split, and evaluation's batch of images and of probe latents.
  Computed from shapes alone (``jax.eval_shape``).
  """
  model = autoencoder.make_model(config.model, data.image_shape)
  optimizer = steps.make_optimizer(config.train)
  images = jax.ShapeDtypeStruct(data.train_images.shape, np.float32)
  key = jax.random.key(0)
  state = jax.eval_shape(lambda x: steps.init_state(
      key, model, optimizer, steps.init_images(key, x, config.model)), images)
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
  per_run = 7 * param_bytes
  if config.model.bottleneck in autoencoder.CODEBOOKS:
    stages = config.model.num_stages if config.model.bottleneck.startswith("residual") else 1
    per_run += 4 * config.train.batch_size * config.model.num_codewords * 4 * stages
  # Evaluation: a batch of images being encoded, a batch of probe latents.
  pixels = int(np.prod(data.image_shape))
  evaluation_bytes = 4 * (config.eval.batch_size * pixels
                          + config.eval.probe_batch_size * config.model.latent_dim)
  return num_runs * per_run + data.train_images.size * 4 + evaluation_bytes


def validate_data(config: ml_collections.ConfigDict, data: input_pipeline.Splits,
                  num_runs: int = 1) -> None:
  """Raises ``InputError`` where ``config`` does not fit the loaded ``data``."""
  if not len(data.train_images) or not len(data.eval_images):
    raise InputError(f"the {config.data.name} data in {config.data.dir or 'its source'} "
                     f"holds {len(data.train_images)} training and {len(data.eval_images)} "
                     f"{data.eval_split} images; both splits need some")
  if config.model.network == "cnn":
    factor = 2 ** len(config.model.cnn_channels)
    height, width = data.image_shape[:2]
    if height % factor or width % factor:
      raise InputError(f"config.model.network='cnn' with {len(config.model.cnn_channels)} "
                       f"stride-2 layers needs image sides divisible by {factor}; "
                       f"{config.data.name} images are {height}x{width}")
  clusters = config.eval.num_clusters or data.num_classes
  if clusters > len(data.eval_images):
    raise InputError(f"config.eval.num_clusters={clusters} is more than the "
                     f"{len(data.eval_images)} images of the {data.eval_split} split")
  need, have = memory_estimate(config, data, num_runs), available_memory()
  if need > have:
    raise InputError(f"the model needs at least {need / 2**30:.1f} GiB (parameters, "
                     f"gradients and Adam moments of {num_runs} run(s), and the data) but "
                     f"the device has {have / 2**30:.1f} GiB; reduce "
                     "config.model.num_codewords, the layer sizes or the runs trained "
                     "together")
  init = config.model.codebook_init
  if init != "uniform" and config.model.num_codewords > len(data.train_images):
    raise InputError(f"config.model.num_codewords={config.model.num_codewords} is more than "
                     f"the {len(data.train_images)} training images that "
                     f"model.codebook_init={init!r} draws the codebook from")
