"""Every check of a config, alone and against the data, before anything is written."""

import os

import pytest

from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError
from softvq_jax.launch import runs
from softvq_jax.launch import train
from softvq_jax.launch import validation


@pytest.mark.parametrize("overrides,match", [
    ({"seed": -1}, r"config.seed=-1 is not valid"),
    ({"model.mlp_hidden": (256, -3)}, r"config.model.mlp_hidden=\(256, -3\)"),
    ({"model.cnn_channels": ()}, r"config.model.cnn_channels=\(\) is not valid"),
    ({"train.learning_rate": float("inf")}, r"learning_rate=inf is not valid; it must be "
     "finite"),
    ({"eval.probe_learning_rate": 3e38}, r"probe_learning_rate=3e\+38 is not valid; an "
     "Adam learning rate must be <= 10"),  # Issue 37: it reported class 0's share.
    ({"train.learning_rate": 11.0}, r"learning_rate=11.0 is not valid; an Adam"),
    ({"model.noise_std": float("nan")}, r"noise_std=nan is not valid"),
    ({"model.variance": "per_sample"}, r"variance='per_sample' is not valid; choose one of "
     "sample, codeword, fixed"),
    ({"model.log_var_init": 0.0}, r"log_var_init=0.0 is not valid; .* not the head's"),
    ({"seed": 2**32}, r"config.seed=4294967296 is not valid; .* integers < 2\*\*32"),
    ({"seed": 2**64}, r"config.seed=18446744073709551616 is not valid"),
    ({"seed": 2**32 - 2, "train.num_seeds": 3}, r"with train.num_seeds=3\) must be"),
    ({"model.num_codewords": 2**31}, r"num_codewords=2147483648 is not valid; .* < 2\*\*31"),
    ({"eval.figures": True, "eval.tsne_points": 0}, r"tsne_points=0 is not valid; the t-SNE"),
])
def test_invalid_values_are_refused_before_any_write(tiny_config, tmp_path, overrides,
                                                    match):
  runs.apply_overrides(tiny_config, overrides)
  with pytest.raises(InputError, match=match):
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,match", [
    ({"eval.num_clusters": 500}, r"num_clusters=500 is more than the 360 images of the test"),
    ({"model.network": "cnn"}, r"divisible by 16; digits images are 8x8"),
    ({"model.num_codewords": 10_000_000, "model.mlp_hidden": (256, 256, 512)},
     r"the model needs at least \d+\.\d GiB"),
    ({"eval.batch_size": 10**9}, r"the model needs at least \d+\.\d GiB"),
    ({"eval.probe_batch_size": 10**9}, r"the model needs at least \d+\.\d GiB"),
])
def test_values_that_do_not_fit_the_data_are_refused_before_any_write(
    tiny_config, tmp_path, overrides, match):
  runs.apply_overrides(tiny_config, overrides)
  with pytest.raises(InputError, match=match):
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_memory_estimate_counts_parameters_and_adam_moments(tiny_config):
  data = input_pipeline.load(tiny_config.data)
  one = validation.memory_estimate(tiny_config, data, 1)
  three = validation.memory_estimate(tiny_config, data, 3)
  config = tiny_config.eval
  data_bytes = data.train_images.size * 4 + 4 * (
      config.batch_size * 64 + config.probe_batch_size * tiny_config.model.latent_dim)
  # MLP 64-32-32 to z (16), a K-wide log-variance head, K = 32 codewords of 16,
  # and the decoder 16-32-32-64.
  params = (64 * 32 + 32) + (32 * 32 + 32) + (32 * 16 + 16) + (32 * 32 + 32) + 32 * 16 + (
      16 * 32 + 32) + (32 * 32 + 32) + (32 * 64 + 64)
  activations = 4 * tiny_config.train.batch_size * 32 * 4
  assert one - data_bytes == 7 * 4 * params + activations
  assert three - data_bytes == 3 * (one - data_bytes)


def test_unwritable_workdir_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(validation.os, "access", lambda path, mode: path != str(tmp_path))
  with pytest.raises(InputError, match=f"{tmp_path} is not writable"):
    validation.validate_workdir(str(tmp_path / "new" / "run"))


@pytest.mark.parametrize("workdir,match", [
    ("", "--workdir is empty"),
    ("a\0b", "holds a NUL character"),
    ("x" * 256, r"has a component of 256 bytes \(xxxxxxxxxxxxxxxxxxxx...\); this file "
     "system takes at most 255"),
    ("/".join(["d" * 200] * 25), r"--workdir is \d+ bytes long as an absolute path; this "
     "file system takes at most 4095"),
])
def test_a_workdir_that_cannot_be_a_path_is_refused_before_any_folder(tmp_path, monkeypatch,
                                                                      workdir, match):
  """Issue 37, item 10: these ended as a stopped run, one left 20 folders behind."""
  monkeypatch.chdir(tmp_path)
  with pytest.raises(InputError, match=match):
    validation.validate_workdir(workdir)
  assert not os.listdir(tmp_path)
