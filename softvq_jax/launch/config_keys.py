"""Every config key, declared once.

A ``Key`` holds a key's default, its one-line meaning, the checks of its
value alone, and ``added``: the value that keeps the behaviour of runs made
before the key existed (their stored ``config.json`` lacks it), so that
their workdirs stay finished runs. ``KEYS`` lists them by section, in the
order of the config; ``base_config`` builds the ConfigDict that config files
start from (``softvq_jax.launch.presets``), ``validation`` runs the checks,
and ``workdir`` reads ``ADDED_KEYS``.

To add a key: add a ``Key`` to its section here, with ``added`` set to the
value that means "as before" (a new feature is off), and use it. Checks that
relate keys to each other are in ``validation``.
"""

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import ml_collections
from ml_collections import config_dict

from softvq_jax import evaluation
from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError
from softvq_jax.launch import steps
from softvq_jax.model import autoencoder
from softvq_jax.quantizers import core
from softvq_jax.quantizers import functional

# Sizes and counts index int32 arrays (XLA's default integer).
SIZE_LIMIT = 2**31
# Adam moves each weight by about the learning rate per step: past 10, any
# model diverges.
MAX_LEARNING_RATE = 10.0
_ORIGINAL = object()  # ``Key.added`` of the keys that every run has.

Check = Callable[[str, Any], None]  # (dotted key, value) -> raises InputError.


def choice(choices: Sequence[str]) -> Check:
  """The value is one of ``choices``."""
  def check(key, value):
    if value not in choices:
      raise InputError(f"config.{key}={value!r} is not valid; choose one of "
                       f"{', '.join(choices)}")
  return check


def _bounded(key: str, value: Any, allow_zero: bool) -> None:
  if (value is None or not (value >= 0 if allow_zero else value > 0)
      or not math.isfinite(value)):
    bound = ">= 0" if allow_zero else "> 0"
    raise InputError(f"config.{key}={value!r} is not valid; it must be finite and {bound}")


def positive(key: str, value: Any) -> None:
  """A finite number > 0."""
  _bounded(key, value, allow_zero=False)


def non_negative(key: str, value: Any) -> None:
  """A finite number >= 0."""
  _bounded(key, value, allow_zero=True)


def learning_rate(key: str, value: Any) -> None:
  """An Adam learning rate: finite, > 0 and at most ``MAX_LEARNING_RATE``."""
  positive(key, value)
  if value > MAX_LEARNING_RATE:
    raise InputError(f"config.{key}={value!r} is not valid; an Adam learning rate must be "
                     f"<= {MAX_LEARNING_RATE:g} (its steps are about that size)")


def integer(key: str, value: Any) -> None:
  """An integer below ``SIZE_LIMIT`` (after ``positive`` or ``non_negative``)."""
  if not isinstance(value, int) or value >= SIZE_LIMIT:
    raise InputError(f"config.{key}={value!r} is not valid; it must be an integer < 2**31")


def sizes(key: str, value: Any) -> None:
  """Layer sizes: a non-empty sequence of integers > 0."""
  values = tuple(value)
  if not values or not all(isinstance(v, int) and v > 0 for v in values):
    raise InputError(f"config.{key}={values!r} is not valid; it must list layer sizes, "
                     "each an integer > 0")


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key (module docstring)."""
  default: Any  # Its value in ``base_config``.
  doc: str  # What it means, in one line.
  checks: Tuple[Check, ...] = ()  # Of its value alone, in order.
  added: Any = _ORIGINAL  # Its value for runs from before it existed.
  type: Optional[type] = None  # Of a None default (a placeholder).


KEYS: Dict[str, Dict[str, Key]] = {
    "": {
        "seed": Key(0, "Seeds init, data order, noise, K-means and the probe.",
                    (non_negative,)),
    },
    "model": {
        "bottleneck": Key("soft_vq", "One of autoencoder.BOTTLENECKS.",
                          (choice(autoencoder.BOTTLENECKS),)),
        "network": Key("mlp", "mlp (MNIST, digits) | cnn (SVHN, CIFAR-10).",
                       (choice(autoencoder.NETWORKS),)),
        "mlp_hidden": Key((500, 500, 2000), "Encoder trunk sizes; decoder mirrors.", (sizes,)),
        "cnn_channels": Key((64, 128, 256, 512), "Conv channels; decoder mirrors.", (sizes,)),
        "latent_dim": Key(64, "d, the size of z_e.", (positive, integer)),
        "num_codewords": Key(128, "K, codebook size (autoencoder.CODEBOOKS; per stage for "
                             "residual_*).",
                             (positive, integer)),
        "num_stages": Key(4, "Quantizer stages of residual_vq and residual_soft_vq.",
                          (positive, integer), added=4),
        "fsq_levels": Key((5, 5, 5), "fsq: levels per dimension, one per quantized dimension.",
                          added=[5, 5, 5]),
        "entropy_weight": Key(0.1, "lfq: weight of MAGVIT-v2's entropy penalty.",
                              (non_negative,), added=0.1),
        "quantizer_dim": Key(None, "fsq/lfq/residual_*: quantize a LayerNorm of z_e projected "
                             "to this size; None: z_e itself.", added=None, type=int),
        "noise_std": Key(0.0, "Std of the white noise on z_e in training (soft VQ).",
                         (non_negative,)),
        "normalizer": Key("paper", "Soft VQ weights: paper (sigma^-d) | notebook (sigma^+1).",
                          (choice(functional.NORMALIZERS),)),
        "variance": Key("sample", "sigma_k^2: sample (soft_vq's head, the paper) | codeword | fixed.",
                        (choice(core.VARIANCES),), added="sample"),
        "log_var_init": Key(None, "codeword/fixed variances' start; None: a fit to the data.",
                            added=None, type=float),
        "beta": Key(1.0, "KL weight (vae) or penalty weight (info_dropout).", (non_negative,)),
        "max_alpha": Key(0.7, "Upper bound of information dropout's noise scale.",
                         (non_negative,)),
        "commitment": Key(0.25, "beta of eq. (27), the commitment weight (codebooks; lfq's too).",
                          (non_negative,)),
        "vq_weight": Key(1.0, "Scale of eq. (27)'s VQ terms (codebooks; lfq's commitment too).",
                         (non_negative,)),
        "codebook_init": Key("uniform", "Codebooks: uniform (TF1 unit scaling) | data | kmeans.",
                             (choice(core.CODEBOOK_INITS),), added="uniform"),
        "ema_decay": Key(None, "Codebooks: EMA decay in (0, 1); None = off.", type=float),
        "dead_code_threshold": Key(0.0, "EMA codebooks: restart codewords under this count; 0 = off.",
                                   (non_negative,), added=0.0),
        "recon": Key("nmse", "Reconstruction term: nmse | bernoulli.",
                     (choice(autoencoder.RECONSTRUCTIONS),)),
        "output_activation": Key("sigmoid", "Decoder output: sigmoid | identity.",
                                 (choice(autoencoder.OUTPUT_ACTIVATIONS),)),
    },
    "data": {
        "name": Key("mnist", "mnist | svhn_cropped | cifar10 | digits.",
                    (choice(input_pipeline.DATASETS),)),
        "source": Key("tfds", "tfds | files | sklearn.", (choice(input_pipeline.SOURCES),)),
        "dir": Key(None, "tfds data_dir, or the folder of files.", type=str),
        "verify_md5": Key(True, "files: check the known md5 sums of the official files.",
                          added=True),
        "download": Key(False, "files: fetch missing official files into data.dir (no TensorFlow).",
                        added=False),
        "download_url": Key("", "files: base URL of a mirror for data.download; '' = official.",
                            added=""),
        "pixel_range": Key("unit", "unit ([0, 1]) | centered ([-0.5, 0.5]).",
                           (choice(input_pipeline.PIXEL_RANGES),)),
        "validation_size": Key(0, ">0: hold out this many train images, evaluate on them.",
                               (non_negative, integer)),
    },
    "train": {
        "num_steps": Key(40000, "Optimizer updates.", (positive, integer)),
        "batch_size": Key(32, "Global batch, split across devices.", (positive, integer)),
        "learning_rate": Key(3e-4, "Adam learning rate.", (learning_rate,)),
        "lr_schedule": Key("constant", "constant | cosine (decay to 0 over num_steps).",
                           (choice(steps.LR_SCHEDULES),)),
        "compute_dtype": Key("float32", "float32 | bfloat16 (trunk activations; params stay f32).",
                             (choice(autoencoder.COMPUTE_DTYPES),), added="float32"),
        "log_every": Key(500, "Steps between metrics lines (and per dispatch).",
                         (positive, integer)),
        "checkpoint_every": Key(5000, "Steps between orbax checkpoints.", (positive, integer)),
        "max_checkpoints": Key(2, "Checkpoints kept on disk.", (positive, integer)),
        "num_seeds": Key(1, ">1: seeds seed..seed+num_seeds-1 in one vmapped program.",
                         (positive, integer), added=1),
        "vmap_key": Key("", "A key of autoencoder.VMAPPABLE_KEYS: one run per value of "
                         "vmap_values.",
                        added=""),
        "vmap_values": Key((), "The values of vmap_key, vmapped with the seeds in one program.",
                           added=[]),
        "runs_together": Key("vmap", "Runs in one program: vmap (batched) | loop (one after "
                             "another; on one CPU thread, faster per run).",
                             (choice(steps.RUNS_TOGETHER),), added="vmap"),
    },
    "eval": {
        "kmeans_inits": Key(100, "K-means initialisations; the best inertia is kept.",
                            (positive, integer)),
        # Earlier runs, all on CPU, used sklearn: auto's choice there.
        "kmeans_backend": Key("auto", "K-means: jax (on device) | sklearn (host) | auto "
                              "(jax off CPU).", (choice(evaluation.KMEANS_BACKENDS),),
                              added="auto"),
        "num_clusters": Key(0, "K-means clusters; 0 = the number of classes.",
                            (non_negative, integer)),
        "probe_steps": Key(30000, "Adam steps of the linear probe.", (positive, integer)),
        "probe_batch_size": Key(128, "Linear-probe batch size.", (positive, integer)),
        "probe_learning_rate": Key(0.01, "Linear-probe Adam learning rate.",
                                   (learning_rate,)),
        "batch_size": Key(1000, "Batch size when encoding the splits.", (positive, integer)),
        "figures": Key(True, "Write t-SNE, reconstruction, usage and curve PNGs."),
        "tsne_points": Key(2000, "Test latents shown in the t-SNE figure.",
                           (non_negative, integer)),
    },
}


def _dotted(section: str, name: str) -> str:
  return f"{section}.{name}" if section else name


# The keys added after runs were published, with their ``Key.added`` values.
ADDED_KEYS = {_dotted(section, name): key.added for section, keys in KEYS.items()
              for name, key in keys.items() if key.added is not _ORIGINAL}


def base_config() -> ml_collections.ConfigDict:
  """Every key at its default."""
  values = {}
  for section, keys in KEYS.items():
    fields = {name: config_dict.placeholder(key.type) if key.default is None else key.default
              for name, key in keys.items()}
    values.update(fields if not section else {section: ml_collections.ConfigDict(fields)})
  return ml_collections.ConfigDict(values)


def check_values(config: ml_collections.ConfigDict) -> None:
  """Runs every key's own checks; the first failure raises ``InputError``."""
  for section, keys in KEYS.items():
    for name, key in keys.items():
      dotted = _dotted(section, name)
      for check in key.checks:
        check(dotted, config[dotted])
