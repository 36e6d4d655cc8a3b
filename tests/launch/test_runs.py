"""Typed sweep points, their directories, families, and the engine's layering."""

import ast
import json
import os

import pytest

from configs import cifar10
from configs import digits
from configs import mnist
from softvq_jax.errors import InputError
from softvq_jax.launch import config_keys
from softvq_jax.launch import outputs
from softvq_jax.launch import presets
from softvq_jax.launch import runs
from softvq_jax.launch import sweep
from softvq_jax.launch import train
from softvq_jax.launch import validation
from softvq_jax.launch import workdir
from softvq_jax.model import autoencoder
from tests import ROOT
from tests.launch import helpers


# Directories as the name strings of the earlier code wrote them, literally.
@pytest.mark.parametrize("point,directory", [
    (runs.point("ae", 2), "ae/seed_2"),
    (runs.point("ae", 0, dataset="svhn_cropped"), "svhn_cropped/ae/seed_0"),
    (runs.point("soft_vq_vae", 1, swept={"model.noise_std": 0.05}),
     "soft_vq_vae/noise_std_0.05/seed_1"),
    (runs.point("soft_vq_vae", 0, swept={"model.noise_std": 0.0}),
     "soft_vq_vae/noise_std_0.0/seed_0"),
    (runs.point("soft_vq_vae", 0, swept={"model.num_codewords": 16}),
     "soft_vq_vae/num_codewords_16/seed_0"),
    (runs.point("soft_vq_vae", 0, swept={"model.normalizer": "notebook"}),
     "soft_vq_vae/normalizer_notebook/seed_0"),
    (runs.point("vae", 0, swept={"model.max_alpha": 0.5, "model.beta": 2.0}),
     "vae/beta_2.0/max_alpha_0.5/seed_0"),
    (runs.point("soft_vq_vae", 0, variant="authors_code", overrides={"train.batch_size": 64}),
     "soft_vq_vae/authors_code/seed_0"),
    (runs.point("", 3, swept={"model.beta": 20.0}), "beta_20.0/seed_3"),
    (runs.point("", 1), "seed_1"),
    (runs.point("beta_vae", 0, swept={"model.beta": 5.0},
                overrides={"data.validation_size": 100}), "beta_vae/validation/beta_5.0/seed_0"),
    (runs.point("soft_vq_vae", 0, variant="moonshot", overrides={"data.validation_size": 100}),
     "soft_vq_vae/validation/moonshot/seed_0"),
])
def test_point_directories(point, directory):
  assert runs.point_dir(point) == directory


def test_config_overrides_apply_preset_dataset_swept_then_seed():
  point = presets.paper_point("vq_vae", 2, cifar10.images32.PAPER, dataset="cifar10",
                              swept={"model.num_codewords": 64},
                              overrides={"seed": 9, "train.batch_size": 16})
  assert point.config_overrides() == {
      "model.bottleneck": "vq", "model.num_codewords": 64, "train.num_steps": 40000,
      "seed": 2, "train.batch_size": 16, "data.name": "cifar10"}
  config = runs.point_config(cifar10.get_config(), point, quick=True)
  assert (config.seed, config.model.num_codewords, config.data.name,
          config.train.num_steps) == (2, 64, "cifar10", 20)
  with pytest.raises(KeyError, match="config has no key 'model.nope'"):
    runs.point_config(cifar10.get_config(), runs.point("ae", 0, overrides={"model.nope": 1}))


@pytest.mark.parametrize("swept,key", [
    ({"model.noise_std": 0.05}, "model.noise_std"),
    ({"model.beta": 4.0}, "model.beta"),
    ({"model.num_codewords": 16}, ""),  # Not a scalar of a traced program.
    ({"model.beta": 2.0, "model.max_alpha": 0.5}, ""),  # Two keys: trains alone.
    ({}, ""),
])
def test_families_are_fields_not_names(swept, key):
  a = runs.point("soft_vq_vae", 0, swept=swept)
  b = runs.point("soft_vq_vae", 2, swept={k: 99 for k in swept} if key else swept)
  family, found = runs.family(a)
  assert found == key and family == runs.family(b)[0]
  assert family != runs.family(runs.point("vq_vae", 0, swept=swept))[0]
  assert family != runs.family(runs.point("soft_vq_vae", 0, swept=swept,
                                          overrides={"train.batch_size": 64}))[0]


@pytest.mark.parametrize("a,b,key", [
    ("vae", "beta_vae", "model.beta"),  # One scalar of the VAE bottleneck.
    ("vae", "info_dropout", ""),  # Another bottleneck.
    ("soft_vq_vae", "soft_vq_vae_eq5", ""),  # The normaliser is not a traced scalar.
    ("vae", "vae", ""),  # Nothing to vmap: the same config.
    ("ae", "vq_vae", ""),
])
def test_rows_that_differ_in_one_scalar_train_together(a, b, key):
  config = lambda row, seed: runs.point_config(
      mnist.get_config(), presets.paper_point(row, seed, mnist.PAPER))
  assert runs.row_key(config(a, 0), config(b, 1)) == key
  assert runs.row_key(config(b, 2), config(a, 0)) == key


def test_split_gives_single_run_configs_value_major(tiny_config, tmp_path):
  tiny_config.train.num_seeds = 2
  tiny_config.train.vmap_key, tiny_config.train.vmap_values = "model.noise_std", (0.0, 0.5)
  found = runs.unpack(tiny_config, str(tmp_path))
  assert [os.path.relpath(run.workdir, tmp_path) for run in found] == [
      "noise_std_0.0/seed_0", "noise_std_0.0/seed_1", "noise_std_0.5/seed_0",
      "noise_std_0.5/seed_1"]
  assert [(c.seed, c.model.noise_std, c.train.num_seeds, c.train.vmap_key)
          for c, _ in found] == [(0, 0.0, 1, ""), (1, 0.0, 1, ""), (0, 0.5, 1, ""),
                                 (1, 0.5, 1, "")]
  assert runs.scalars(tiny_config, [c for c, _ in found]) == {"noise_std": [0, 0, 0.5, 0.5]}


def old_layout_finished_run(sweep_dir, name, config):
  """A finished run as the earlier code left it: its name as a path, a
  config.json without the keys added since, an eval.json and (empty) outputs."""
  stored = workdir.config_dict(config)
  for key in config_keys.ADDED_KEYS:
    section, field = key.split(".")
    del stored[section][field]
  run_dir = os.path.join(sweep_dir, name)
  os.makedirs(run_dir)
  workdir.write_json(os.path.join(run_dir, workdir.CONFIG_FILE), stored)
  results = {"clustering_acc": 50.0, "nmi": 0.5, "probe_acc": 90.0, "eval_split": "test"}
  workdir.write_json(os.path.join(run_dir, workdir.EVAL_FILE), results)
  for name in (outputs.LATENTS_FILE, *outputs.FIGURE_FILES):
    open(os.path.join(run_dir, name), "w").close()
  return results


@pytest.mark.slow
@pytest.mark.parametrize("module,sweep_name,name", [
    (digits, "table1", "vq_vae/seed_1"),
    (mnist, "variants", "soft_vq_vae/validation/noise_std_0.05/seed_0"),
    (mnist, "variants", "soft_vq_vae/validation/authors_code/seed_0"),
    (mnist, "codebook", "soft_vq_vae/num_codewords_64/seed_2"),
    (mnist, "chosen", "soft_vq_vae/normalizer_notebook/seed_0"),
    (mnist, "table1", "soft_vq_vae_eq5/seed_2"),
    (cifar10, "table2", "cifar10/beta_vae/seed_0"),
])
def test_runs_laid_out_the_old_way_are_found_finished(tmp_path, monkeypatch, module,
                                                      sweep_name, name):
  base = module.get_config()
  point = next(p for p in helpers.points(module, sweep_name) if runs.point_dir(p) == name)
  expected = old_layout_finished_run(str(tmp_path), name, runs.point_config(base, point))
  launches = sweep.plan(base, [point], str(tmp_path))
  assert [(l.names, l.workdir) for l in launches] == [([name], str(tmp_path / name))]
  monkeypatch.setattr(train.input_pipeline, "load", lambda _: pytest.fail("retrained"))
  assert sweep.run(base, [point], str(tmp_path)) == []
  assert train.train_and_evaluate(launches[0].config, launches[0].workdir) == expected


def test_a_stored_config_without_an_added_key_differs_from_other_values(tiny_config,
                                                                       tmp_path):
  config = tiny_config.copy_and_resolve_references()
  old_layout_finished_run(str(tmp_path), "run", config)
  config.model.codebook_init = "data"
  with pytest.raises(InputError, match="model.codebook_init: absent in the workdir, 'data'"):
    workdir.check(config, str(tmp_path / "run"))


def test_engine_never_imports_a_config_file():
  package = os.path.join(ROOT, "softvq_jax")
  engine = [os.path.join(folder, f) for folder, _, files in os.walk(package)
            for f in files if f.endswith(".py")]
  assert len(engine) > 30
  for path in engine:
    tree = ast.parse(open(path).read())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [f"{node.module}.{alias.name}" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) for alias in node.names]
    assert not [m for m in imported if "configs" in m.split(".")], path


@pytest.mark.parametrize("name", list(autoencoder.BOTTLENECKS))
def test_every_bottleneck_scalar_reaches_the_module(tiny_config, name):
  tiny_config.model.bottleneck = name
  plain = autoencoder.make_bottleneck(tiny_config.model)
  for scalar in autoencoder.BOTTLENECKS[name].scalars:
    assert autoencoder.make_bottleneck(tiny_config.model, {scalar: 0.123}) != plain, scalar
    assert f"model.{scalar}" in autoencoder.VMAPPABLE_KEYS
  with pytest.raises(ValueError, match="has no scalar"):
    autoencoder.make_bottleneck(tiny_config.model, {"latent_dim": 3})


@pytest.mark.parametrize("bottleneck,key,message", [
    ("vae", "model.noise_std", "'model.noise_std' is not read by config.model.bottleneck='vae'"),
    ("none", "model.beta", "'model.beta' is not read by config.model.bottleneck='none'"),
    ("soft_vq", "model.latent_dim", "choose one of model.beta"),
])
def test_vmap_key_must_be_read_by_the_bottleneck(tiny_config, bottleneck, key, message):
  tiny_config.model.bottleneck = bottleneck
  tiny_config.train.vmap_key, tiny_config.train.vmap_values = key, (1.0, 2.0)
  with pytest.raises(InputError, match=message):
    validation.validate_config(tiny_config, num_devices=1)


def test_sweep_tables_keep_their_row_labels():
  """The published tables' model column comes from the typed points."""
  from softvq_jax.launch import tables  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "experiments/results/soft_vq_variants/variants_mnist.json")) as f:
    published = [row["model"] for row in json.load(f)["rows"]]
  assert [tables.model_label(p) for p in helpers.points(mnist, "variants")] == published
