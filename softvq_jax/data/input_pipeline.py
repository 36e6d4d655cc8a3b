"""Datasets as in-memory arrays: tfds data sources, official files, sklearn.

The paper's datasets are small (at most 73257 images of 32x32x3), so they are
loaded whole, scaled to float32 and kept on the accelerator; batches are
gathered on device inside the jitted train step (``steps.train_steps``), so the
input pipeline is never the bottleneck.

Sources (``config.data.source``):
  tfds     tfds's array_record data source: mnist, svhn_cropped, cifar10;
           ``data.dir`` is the tfds data_dir. Reading prepared data needs no
           TensorFlow; preparing it (the first use, with internet) does:
           ``pip install -e '.[tfds]'``. Without it an unprepared dataset
           stops with one line that says so. Always array_record, with or
           without ``data.dir``; a split is read in one bulk request.
  files    the official distribution files in ``data.dir``: MNIST idx .gz,
           the CIFAR-10 binary version (``*_batch*.bin``), SVHN
           ``{train,test}_32x32.mat`` via scipy. No TensorFlow, nothing
           unpickled. With ``data.download`` the missing files are fetched
           from the official servers (or ``data.download_url``) and checked
           against their sizes and sha256 (``softvq_jax.data.download``). MNIST
           and SVHN files are md5-checked against the official sums
           (``data.verify_md5``), CIFAR-10's ``*.bin`` against the official
           tarball, which alone has published sums (``_cifar_sums``); every
           file is checked for its header, shape and label range.
  sklearn  scikit-learn's 8x8 digits (1797 images shipped with the package),
           split 1437 / 360 by a fixed permutation.
"""

import dataclasses
import gzip
import hashlib
import importlib.util
import json
import math
import os
import tarfile
from typing import Dict, Iterator, Sequence, Tuple
import zlib

from absl import logging
import ml_collections
import numpy as np
import scipy.io
import sklearn.datasets
import tensorflow_datasets as tfds

from softvq_jax.data import download
from softvq_jax.errors import InputError
from softvq_jax.errors import one_line

DATASETS = ("mnist", "svhn_cropped", "cifar10", "digits")
SOURCES = ("tfds", "files", "sklearn")
PIXEL_RANGES = ("unit", "centered")
NUM_CLASSES = 10
DIGITS_TEST_SIZE = 360
SPLIT_SEED = 0  # Fixed: the digits split and validation hold-out never move.

MNIST_FILES = {  # Official file name -> md5.
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
SVHN_FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
}
CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
# The official files of data.download: base URL and (name, bytes, sha256), as
# tfds's url_checksums record them. MNIST from the Google mirror that tfds
# uses (the same files as yann.lecun.com, md5s above); CIFAR-10's binary
# version, whose *.bin members are extracted into data.dir.
DOWNLOADS = {
    "mnist": ("https://storage.googleapis.com/cvdf-datasets/mnist/", (
        download.RemoteFile("train-images-idx3-ubyte.gz", 9912422,
                            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        download.RemoteFile("train-labels-idx1-ubyte.gz", 28881,
                            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        download.RemoteFile("t10k-images-idx3-ubyte.gz", 1648877,
                            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        download.RemoteFile("t10k-labels-idx1-ubyte.gz", 4542,
                            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    )),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/", (
        download.RemoteFile("cifar-10-binary.tar.gz", 170052171,
                            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
    )),
    "svhn_cropped": ("http://ufldl.stanford.edu/housenumbers/", (
        download.RemoteFile("train_32x32.mat", 182040794,
                            "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8"),
        download.RemoteFile("test_32x32.mat", 64275384,
                            "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b"),
    )),
}
MAX_IDX_BYTES = 2**31  # MNIST's largest file holds 47 MB.
CIFAR_TARBALL = DOWNLOADS["cifar10"][1][0]
# sha256 of each *.bin member of the official tarball, written where
# ``_extract_cifar`` extracts them: the check of the *.bin files.
CIFAR_SUMS = "cifar-10-binary.sha256.json"
CIFAR_RECORD = 1 + 32 * 32 * 3
CIFAR_PER_FILE = 10000

Raw = Tuple[np.ndarray, np.ndarray]  # uint8 images (N, H, W, C), labels (N,).


@dataclasses.dataclass(frozen=True)
class Splits:
  """Scaled float32 images ``(N, H, W, C)`` and int32 labels ``(N,)``.

  ``eval_*`` is the test split, or the validation hold-out carved from the
  training set when ``data.validation_size > 0`` (then ``eval_split`` says so
  and the test split is not loaded into the run at all).
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  eval_images: np.ndarray
  eval_labels: np.ndarray
  eval_split: str
  pixel_variance: float  # Of the training pixels: the nmse normaliser.
  num_classes: int = NUM_CLASSES

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


def fingerprint(images: np.ndarray) -> str:
  """The identity of a training split, as its checkpoints record it: dtype,
  shape and the sha256 of the values (about 0.1 s for MNIST's)."""
  digest = hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()
  return f"{images.dtype}{list(images.shape)} sha256:{digest[:16]}"


def _existing(directory: str, name: str, md5: str | None, verify: bool) -> str:
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    raise InputError(f"data file missing: {path}")
  if not os.access(path, os.R_OK):
    raise InputError(f"data file unreadable: {path} (permission denied)")
  if verify and md5 is not None and download.digest_of(path, "md5") != md5:
    raise InputError(f"data file corrupt: {path} does not have the official md5 {md5}"
                     " (set data.verify_md5=False for non-official files)")
  return path


def read_idx(path: str) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes (MNIST's format).

  The header is read first and no more bytes than it declares (plus one, to
  find extra data) are ever decompressed: a gzip bomb or an overflowing
  header costs no memory.
  """
  try:
    with gzip.open(path, "rb") as f:
      magic = f.read(4)
      if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] != 0x08:
        raise InputError(f"data file corrupt: {path} is not an unsigned-byte IDX file")
      dims = f.read(4 * magic[3])
      shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big")
                    for i in range(len(dims) // 4))
      size = math.prod(shape)
      if len(dims) < 4 * magic[3] or size > MAX_IDX_BYTES:
        raise InputError(f"data file corrupt: {path} has the IDX header {shape}, "
                         f"which is not an array of at most {MAX_IDX_BYTES} bytes")
      data = f.read(size)
      extra = f.read(1)
  except (OSError, EOFError, zlib.error) as e:
    raise InputError(f"data file unreadable: {path} ({e})") from None
  if len(data) != size or extra:
    raise InputError(f"data file truncated or corrupt: {path} holds "
                     f"{len(data) + len(extra)}{'+' if extra else ''} bytes, its header "
                     f"says {shape}")
  return np.frombuffer(data, np.uint8).reshape(shape)


def _check_pair(images: np.ndarray, labels: np.ndarray, what: str) -> Raw:
  if images.shape[0] != labels.shape[0]:
    raise InputError(f"data files disagree: {what} has {images.shape[0]} images "
                     f"and {labels.shape[0]} labels")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise InputError(f"data file corrupt: {what} labels outside 0..{NUM_CLASSES - 1}")
  return images, labels.astype(np.int32)


def _mnist_files(directory: str, verify: bool) -> Dict[str, Raw]:
  arrays = {key: read_idx(_existing(directory, name, md5, verify))
            for key, (name, md5) in MNIST_FILES.items()}
  for key, array in arrays.items():
    expected = "(N, 28, 28)" if key.endswith("images") else "(N,)"
    if array.shape[1:] != ((28, 28) if key.endswith("images") else ()):
      raise InputError(f"data file corrupt: {os.path.join(directory, MNIST_FILES[key][0])} "
                       f"holds an array of shape {array.shape}, not the {expected} of "
                       f"mnist {key.replace('_', ' ')}")
  return {split: _check_pair(arrays[f"{split}_images"][..., None],
                             arrays[f"{split}_labels"], f"mnist {split}")
          for split in ("train", "test")}


def _bin_members(tarball: str) -> Iterator[Tuple[str, bytes]]:
  """The name and bytes of each *.bin member of the CIFAR-10 binary tarball
  (by base name: no other member, and no path, is ever used)."""
  wanted = {name for names in CIFAR_FILES.values() for name in names}
  with tarfile.open(tarball, "r:gz") as archive:
    for member in archive.getmembers():
      name = os.path.basename(member.name)
      if member.isfile() and name in wanted:
        with archive.extractfile(member) as source:
          yield name, source.read()


def _cifar_sums(directories: Sequence[str]) -> Dict[str, str]:
  """The official sha256 of each *.bin file: ``CIFAR_SUMS`` (written when
  the files were extracted from the checked tarball), or the official
  tarball itself, in one of ``directories``.

  Raises:
    InputError: neither is there, or the tarball is not the official one.
  """
  for directory in directories:
    record = os.path.join(directory, CIFAR_SUMS)
    if os.path.isfile(record):
      with open(record) as f:
        return json.load(f)
    tarball = os.path.join(directory, CIFAR_TARBALL.name)
    if os.path.isfile(tarball):
      if download.digest_of(tarball) != CIFAR_TARBALL.sha256:
        raise InputError(f"data file corrupt: {tarball} does not have the official "
                         f"sha256 {CIFAR_TARBALL.sha256}")
      return {name: hashlib.sha256(payload).hexdigest()
              for name, payload in _bin_members(tarball)}
  raise InputError(f"the CIFAR-10 *.bin files in {directories[-1]} cannot be checked: "
                   f"CIFAR-10 publishes sums of {CIFAR_TARBALL.name} only. Put that file "
                   "beside them, fetch them with config.data.download=True, or set "
                   "config.data.verify_md5=False")


def _cifar_files(directory: str, verify: bool) -> Dict[str, Raw]:
  nested = os.path.join(directory, "cifar-10-batches-bin")
  searched = [directory, nested] if os.path.isdir(nested) else [directory]
  directory = searched[-1]
  sums = _cifar_sums(searched) if verify else {}
  out = {}
  for split, names in CIFAR_FILES.items():
    records = []
    for name in names:
      path = _existing(directory, name, None, verify)
      if verify and download.digest_of(path) != sums.get(name):
        raise InputError(f"data file corrupt: {path} is not the official tarball's {name} "
                         "(set data.verify_md5=False for non-official files)")
      size = os.path.getsize(path)
      expected = CIFAR_PER_FILE * CIFAR_RECORD
      if size % CIFAR_RECORD or (verify and size != expected):
        raise InputError(f"data file truncated or corrupt: {path} has {size} bytes, "
                         f"expected {expected}")
      records.append(np.fromfile(path, np.uint8).reshape(-1, CIFAR_RECORD))
    rec = np.concatenate(records)
    images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    out[split] = _check_pair(images, rec[:, 0], f"cifar10 {split}")
  return out


def _svhn_files(directory: str, verify: bool) -> Dict[str, Raw]:
  out = {}
  for split, (name, md5) in SVHN_FILES.items():
    path = _existing(directory, name, md5, verify)
    try:
      mat = scipy.io.loadmat(path, variable_names=("X", "y"))
      images = np.asarray(mat["X"], np.uint8).transpose(3, 0, 1, 2)
      labels = np.asarray(mat["y"]).reshape(-1) % 10  # SVHN labels digit 0 as 10.
    except (scipy.io.matlab.MatReadError, ValueError, KeyError, TypeError, OSError) as e:
      raise InputError(f"data file corrupt: {path} ({e})") from None
    if images.shape[1:] != (32, 32, 3):
      raise InputError(f"data file corrupt: {path} images have shape {images.shape[1:]}")
    out[split] = _check_pair(images, labels, f"svhn {split}")
  return out


def _extract_cifar(tarball: str, directory: str) -> None:
  """The CIFAR-10 binary tarball's ``*.bin`` files into ``directory``, each
  through a temporary name (no other member is written), and their sha256
  in ``CIFAR_SUMS``."""
  sums = {}
  for name, payload in _bin_members(tarball):
    target = os.path.join(directory, name)
    with open(target + ".tmp", "wb") as f:
      f.write(payload)
    sums[name] = hashlib.sha256(payload).hexdigest()
    os.replace(target + ".tmp", target)
  with open(os.path.join(directory, CIFAR_SUMS + ".tmp"), "w") as f:
    json.dump(sums, f, indent=1, sort_keys=True)
  os.replace(os.path.join(directory, CIFAR_SUMS + ".tmp"),
             os.path.join(directory, CIFAR_SUMS))


def download_missing(data_config: ml_collections.ConfigDict) -> None:
  """Fetches the official files of ``data.name`` that ``data.dir`` lacks."""
  directory = data_config.dir
  base_url, remotes = DOWNLOADS[data_config.name]
  base_url = data_config.download_url or base_url
  os.makedirs(directory, exist_ok=True)
  for remote in remotes:
    if data_config.name == "cifar10":
      if all(os.path.exists(os.path.join(directory, n)) for names in CIFAR_FILES.values()
             for n in names):
        continue
      _extract_cifar(download.fetch(base_url, remote, directory), directory)
    elif not os.path.exists(os.path.join(directory, remote.name)):
      download.fetch(base_url, remote, directory)


def tensorflow_available() -> bool:
  """Whether TensorFlow, which tfds needs to prepare a dataset, is installed."""
  return importlib.util.find_spec("tensorflow") is not None


def _tfds_builder(name: str, data_dir: str | None):
  """The dataset's tfds builder, array_record, prepared (needs TensorFlow)."""
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    if not tensorflow_available():
      raise InputError(
          f"tfds has not prepared {name} in {builder.data_dir}, and preparing it needs "
          "TensorFlow: pip install -e '.[tfds]', or use config.data.source=files with "
          "config.data.download=True, which needs no TensorFlow")
    builder.download_and_prepare()
  return builder


def _tfds(name: str, data_dir: str | None) -> Dict[str, Raw]:
  """Both splits of a tfds dataset; every tfds failure is an ``InputError``."""
  try:
    builder = _tfds_builder(name, data_dir)
    out = {}
    for split in ("train", "test"):
      source = builder.as_data_source(split=split)
      examples = source.__getitems__(range(len(source)))  # One bulk read.
      images = np.stack([e["image"] for e in examples]).astype(np.uint8)
      labels = np.asarray([e["label"] for e in examples])
      out[split] = (images, labels)
  except InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    logging.debug("tfds failed", exc_info=True)
    message = one_line(e)
    if "file format is already set" in message.lower():
      message += ("; this folder holds TFRecord data from an earlier tfds.load, and this "
                  "library reads array_record: set config.data.dir to another folder")
    raise InputError(f"tfds could not load {name} (data_dir "
                     f"{data_dir or 'default'}): {type(e).__name__}: {message}") from None
  return {split: _check_pair(*raw, f"{name} {split}") for split, raw in out.items()}


def _digits() -> Tuple[Dict[str, Raw], float]:
  digits = sklearn.datasets.load_digits()
  images = digits.images.astype(np.float32)[..., None]
  order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
  test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
  labels = digits.target.astype(np.int32)
  return {"train": (images[train], labels[train]),
          "test": (images[test], labels[test])}, 16.0


def load_raw(data_config: ml_collections.ConfigDict) -> Tuple[Dict[str, Raw], float]:
  """``({'train': (images, labels), 'test': ...}, max_pixel_value)``."""
  c = data_config
  if c.source == "sklearn":
    return _digits()
  if c.source == "tfds":
    return _tfds(c.name, c.dir), 255.0
  if c.download:
    download_missing(c)
  loaders = {"mnist": _mnist_files, "cifar10": _cifar_files,
             "svhn_cropped": _svhn_files}
  return loaders[c.name](c.dir, c.verify_md5), 255.0


def scale(images: np.ndarray, max_value: float, pixel_range: str) -> np.ndarray:
  """Pixels to float32 in [0, 1] (``unit``) or [-0.5, 0.5] (``centered``)."""
  x = images.astype(np.float32) / np.float32(max_value)
  return x - np.float32(0.5) if pixel_range == "centered" else x


def load(data_config: ml_collections.ConfigDict) -> Splits:
  """Loads, scales and splits the dataset of ``data_config``."""
  raw, max_value = load_raw(data_config)
  train_x, train_y = raw["train"]
  eval_x, eval_y = raw["test"]
  eval_split = "test"
  if data_config.validation_size > 0:
    if data_config.validation_size >= len(train_x):
      raise InputError(f"config.data.validation_size={data_config.validation_size} must be "
                       f"smaller than the {len(train_x)} training images")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(train_x))
    held, kept = order[:data_config.validation_size], order[data_config.validation_size:]
    train_x, train_y, eval_x, eval_y = train_x[kept], train_y[kept], train_x[held], train_y[held]
    eval_split = "validation"
  train_x = scale(train_x, max_value, data_config.pixel_range)
  return Splits(train_x, train_y, scale(eval_x, max_value, data_config.pixel_range),
                eval_y, eval_split, pixel_variance=float(np.var(train_x)))
