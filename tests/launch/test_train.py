"""End-to-end training: every bottleneck, resume, workdir rules, NaN guard."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.errors import InputError
from softvq_jax.launch import loop
from softvq_jax.launch import runs
from softvq_jax.launch import steps
from softvq_jax.launch import train
from softvq_jax.model import autoencoder


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.parametrize("bottleneck,ema", [
    ("none", None), ("vae", None), ("info_dropout", None), ("vq", None),
    ("vq", 0.99), ("soft_vq", None)])
def test_end_to_end(tiny_config, tmp_path, bottleneck, ema):
  tiny_config.model.bottleneck = bottleneck
  tiny_config.model.ema_decay = ema
  results = train.train_and_evaluate(tiny_config, str(tmp_path))
  assert 0 < results["clustering_acc"] <= 100 and 0 < results["probe_acc"] <= 100
  assert 0 <= results["nmi"] <= 1
  assert json.load(open(tmp_path / "eval.json")) == results
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == [10, 20]
  expected = {"step", "loss", "recon", "bottleneck_loss", "steps_per_sec"}
  if bottleneck in ("vq", "soft_vq"):
    expected |= {"perplexity", "usage", "codebook_loss", "commitment_loss"}
  assert expected <= set(records[0])
  assert all(np.isfinite(r["loss"]) for r in records)
  latents = np.load(tmp_path / "latents.npz")
  assert latents["latents"].shape == (360, tiny_config.model.latent_dim)
  assert latents["labels"].shape == (360,)
  assert json.load(open(tmp_path / "config.json"))["model"]["bottleneck"] == bottleneck
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]


@pytest.mark.slow
@pytest.mark.parametrize("bottleneck", ["vq", "soft_vq"])
def test_data_codebook_init_starts_at_distinct_encodings(tiny_config, bottleneck):
  tiny_config.model.bottleneck, tiny_config.model.num_codewords = bottleneck, 6
  optimizer = steps.make_optimizer(tiny_config.train)
  pool = jax.random.uniform(jax.random.key(1), (10, 8, 8, 1))
  rng = jax.random.key(0)
  uniform = steps.init_state(rng, autoencoder.make_model(tiny_config.model, (8, 8, 1)), optimizer,
                             steps.init_images(rng, pool, tiny_config.model))
  tiny_config.model.codebook_init = "data"
  model = autoencoder.make_model(tiny_config.model, (8, 8, 1))
  state = steps.init_state(rng, model, optimizer, steps.init_images(rng, pool, tiny_config.model))
  codebook = state.params["bottleneck"]["codebook"]
  encodings = model.apply({"params": state.params}, pool, method=autoencoder.Autoencoder.encode)
  distances = jnp.sum(jnp.square(codebook[:, None] - encodings[None]), axis=-1)
  nearest = jnp.argmin(distances, axis=1)
  np.testing.assert_allclose(jnp.min(distances, axis=1), 0.0, atol=1e-10)
  assert len(set(nearest.tolist())) == 6
  # Everything else is the uniform init's, and Adam's moments start at zero.
  del state.params["bottleneck"]["codebook"], uniform.params["bottleneck"]["codebook"]
  jax.tree.map(np.testing.assert_array_equal, state.params, uniform.params)


@pytest.mark.slow
def test_data_codebook_init_trains_end_to_end(tiny_config, tmp_path):
  tiny_config.model.codebook_init = "data"
  results = train.train_and_evaluate(tiny_config, str(tmp_path))
  assert 0 < results["clustering_acc"] <= 100
  assert json.load(open(tmp_path / "config.json"))["model"]["codebook_init"] == "data"


@pytest.mark.slow
def test_figures_are_written_and_made_again_when_lost(tiny_config, tmp_path):
  tiny_config.eval.figures = True
  train.train_and_evaluate(tiny_config, str(tmp_path))
  for name in ("tsne", "reconstructions", "codebook_usage", "training_curves"):
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
  # Issue 37, item 8: a finished run that lost an output makes it again.
  before = {p: p.read_bytes() for p in tmp_path.glob("*.json")}
  latents = dict(np.load(tmp_path / "latents.npz"))
  os.remove(tmp_path / "latents.npz")
  os.remove(tmp_path / "tsne.png")
  train.train_and_evaluate(tiny_config, str(tmp_path))
  assert (tmp_path / "tsne.png").stat().st_size > 1000
  for key, value in np.load(tmp_path / "latents.npz").items():
    np.testing.assert_array_equal(value, latents[key])
  assert {p: p.read_bytes() for p in tmp_path.glob("*.json")} == before
  shutil.rmtree(tmp_path / "checkpoints" / "20")
  os.remove(tmp_path / "latents.npz")
  with pytest.raises(InputError, match=r"is a finished run without latents.npz and without "
                     r"its final checkpoint \(step 20\)"):
    train.train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tiny_config, tmp_path):
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  expected = train.train_and_evaluate(tiny_config, str(full))
  train.train_and_evaluate(tiny_config, str(resumed))
  # Simulate a run killed after its step-10 checkpoint.
  shutil.rmtree(resumed / "checkpoints" / "20")
  os.remove(resumed / "eval.json")
  assert train.train_and_evaluate(tiny_config, str(resumed)) == expected
  assert (resumed / "eval.json").read_bytes() == (full / "eval.json").read_bytes()
  full_log, resumed_log = read_jsonl(full / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
  assert [r["step"] for r in resumed_log] == [10, 20]
  assert [r["loss"] for r in resumed_log] == [r["loss"] for r in full_log]


@pytest.mark.slow
def test_finished_run_is_not_retrained(tiny_config, tmp_path, monkeypatch):
  expected = train.train_and_evaluate(tiny_config, str(tmp_path))
  monkeypatch.setattr(train.input_pipeline, "load", lambda _: pytest.fail("retrained"))
  assert train.train_and_evaluate(tiny_config, str(tmp_path)) == expected


@pytest.mark.slow
def test_other_config_is_refused_and_nothing_changes(tiny_config, tmp_path):
  train.train_and_evaluate(tiny_config, str(tmp_path))
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  tiny_config.model.num_codewords = 7
  with pytest.raises(InputError, match=r"model.num_codewords: 32 in the workdir, 7 now"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_nan_guard_names_the_step_and_keeps_last_checkpoint(tiny_config, tmp_path,
                                                           monkeypatch):
  load = train.input_pipeline.load

  def load_with_a_nan_image(data_config):
    data = load(data_config)
    data.train_images[21] = np.nan  # First drawn at step 25 for seed 0.
    return data

  monkeypatch.setattr(train.input_pipeline, "load", load_with_a_nan_image)
  tiny_config.train.num_steps = 1000
  with pytest.raises(FloatingPointError,
                     match=r"non-finite loss or gradient at step (\d+)") as error:
    train.train_and_evaluate(tiny_config, str(tmp_path))
  bad_step = int(str(error.value).split("at step ")[1].split(";")[0])
  last_good = bad_step // 10 * 10
  assert last_good >= 10
  assert f"last good checkpoint is at step {last_good}" in str(error.value)
  assert max(int(s) for s in os.listdir(tmp_path / "checkpoints")) == last_good
  assert not (tmp_path / "eval.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("bottleneck,num_seeds,key,values,run_dirs,runs_together", [
    ("soft_vq", 2, "", (), ["seed_0", "seed_1"], "vmap"),
    ("soft_vq", 2, "", (), ["seed_0", "seed_1"], "loop"),  # Loop runs like vmap: once.
    ("soft_vq", 1, "model.noise_std", (0.0, 0.5),
     ["noise_std_0.0/seed_0", "noise_std_0.5/seed_0"], "vmap"),
    ("vae", 1, "model.beta", (1.0, 20.0), ["beta_1.0/seed_0", "beta_20.0/seed_0"], "vmap"),
])
def test_runs_trained_together_match_separate_runs(tiny_config, tmp_path, bottleneck,
                                                   num_seeds, key, values, run_dirs, runs_together):
  tiny_config.train.runs_together = runs_together
  tiny_config.model.bottleneck = bottleneck
  tiny_config.train.num_seeds = num_seeds
  tiny_config.train.vmap_key, tiny_config.train.vmap_values = key, values
  together = train.train_and_evaluate(tiny_config, str(tmp_path / "together"))
  assert len(together) == 2
  for i, (run_dir, (alone_config, _)) in enumerate(zip(
      run_dirs, runs.unpack(tiny_config, str(tmp_path)))):
    assert alone_config.train.num_seeds == 1 and not alone_config.train.vmap_key
    alone_dir, joint_dir = tmp_path / f"alone_{i}", tmp_path / "together" / run_dir
    alone = train.train_and_evaluate(alone_config, str(alone_dir))
    assert (joint_dir / "config.json").read_bytes() == (alone_dir / "config.json").read_bytes()
    assert sorted(os.listdir(joint_dir / "checkpoints")) == ["10", "20"]
    for a, b in zip(read_jsonl(alone_dir / "metrics.jsonl"),
                    read_jsonl(joint_dir / "metrics.jsonl")):
      assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    np.testing.assert_allclose(np.load(joint_dir / "latents.npz")["latents"],
                               np.load(alone_dir / "latents.npz")["latents"], atol=1e-3)
    assert together[i]["probe_acc"] == pytest.approx(alone["probe_acc"], abs=1.0)
    # The run's workdir is a finished run for a single-run command too.
    assert train.train_and_evaluate(alone_config, str(joint_dir)) == together[i]
  # The swept scalar changes training: the two runs' losses differ.
  losses = [read_jsonl(tmp_path / "together" / d / "metrics.jsonl")[-1]["loss"]
            for d in run_dirs]
  assert losses[0] != losses[1]


@pytest.mark.slow
def test_vmapped_seeds_resume(tiny_config, tmp_path):
  tiny_config.train.num_seeds = 2
  expected = train.train_and_evaluate(tiny_config, str(tmp_path))
  for seed in (0, 1):
    shutil.rmtree(tmp_path / f"seed_{seed}" / "checkpoints" / "20")
    os.remove(tmp_path / f"seed_{seed}" / "eval.json")
  assert train.train_and_evaluate(tiny_config, str(tmp_path)) == expected


@pytest.mark.slow
def test_partly_finished_seeds_are_refused(tiny_config, tmp_path):
  single = tiny_config.copy_and_resolve_references()
  train.train_and_evaluate(single, str(tmp_path / "seed_0"))
  tiny_config.train.num_seeds = 2
  with pytest.raises(InputError, match="finished runs for some of its runs only"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert not (tmp_path / "seed_1").exists()


@pytest.mark.slow
def test_kmeans_init_ema_and_dead_code_restart_train_end_to_end(tiny_config, tmp_path):
  tiny_config.model.codebook_init = "kmeans"
  tiny_config.model.ema_decay, tiny_config.model.dead_code_threshold = 0.9, 0.5
  results = train.train_and_evaluate(tiny_config, str(tmp_path))
  assert 0 < results["clustering_acc"] <= 100
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert all(0 <= r["dead_code_fraction"] <= 1 and r["codebook_loss"] > 0 for r in records)
  # The k-means codebook starts among the encodings: none is far from all of them.
  model = autoencoder.make_model(tiny_config.model, (8, 8, 1))
  images = jnp.asarray(np.random.default_rng(0).random((600, 8, 8, 1)), jnp.float32)
  init = steps.init_images(jax.random.key(0), images, tiny_config.model)
  assert init.shape == (steps.KMEANS_IMAGES_PER_CODEWORD * 32, 8, 8, 1)
  variables = model.init({"params": jax.random.key(0)}, init, train=False)
  codebook = variables["ema"]["bottleneck"]["codebook"]
  encodings = model.apply(variables, init, method=autoencoder.Autoencoder.encode)
  inertia = lambda c: float(jnp.mean(jnp.min(jnp.sum(
      jnp.square(encodings[:, None] - c[None]), -1), -1)))
  assert inertia(codebook) < inertia(encodings[:32])


@pytest.mark.slow
def test_dispatches_split_to_bound_their_time_leave_the_bits(tiny_config, tmp_path,
                                                            monkeypatch):
  """Chunks cut into dispatches of at most 3 steps (so that a signal is seen
  in time) train the same bits and log the same metrics."""
  expected = train.train_and_evaluate(tiny_config, str(tmp_path / "whole"))
  monkeypatch.setattr(loop, "FIRST_DISPATCH_STEPS", 3)
  monkeypatch.setattr(loop, "MAX_DISPATCH_SECONDS", 0.0)
  assert train.train_and_evaluate(tiny_config, str(tmp_path / "split")) == expected
  assert (read_jsonl(tmp_path / "split" / "metrics.jsonl")[-1]["loss"]
          == read_jsonl(tmp_path / "whole" / "metrics.jsonl")[-1]["loss"])
