"""Configs, presets, overrides, validation and the launcher's error path."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import cifar10
from configs import digits
from configs import mnist
from configs import svhn
from softvq_jax.errors import InputError
from softvq_jax.launch import config_keys
from softvq_jax.launch import presets
from softvq_jax.launch import validation
from tests import ROOT

REQUIRED_KEYS = (
    "model.bottleneck", "model.latent_dim", "model.num_codewords", "model.noise_std",
    "model.beta", "model.commitment", "data.name", "data.source", "data.dir",
    "train.num_steps", "train.batch_size", "train.learning_rate",
    "train.checkpoint_every", "eval.kmeans_inits", "seed")


@pytest.mark.parametrize("module", [mnist, svhn, cifar10, digits])
def test_configs_have_required_keys_and_validate(module):
  config = module.get_config()
  for key in REQUIRED_KEYS:
    assert key.split(".")[-1] in (config[key.rsplit(".", 1)[0]] if "." in key else config)
  validation.validate_config(config, num_devices=1)


@pytest.mark.parametrize("module,preset,expected", [
    (mnist, "ae", {"model.bottleneck": "none", "train.num_steps": 40000}),
    (mnist, "beta_vae", {"model.bottleneck": "vae", "model.beta": 20.0}),
    (mnist, "vq_vae", {"model.bottleneck": "vq", "model.num_codewords": 128}),
    (mnist, "soft_vq_vae", {"model.bottleneck": "soft_vq", "model.num_codewords": 128,
                            "train.num_steps": 40000, "model.normalizer": "notebook"}),
    (mnist, "soft_vq_vae_eq5", {"model.bottleneck": "soft_vq", "model.normalizer": "paper"}),
    (mnist, "soft_vq_vae_eq5,soft_vq_vae", {"model.normalizer": "notebook"}),
    (svhn, "soft_vq_vae", {"model.normalizer": "paper", "train.num_steps": 10000}),
    (svhn, "beta_vae", {"model.bottleneck": "vae", "model.beta": 100.0}),
    (cifar10, "vq_vae", {"model.bottleneck": "vq", "model.num_codewords": 512,
                         "train.num_steps": 40000}),
    (cifar10, "soft_vq_vae", {"model.num_codewords": 32, "train.num_steps": 10000}),
    (svhn, "info_dropout", {"model.bottleneck": "info_dropout", "model.beta": 0.5 / 256}),
    (mnist, "vae,quick", {"model.bottleneck": "vae", "train.num_steps": 20}),
    (mnist, "quick,soft_vq_vae", {"model.bottleneck": "soft_vq", "train.num_steps": 20}),
    (mnist, "fsq", {"model.bottleneck": "fsq", "model.latent_dim": 64,
                    "model.quantizer_dim": 3, "model.fsq_levels": (5, 5, 5),
                    "train.num_steps": 40000}),
    (mnist, "lfq", {"model.bottleneck": "lfq", "model.quantizer_dim": 7,
                    "model.entropy_weight": 0.1 * 784, "model.commitment": 0.25}),
    (mnist, "residual_vq", {"model.bottleneck": "residual_vq", "model.num_stages": 4,
                            "model.num_codewords": 128}),
    (cifar10, "residual_soft_vq", {"model.bottleneck": "residual_soft_vq",
                                   "model.num_codewords": 32, "model.variance": "codeword",
                                   "train.num_steps": 40000}),
])
def test_presets(module, preset, expected):
  config = module.get_config(preset)
  assert {key: config[key] for key in expected} == expected


def test_paper_protocols():
  config = mnist.get_config()
  assert (config.model.latent_dim, config.model.num_codewords, config.train.batch_size,
          config.train.num_steps, config.train.learning_rate) == (64, 128, 32, 40000, 3e-4)
  config = cifar10.get_config()
  assert (config.model.network, config.model.latent_dim, config.model.num_codewords,
          config.train.num_steps) == ("cnn", 256, 32, 10000)


def test_every_key_is_declared_once_with_its_meaning():
  declared = {(section, name) for section, keys in config_keys.KEYS.items() for name in keys}
  config = presets.get_base_config()
  found = {("", k) for k, v in config.items() if not isinstance(v, ml_collections.ConfigDict)}
  found |= {(k, name) for k, v in config.items() if isinstance(v, ml_collections.ConfigDict)
            for name in v}
  assert found == declared
  for keys in config_keys.KEYS.values():
    for key in keys.values():
      assert key.doc and "\n" not in key.doc
  for dotted, value in config_keys.ADDED_KEYS.items():  # "As before" is a valid value.
    config = presets.get_base_config()
    section, name = dotted.split(".")
    config[section][name] = tuple(value) if isinstance(value, list) else value
    validation.validate_config(config, num_devices=1)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown preset 'nope'"):
    mnist.get_config("nope")


@pytest.mark.slow
def test_command_line_overrides_reach_config_json(tmp_path):
  result = run_main("--config=configs/digits.py:vq_vae,quick", "--config.model.num_codewords=8",
                    "--config.model.mlp_hidden=(16,)", "--config.eval.figures=False",
                    f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-2000:]
  config = json.loads((tmp_path / "config.json").read_text())
  assert (config["model"]["bottleneck"], config["model"]["num_codewords"],
          config["model"]["mlp_hidden"], config["train"]["num_steps"]) == ("vq", 8, [16], 20)
  assert (tmp_path / "eval.json").exists()


@pytest.mark.slow
def test_locked_config_rejects_unknown_keys(tmp_path):
  result = run_main("--config=configs/digits.py", "--config.model.codewords=8",
                    f"--workdir={tmp_path}")
  assert result.returncode != 0 and "codewords" in result.stderr
  assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("key,value,message", [
    ("model.num_codewords", 0, "config.model.num_codewords=0 .* > 0"),
    ("model.latent_dim", -3, "config.model.latent_dim=-3 .* > 0"),
    ("train.batch_size", 0, "config.train.batch_size=0 .* > 0"),
    ("train.batch_size", 30, "multiple of the device count 4"),
    ("model.noise_std", -0.1, "config.model.noise_std=-0.1 .* >= 0"),
    ("model.bottleneck", "gumbel", "choose one of none, vae, info_dropout, vq, soft_vq"),
    ("data.name", "imagenet", "choose one of mnist, svhn_cropped, cifar10, digits"),
    ("data.source", "http", "choose one of tfds, files, sklearn"),
    ("data.dir", "/no/such/dir", "config.data.dir='/no/such/dir' is not a directory"),
    ("model.ema_decay", 1.5, "in \\(0, 1\\)"),
    ("model.codebook_init", "nope", "choose one of uniform, data, kmeans"),
    ("model.dead_code_threshold", -1.0, "config.model.dead_code_threshold=-1.0 .* >= 0"),
    ("model.num_stages", 0, "config.model.num_stages=0 .* > 0"),
    ("model.entropy_weight", -1.0, "config.model.entropy_weight=-1.0 .* >= 0"),
])
def test_validation_errors(key, value, message):
  config = digits.get_config()
  section, field = key.split(".")
  config[section][field] = value
  with pytest.raises(InputError, match=message):
    validation.validate_config(config, num_devices=4 if value == 30 else 1)


@pytest.mark.parametrize("preset,overrides,message", [
    ("fsq", {"fsq_levels": (5, 5)}, "fsq_levels=\\(5, 5\\) .*quantizer_dim=3"),
    ("fsq", {"quantizer_dim": None}, "one per quantized dimension .*latent_dim=16"),
    ("fsq", {"fsq_levels": (5, 1, 5)}, "integers >= 2"),
    ("fsq", {"quantizer_dim": 0}, "quantizer_dim=0 is not valid"),
    ("lfq", {"quantizer_dim": 25}, "quantizer_dim=25 .* at most 24"),
    ("lfq", {"quantizer_dim": None, "latent_dim": 25}, "latent_dim=25 .* at most 24"),
    ("residual_soft_vq", {"variance": "sample"}, "residual_soft_vq' takes codeword or fixed"),
])
def test_quantizer_bottleneck_errors(preset, overrides, message):
  config = digits.get_config(preset)
  config.model.update(overrides)
  with pytest.raises(InputError, match=message):
    validation.validate_config(config, num_devices=1)


@pytest.mark.parametrize("bottleneck,init", [("vae", "data"), ("none", "kmeans")])
def test_data_codebook_init_needs_a_codebook(bottleneck, init):
  config = digits.get_config()
  config.model.bottleneck, config.model.codebook_init = bottleneck, init
  with pytest.raises(InputError, match=f"codebook_init='{init}' needs a codebook"):
    validation.validate_config(config, num_devices=1)


@pytest.mark.parametrize("bottleneck,ema", [("soft_vq", None), ("vae", 0.99)])
def test_dead_code_restart_needs_an_ema_codebook(bottleneck, ema):
  config = digits.get_config()
  config.model.bottleneck, config.model.ema_decay = bottleneck, ema
  config.model.dead_code_threshold = 0.5
  with pytest.raises(InputError, match="dead_code_threshold > 0 restarts codewords of an EMA"):
    validation.validate_config(config, num_devices=1)


def test_files_source_needs_dir():
  config = mnist.get_config()
  config.data.source = "files"
  with pytest.raises(InputError, match="config.data.dir is missing"):
    validation.validate_config(config, num_devices=1)


def run_main(*args, env=None):
  return subprocess.run([sys.executable, "-m", "softvq_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("overrides,expected", [
    (["--config.model.num_codewords=0"], "error: config.model.num_codewords=0"),
    (["--config.data.source=files"], "error: config.data.source='files' cannot load"),
    (["--config.data.name=mnist", "--config.data.source=files", "--config.data.dir={tmp}"],
     "error: data file missing: {tmp}/train-images-idx3-ubyte.gz"),
])
def test_main_bad_input_exits_2_with_one_line(tmp_path, overrides, expected):
  workdir = tmp_path / "run"
  overrides = [o.format(tmp=tmp_path) for o in overrides]
  expected = expected.format(tmp=tmp_path)
  result = run_main("--config=configs/digits.py", *overrides, f"--workdir={workdir}")
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and lines[0].startswith(expected)
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_one_and_four_devices_agree(tmp_path):
  """The global batch split over 4 devices, with 2 vmapped seeds, trains the same model."""
  results = {}
  for devices, seeds in ((1, 1), (4, 2)):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    workdir = tmp_path / str(devices)
    result = run_main("--config=configs/digits.py:quick", "--config.eval.figures=False",
                      "--config.model.mlp_hidden=(64, 64)", f"--config.train.num_seeds={seeds}",
                      f"--workdir={workdir}", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = workdir if seeds == 1 else workdir / "seed_0"
    with open(run_dir / "metrics.jsonl") as f:
      results[devices] = [json.loads(line) for line in f]
    assert json.loads((run_dir / "timing.json").read_text())["devices"] == devices
  assert len(results[1]) == len(results[4]) == 2
  for a, b in zip(results[1], results[4]):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
