"""Tests of every data source on tiny generated files and tfds mock data."""

import gzip
import hashlib
import json
import os

import ml_collections
import numpy as np
import pytest
import scipy.io

from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError
from softvq_jax.launch import runs
from softvq_jax.launch import train
from tests import ROOT

SHARED_MNIST = os.path.join(ROOT, "..", "shared", "datasets", "mnist")


def data_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      name="mnist", source="files", dir=None, verify_md5=False, pixel_range="unit",
      validation_size=0, download=False, download_url=""))
  config.update(overrides)
  return config


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(n).to_bytes(4, "big") for n in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def make_mnist(directory, n_train=12, n_test=5):
  rng = np.random.default_rng(0)
  arrays = {
      "train_images": rng.integers(0, 256, (n_train, 28, 28)),
      "train_labels": rng.integers(0, 10, n_train),
      "test_images": rng.integers(0, 256, (n_test, 28, 28)),
      "test_labels": rng.integers(0, 10, n_test),
  }
  for key, (name, _) in input_pipeline.MNIST_FILES.items():
    write_idx(os.path.join(directory, name), arrays[key])
  return arrays


def test_mnist_files(tmp_path):
  arrays = make_mnist(tmp_path)
  data = input_pipeline.load(data_config(dir=str(tmp_path)))
  np.testing.assert_allclose(data.train_images[..., 0], arrays["train_images"] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(data.eval_labels, arrays["test_labels"])
  assert data.train_images.dtype == np.float32 and data.image_shape == (28, 28, 1)
  assert data.eval_split == "test"
  assert data.pixel_variance == pytest.approx(np.var(arrays["train_images"] / 255.0), rel=1e-5)


@pytest.mark.parametrize("damage,message", [
    ("truncate", "truncated"),
    ("garbage", "unreadable"),
    ("delete", "missing"),
    ("labels", "disagree"),
])
def test_mnist_bad_files(tmp_path, damage, message):
  make_mnist(tmp_path)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  if damage == "truncate":
    with gzip.open(path) as f:
      data = f.read()
    with gzip.open(path, "wb") as f:
      f.write(data[:-100])
  elif damage == "garbage":
    path.write_bytes(b"not a gzip file at all")
  elif damage == "delete":
    path.unlink()
  else:
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3))
  with pytest.raises(InputError, match=message):
    input_pipeline.load(data_config(dir=str(tmp_path)))


def test_md5_is_checked(tmp_path):
  make_mnist(tmp_path)
  with pytest.raises(InputError, match="official md5"):
    input_pipeline.load(data_config(dir=str(tmp_path), verify_md5=True))


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason="no shared MNIST")
def test_real_mnist_files():
  data = input_pipeline.load(data_config(dir=SHARED_MNIST, verify_md5=True))
  assert data.train_images.shape == (60000, 28, 28, 1)
  assert data.eval_images.shape == (10000, 28, 28, 1)
  assert np.bincount(data.eval_labels).tolist()[:2] == [980, 1135]


def test_cifar_binary_files(tmp_path):
  rng = np.random.default_rng(1)
  records = {}
  for names in input_pipeline.CIFAR_FILES.values():
    for name in names:
      rec = rng.integers(0, 256, (3, input_pipeline.CIFAR_RECORD)).astype(np.uint8)
      rec[:, 0] %= 10
      rec.tofile(tmp_path / name)
      records[name] = rec
  data = input_pipeline.load(data_config(name="cifar10", dir=str(tmp_path),
                                         pixel_range="centered"))
  assert data.train_images.shape == (15, 32, 32, 3) and data.eval_images.shape == (3, 32, 32, 3)
  first = records["data_batch_1.bin"][0]
  # CIFAR records are channel-major: 1024 red, 1024 green, 1024 blue bytes.
  assert data.train_images[0, 0, 0, 1] == pytest.approx(first[1 + 1024] / 255.0 - 0.5)
  np.testing.assert_array_equal(data.eval_labels, records["test_batch.bin"][:, 0])


def test_cifar_truncated_file(tmp_path):
  for names in input_pipeline.CIFAR_FILES.values():
    for name in names:
      np.zeros((2, input_pipeline.CIFAR_RECORD), np.uint8).tofile(tmp_path / name)
  with open(tmp_path / "test_batch.bin", "ab") as f:
    f.write(b"\x01\x02")
  with pytest.raises(InputError, match="truncated"):
    input_pipeline.load(data_config(name="cifar10", dir=str(tmp_path)))


def _official_size_bins(directory):
  """Random CIFAR-10 *.bin files of the official size; their sha256s."""
  rng, sums = np.random.default_rng(3), {}
  for names in input_pipeline.CIFAR_FILES.values():
    for name in names:
      rec = rng.integers(0, 256, (input_pipeline.CIFAR_PER_FILE, input_pipeline.CIFAR_RECORD),
                         dtype=np.uint8)
      rec[:, 0] %= 10
      rec.tofile(directory / name)
      sums[name] = hashlib.sha256(rec.tobytes()).hexdigest()
  return sums


@pytest.mark.slow
def test_cifar_bins_of_the_official_size_are_checked_against_the_tarballs_sums(tmp_path):
  sums = _official_size_bins(tmp_path)
  config = data_config(name="cifar10", dir=str(tmp_path), verify_md5=True)
  with pytest.raises(InputError, match="cannot be checked: CIFAR-10 publishes sums of "
                     "cifar-10-binary.tar.gz only"):
    input_pipeline.load(config)
  # The record that extraction writes, with one file that is not the official one.
  (tmp_path / input_pipeline.CIFAR_SUMS).write_text(json.dumps(
      {**sums, "data_batch_3.bin": "0" * 64}))
  with pytest.raises(InputError, match="data_batch_3.bin is not the official tarball's"):
    input_pipeline.load(config)
  (tmp_path / input_pipeline.CIFAR_SUMS).write_text(json.dumps(sums))
  assert input_pipeline.load(config).train_images.shape == (50000, 32, 32, 3)
  (tmp_path / input_pipeline.CIFAR_SUMS).unlink()
  (tmp_path / input_pipeline.CIFAR_TARBALL.name).write_bytes(b"not the tarball")
  with pytest.raises(InputError, match="does not have the official sha256"):
    input_pipeline.load(config)


def test_svhn_mat_files(tmp_path):
  rng = np.random.default_rng(2)
  for split, (name, _) in input_pipeline.SVHN_FILES.items():
    n = 6 if split == "train" else 4
    scipy.io.savemat(tmp_path / name, {
        "X": rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8),
        "y": np.array([[10], [1], [2], [3], [4], [5]][:n], np.uint8)})
  data = input_pipeline.load(data_config(name="svhn_cropped", dir=str(tmp_path)))
  assert data.train_images.shape == (6, 32, 32, 3)
  np.testing.assert_array_equal(data.train_labels, [0, 1, 2, 3, 4, 5])


def test_svhn_corrupt_mat(tmp_path):
  for name, _ in input_pipeline.SVHN_FILES.values():
    (tmp_path / name).write_bytes(b"MATLAB? no.")
  with pytest.raises(InputError, match="corrupt"):
    input_pipeline.load(data_config(name="svhn_cropped", dir=str(tmp_path)))


@pytest.mark.parametrize("name,shape", [
    ("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3)), ("svhn_cropped", (32, 32, 3))])
def test_tfds_data_source(name, shape, mock_tfds):
  with mock_tfds(7):
    data = input_pipeline.load(data_config(name=name, source="tfds"))
  assert data.train_images.shape == (7,) + shape and data.eval_images.shape == (7,) + shape
  assert 0.0 <= data.train_images.min() and data.train_images.max() <= 1.0
  assert set(data.train_labels) <= set(range(10))


def test_digits_split_is_deterministic_and_disjoint():
  config = data_config(name="digits", source="sklearn")
  a, b = input_pipeline.load(config), input_pipeline.load(config)
  assert a.train_images.shape == (1437, 8, 8, 1) and a.eval_images.shape == (360, 8, 8, 1)
  np.testing.assert_array_equal(a.eval_images, b.eval_images)
  assert a.train_images.max() == 1.0 and a.train_images.min() == 0.0
  train_rows = {row.tobytes() for row in a.train_images}
  assert sum(row.tobytes() in train_rows for row in a.eval_images) < 5  # Duplicates only.


def test_validation_split_replaces_test_split():
  config = data_config(name="digits", source="sklearn", validation_size=200)
  data = input_pipeline.load(config)
  full = input_pipeline.load(data_config(name="digits", source="sklearn"))
  assert data.eval_split == "validation"
  assert len(data.train_images) == 1237 and len(data.eval_images) == 200
  train_rows = {row.tobytes() for row in full.train_images}
  assert all(row.tobytes() in train_rows for row in data.eval_images)


def _idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      n.to_bytes(4, "big") for n in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist(tmp_path):
  """Tiny files in MNIST's IDX format, under the official names."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 30), ("t10k", 20)):
    _idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    _idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
  return tmp_path


def test_an_empty_training_split_is_refused(fake_mnist, tiny_config, tmp_path):
  _idx(fake_mnist / "train-images-idx3-ubyte.gz", np.zeros((0, 28, 28)))
  _idx(fake_mnist / "train-labels-idx1-ubyte.gz", np.zeros((0,)))
  runs.apply_overrides(tiny_config, {"data.name": "mnist", "data.source": "files",
                                     "data.dir": str(fake_mnist), "data.verify_md5": False})
  with pytest.raises(InputError, match="holds 0 training and 20 test images"):
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"))


@pytest.mark.parametrize("header,match", [
    (bytes([0, 0, 8, 3]) + b"\xff\xff\xff\xff" * 3, r"not an array of at most"),
    # A gzip bomb: a small header, then far more zeros than it declares.
    (bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(50_000_000), r"holds 11\+ bytes"),
])
def test_idx_headers_that_overflow_or_lie_are_refused_without_reading_on(
    tmp_path, header, match):
  path = tmp_path / "train-images-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(header)
  with pytest.raises(InputError, match=match):
    input_pipeline.read_idx(str(path))


def test_label_files_where_image_files_belong_are_refused(fake_mnist):
  os.replace(fake_mnist / "train-labels-idx1-ubyte.gz", fake_mnist / "train-images-idx3-ubyte.gz")
  _idx(fake_mnist / "train-labels-idx1-ubyte.gz", np.zeros(30))
  with pytest.raises(InputError, match=r"train-images-idx3-ubyte.gz holds an array of shape "
                     r"\(30,\), not the \(N, 28, 28\) of mnist train images"):
    input_pipeline._mnist_files(str(fake_mnist), verify=False)


def test_unreadable_data_file_is_refused(fake_mnist, monkeypatch):
  target = str(fake_mnist / "t10k-labels-idx1-ubyte.gz")
  monkeypatch.setattr(input_pipeline.os, "access", lambda path, mode: path != target)
  with pytest.raises(InputError, match=f"data file unreadable: {target}"):
    input_pipeline._mnist_files(str(fake_mnist), verify=False)
