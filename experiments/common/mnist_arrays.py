"""MNIST from the official idx files as numpy arrays, with numpy and gzip
alone, so that the JAX and PyTorch halves of a benchmark read the same
bytes (``softvq_jax.data.input_pipeline`` is the checked loader of the launcher)."""

import gzip
import os

import numpy as np


def _read(path: str) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(directory: str):
  """``(train_images, test_images)``: float32 in [0, 1], shape (N, 28, 28, 1)."""
  images = [_read(os.path.join(directory, f"{split}-images-idx3-ubyte.gz"))
            for split in ("train", "t10k")]
  return tuple((x.astype(np.float32) / 255.0)[..., None] for x in images)


def batch_indices(seed: int, steps: int, batch_size: int, num_train: int) -> np.ndarray:
  """The training batches of a seed, ``(steps, batch_size)``: the same in both halves."""
  return np.random.default_rng(seed).integers(0, num_train, (steps, batch_size))


def load_labels(directory: str):
  """``(train_labels, test_labels)``: int64, shape (N,)."""
  return tuple(_read(os.path.join(directory, f"{split}-labels-idx1-ubyte.gz")).astype(np.int64)
               for split in ("train", "t10k"))
