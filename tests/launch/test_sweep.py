"""Tests of the sweep launcher: runs, skipping, resumption and the tables."""

import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import cifar10
from configs import digits
from configs import mnist
from configs import svhn
from softvq_jax.errors import InputError
from softvq_jax.errors import RunStopped
from softvq_jax.launch import locks
from softvq_jax.launch import presets
from softvq_jax.launch import runs
from softvq_jax.launch import sweep
from softvq_jax.launch import tables
from softvq_jax.launch import train
from softvq_jax.launch import validation
from softvq_jax.launch import workdir
from tests import ROOT
from tests.launch import helpers


def small_points(module, name, keep):
  return [p for p in helpers.points(module, name) if keep(p)]


def test_table_sweeps_cover_rows_and_seeds():
  points = helpers.points(mnist, "table1")
  assert len(points) == 8 * 3  # The paper's 7 rows and soft_vq_vae_eq5.
  assert [p.row for p in points[:8]] == list(helpers.sweeps(mnist).PAPER_RESULTS["mnist"])
  normalizers = {p.row: p.config_overrides().get("model.normalizer") for p in points}
  assert (normalizers["soft_vq_vae"], normalizers["soft_vq_vae_eq5"]) == ("notebook", "paper")
  assert {p.config_overrides()["seed"] for p in points} == {0, 1, 2}
  vq = next(p for p in points if p.row == "vq_vae")
  assert vq.config_overrides()["model.num_codewords"] == 128
  table2 = helpers.points(cifar10, "table2")
  assert len(table2) == 2 * 6 * 3
  assert {p.config_overrides()["data.name"] for p in table2} == {"svhn_cropped", "cifar10"}
  assert len({runs.point_dir(p) for p in table2}) == len(table2)
  assert runs.point_dir(table2[0]) == "svhn_cropped/ae/seed_0"
  codebook = helpers.points(mnist, "codebook")
  assert runs.point_dir(codebook[0]) == "soft_vq_vae/num_codewords_16/seed_0"


@pytest.mark.slow
def test_digits_sweep_runs_skips_and_tabulates(tiny_config, tmp_path, monkeypatch):
  points = small_points(digits, "table1", lambda p: p.row in ("raw", "ae", "soft_vq_vae")
                        and p.seed < 2)
  sweep.run(tiny_config, points, str(tmp_path), sweep.Options(quick=True))
  table = tables.aggregate(points, str(tmp_path), paper={})
  assert [(r["model"], r["seeds"]) for r in table["rows"]] == [
      ("raw", [0, 1]), ("ae", [0, 1]), ("soft_vq_vae", [0, 1])]
  for row in table["rows"]:
    for metric in tables.METRICS:
      assert len(row[metric]) == 2
      expected = json.load(open(tmp_path / row["model"] / "seed_1" / "eval.json"))[metric]
      assert row[metric][1] == expected
    timings = [json.load(open(tmp_path / row["model"] / f"seed_{s}" / "timing.json"))
               for s in (0, 1)]
    assert row["eval_seconds"] == [t["eval_seconds"] for t in timings]
    if row["model"] != "raw":
      assert [m["step"] for m in row["last_train_metrics"]] == [
          tiny_config.train.num_steps] * 2
    assert all(seconds > 0 for seconds in row["eval_seconds"])
  markdown = tables.markdown(table)
  assert markdown.count("\n") == 2 + 3 + 2 and "±" in markdown  # Rows, then "Made with".
  assert "Made with: flax" in markdown
  # Finished runs are not trained again.
  monkeypatch.setattr(train.input_pipeline, "load", lambda _: pytest.fail("re-ran"))
  sweep.run(tiny_config, points, str(tmp_path), sweep.Options(quick=True))
  tables.write_tables(table, str(tmp_path / "t"))
  assert json.load(open(tmp_path / "t.json")) == table
  assert (tmp_path / "t.csv").read_text().count("\n") == 1 + 6
  tables.write_tsne(points, str(tmp_path), str(tmp_path / "t_tsne.png"), num_points=100)
  assert (tmp_path / "t_tsne.png").stat().st_size > 1000
  tables.write_figure(table, str(tmp_path / "t_metrics.png"))
  assert (tmp_path / "t_metrics.png").stat().st_size > 1000


@pytest.mark.slow
def test_overlapped_evaluation_gives_the_bits_of_evaluation_in_line(tiny_config, tmp_path,
                                                                    monkeypatch, caplog):
  """Evaluating in a worker thread while the next launch trains, and
  compiling the next launch meanwhile, change no result; the sweep loads
  its dataset once."""
  points = small_points(digits, "table1", lambda p: p.row in ("ae", "soft_vq_vae")
                        and p.seed == 0)
  loads, compiled = [], {}
  load = train.input_pipeline.load
  monkeypatch.setattr(train.input_pipeline, "load", lambda c: loads.append(c) or load(c))
  caplog.set_level(logging.DEBUG, logger="jax._src.interpreters.pxla")  # JAX's lowering.
  for overlap in (True, False):
    caplog.clear()
    sweep.run(tiny_config, points, str(tmp_path / str(overlap)), sweep.Options(
        quick=True, overlap_eval=overlap, compile_ahead=overlap))
    compiled[overlap] = [r.threadName for r in caplog.records
                         if r.getMessage().startswith("Compiling jit(train_chunk) ")]
  assert len(loads) == 2  # Once per sweep.
  # The second launch's training program compiles while the first trains.
  assert {k: sorted(v) for k, v in compiled.items()} == {
      True: ["MainThread", "compile_ahead_0"], False: ["MainThread", "MainThread"]}
  ahead, in_line = (json.loads((tmp_path / str(overlap) / runs.point_dir(points[1])
                                / "timing.json").read_text()) for overlap in (True, False))
  assert in_line["compile_ahead_seconds"] == 0 and ahead["compile_ahead_seconds"] > 0
  for point in points:
    ran = [tmp_path / str(overlap) / runs.point_dir(point) for overlap in (True, False)]
    overlapped, in_line = (json.loads((r / "eval.json").read_text()) for r in ran)
    assert {m: overlapped[m] for m in tables.METRICS} == {m: in_line[m] for m in tables.METRICS}
    latents = [np.load(r / "latents.npz")["latents"] for r in ran]
    np.testing.assert_array_equal(*latents)


@pytest.mark.slow
def test_an_evaluation_error_in_the_worker_stops_the_sweep_and_frees_the_run(
    tiny_config, tmp_path, monkeypatch):
  points = small_points(digits, "table1", lambda p: p.row in ("ae", "vae") and p.seed == 0)
  evaluate, calls = train.evaluation.evaluate, []

  def full_disk_for_ae(*args, **kwargs):  # The first evaluation, ae's.
    calls.append(1)
    if len(calls) == 1:
      raise OSError("No space left on device")
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(train.evaluation, "evaluate", full_disk_for_ae)
  with pytest.raises(RunStopped, match=r"evaluation failed \(No space left on device\); "
                     "training is finished and its checkpoint at step 20 is kept"):
    sweep.run(tiny_config, points, str(tmp_path), sweep.Options(quick=True))
  assert not (tmp_path / "ae" / "seed_0" / "eval.json").exists()
  with locks.lock([str(tmp_path / "ae" / "seed_0")]):
    pass  # Its lock was released.
  sweep.run(tiny_config, points, str(tmp_path), sweep.Options(quick=True))
  assert (tmp_path / "ae" / "seed_0" / "eval.json").exists()


def rows_of(points):
  """Table rows of ``points`` as ``tables.aggregate`` keys them, two seeds each."""
  rows = {}
  for point in points:
    rows.setdefault(tables.model_label(point), {
        "dataset": "mnist", "model": tables.model_label(point), "swept": dict(point.swept),
        **{m: [50.0 + point.seed, 60.0] for m in tables.METRICS}})
  return list(rows.values())


@pytest.mark.parametrize("name,key", [
    ("codebook", "model.num_codewords"), ("noise", "model.noise_std"),
    ("beta_vae", "model.beta"), ("moonshot_log_var", "model.log_var_init"),
    ("table1", None), ("ablations", None), ("moonshot", None), ("vq_vae", None)])
def test_sweeps_over_one_numeric_key_are_curves(name, key, tmp_path):
  rows = rows_of(helpers.points(mnist, name))
  assert tables.curve_key(rows) == key
  if key is not None:
    tables.write_figure({"rows": rows}, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_tsne_has_one_panel_per_row_of_the_table(tmp_path, monkeypatch):
  """Rows that share a preset and differ by a swept value (the K curve) each
  get a panel, from their first seed's latents: the embedding of the run's
  own figure where it has as many points, else one made now."""
  points = small_points(mnist, "codebook", lambda p: p.seed < 2
                        and dict(p.swept)["model.num_codewords"] in (16, 32))
  for point in points:
    run_dir = tmp_path / runs.point_dir(point)
    run_dir.mkdir(parents=True)
    own = dict(point.swept)["model.num_codewords"] == 16
    np.savez(run_dir / "latents.npz", latents=np.full((4, 2), point.seed),
             labels=np.arange(4), **({"tsne": np.full((4, 2), 10 + point.seed)} if own else {}))
  drawn = []
  monkeypatch.setattr(tables.figures, "tsne", lambda path, panels: drawn.extend(panels))
  monkeypatch.setattr(tables.figures, "tsne_embedding",
                      lambda z, num_points, seed: z[:num_points] + 100 * (seed + 1))
  tables.write_tsne(points, str(tmp_path), str(tmp_path / "t.png"), num_points=4)
  assert [name for name, _, _ in drawn] == [
      "soft_vq_vae/num_codewords_16/seed_0", "soft_vq_vae/num_codewords_32/seed_0"]
  assert [xy.tolist() for _, xy, _ in drawn] == [[[10, 10]] * 4, [[100, 100]] * 4]
  drawn.clear()
  tables.write_tsne(points, str(tmp_path), str(tmp_path / "t.png"), num_points=3)
  assert [xy.tolist() for _, xy, _ in drawn] == [[[100, 100]] * 3] * 2


def test_invalid_point_fails_before_any_run(tiny_config, tmp_path):
  points = small_points(digits, "table1", lambda p: p.seed == 0)
  points[-1] = dataclasses.replace(
      points[-1], overrides=points[-1].overrides + (("model.num_codewords", 0),))
  with pytest.raises(InputError, match="num_codewords"):
    sweep.run(tiny_config, points, str(tmp_path), sweep.Options(quick=True))
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_non_finite_run_does_not_stop_the_sweep(tiny_config, tmp_path, monkeypatch):
  points = small_points(digits, "table1", lambda p: p.row in ("ae", "vae") and p.seed == 0)
  launch = sweep.train.launch

  def fail_ae(config, workdir, evaluations, **kwargs):
    if config.model.bottleneck == "none":
      raise FloatingPointError("non-finite loss or gradient at step 3")
    return launch(config, workdir, evaluations, **kwargs)

  monkeypatch.setattr(sweep.train, "launch", fail_ae)
  failed = sweep.run(tiny_config, points, str(tmp_path), sweep.Options(quick=True))
  assert failed == ["ae/seed_0"]
  table = tables.aggregate(points, str(tmp_path), paper={})
  assert [r["model"] for r in table["rows"]] == ["vae"]


@pytest.mark.slow
def test_table2_sweep_on_mock_data(tmp_path, mock_tfds):
  config = cifar10.get_config()
  config.model.cnn_channels = (4, 4, 4, 4)
  config.model.latent_dim = 8
  config.eval.figures = False
  rows = {"svhn_cropped": "soft_vq_vae", "cifar10": "ae"}  # Both datasets and kinds.
  points = small_points(cifar10, "table2", lambda p: p.seed == 0 and rows[p.dataset] == p.row)
  with mock_tfds(24):
    sweep.run(config, points, str(tmp_path), sweep.Options(quick=True))
  table = tables.aggregate(points, str(tmp_path), helpers.sweeps(cifar10).PAPER_RESULTS)
  assert {(r["dataset"], r["model"]) for r in table["rows"]} == set(rows.items())
  soft = next(r for r in table["rows"] if r["dataset"] == "svhn_cropped"
              and r["model"] == "soft_vq_vae")
  assert soft["paper"]["clustering_acc"] == 17.68


@pytest.mark.slow
def test_sweep_command_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "softvq_jax.sweep", "--config=configs/digits.py:quick",
       "--sweep=nope", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "error: unknown sweep 'nope'; choose table1" in result.stderr
  result = subprocess.run(
      [sys.executable, "-m", "softvq_jax.sweep", "--config=configs/digits.py:quick",
       "--sweep=table1", f"--workdir={tmp_path}", "--aggregate_only"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "error: no finished run of sweep table1 in" in result.stderr
  assert not os.listdir(tmp_path)


def test_a_table_names_the_runs_it_leaves_out(tmp_path):
  points = helpers.points(digits, "table1")
  table = tables.aggregate(points, str(tmp_path), paper={})
  assert table["rows"] == []
  assert table["missing"] == [runs.point_dir(p) for p in points]
  shown = ", ".join(runs.point_dir(p) for p in points[:8])
  assert tables.markdown(table).endswith(
      f"{len(points)} runs not finished, left out of the table: {shown} and "
      f"{len(points) - 8} more.\n")



def test_sweeps_are_found_beside_their_config_file_and_named_in_errors(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "path", list(sys.path))  # load_sweeps adds my_configs' parent.
  assert helpers.sweeps(mnist).__name__ == "configs.sweeps.mnist"
  assert helpers.sweeps(cifar10).SWEEPS is helpers.sweeps(svhn).SWEEPS  # Table 2 over both.
  with pytest.raises(InputError, match="unknown sweep 'nope'; choose table1 or quantizers"):
    helpers.points(digits, "nope")
  own = tmp_path / "my_configs"
  (own / "sweeps").mkdir(parents=True)
  (own / "toy.py").write_text("SIZE = 3\n")
  with pytest.raises(InputError, match="has no sweeps: they live in .*my_configs/sweeps/toy.py"):
    sweep.load_sweeps(str(own / "toy.py"))
  (own / "sweeps" / "toy.py").write_text("from my_configs.toy import SIZE\nSWEEPS = {'s': list}\n")
  assert sweep.sweep_points(sweep.load_sweeps(str(own / "toy.py")), "s") == []
  (own / "sweeps" / "broken.py").write_text("raise RuntimeError('boom')\n")
  (own / "broken.py").write_text("")
  with pytest.raises(InputError, match="my_configs.sweeps.broken: RuntimeError: boom"):
    sweep.load_sweeps(str(own / "broken.py"))

def test_plan_groups_consecutive_seeds_at_the_same_step(tiny_config, tmp_path):
  points = helpers.points(digits, "table1")
  # Checkpointed further than its neighbours: resumes alone.
  (tmp_path / "ae" / "seed_1" / "checkpoints" / "500").mkdir(parents=True)
  # Two seeds at the same checkpoint resume together; a finished one is skipped.
  for seed in (0, 1):
    (tmp_path / "vq_vae" / f"seed_{seed}" / "checkpoints" / "500").mkdir(parents=True)
  (tmp_path / "vq_vae" / "seed_2").mkdir(parents=True)
  (tmp_path / "vq_vae" / "seed_2" / "eval.json").write_text("{}")
  launches = sweep.plan(tiny_config, points, str(tmp_path))  # Rows apart: the default.
  described = {tuple(l.names): (l.config.seed, l.config.train.num_seeds, l.raw,
                                os.path.relpath(l.workdir, tmp_path)) for l in launches}
  assert described[("vae/seed_0", "vae/seed_1", "vae/seed_2")] == (0, 3, False, "vae")
  assert described[("ae/seed_0",)] == (0, 1, False, "ae/seed_0")
  assert described[("ae/seed_1",)] == (1, 1, False, "ae/seed_1")
  assert described[("ae/seed_2",)] == (2, 1, False, "ae/seed_2")
  assert described[("vq_vae/seed_0", "vq_vae/seed_1")] == (0, 2, False, "vq_vae")
  assert described[("vq_vae/seed_2",)] == (2, 1, False, "vq_vae/seed_2")
  assert described[("raw/seed_2",)] == (2, 1, True, "raw/seed_2")
  assert sorted(n for l in launches for n in l.names) == sorted(
      runs.point_dir(p) for p in points)
  assert all(len(l.names) == 1 for l in sweep.plan(tiny_config, points, str(tmp_path),
                                                    sweep.Options(vmap_seeds=False)))


def describe(launches, workdir):
  return {tuple(l.names): (l.config.train.num_seeds, l.config.train.vmap_key,
                           tuple(l.config.train.vmap_values), os.path.relpath(l.workdir, workdir))
          for l in launches}


def test_plan_trains_swept_scalar_values_together(tiny_config, tmp_path):
  point = lambda seed, **swept: presets.paper_point("vae", seed, digits.PAPER, swept=swept)
  points = ([point(s, **{"model.beta": b}) for s in (0, 1) for b in (1.0, 4.0)]
            + [point(0, **{"model.beta": 8.0}),
               point(0, **{"model.beta": 2.0, "model.max_alpha": 0.5})])
  launches = sweep.plan(tiny_config, points, str(tmp_path))
  assert describe(launches, tmp_path) == {
      ("vae/beta_1.0/seed_0", "vae/beta_1.0/seed_1", "vae/beta_4.0/seed_0",
       "vae/beta_4.0/seed_1"): (2, "model.beta", (1.0, 4.0), "vae"),
      ("vae/beta_8.0/seed_0",): (1, "", (), "vae/beta_8.0/seed_0"),
      # Two tags: its family is its directory, so it trains alone.
      ("vae/beta_2.0/max_alpha_0.5/seed_0",): (1, "", (), "vae/beta_2.0/max_alpha_0.5/seed_0"),
  }
  for launch in launches:  # unpack inverts pack: each point's config, in its directory.
    unpacked = runs.unpack(launch.config, launch.workdir)
    assert [d for _, d in unpacked] == [os.path.join(tmp_path, name) for name in launch.names]
    assert [workdir.config_dict(c) for c, _ in unpacked] == [
        workdir.config_dict(runs.point_config(tiny_config, p)) for p in launch.points]


def test_plan_packs_rows_that_differ_in_one_scalar(tiny_config, tmp_path):
  points = helpers.points(mnist, "table1")
  packing = sweep.Options(pack_rows=True)
  plan = lambda workdir: sweep.plan(tiny_config, points, str(workdir), packing)
  described = describe(plan(tmp_path), tmp_path)
  packed = tuple(f"{row}/seed_{s}" for row in ("vae", "beta_vae") for s in (0, 1, 2))
  assert described[packed] == (3, "model.beta", (1.0, 20.0), ".")
  assert len(described) == 3 + 6  # Raw seeds alone; 7 rows' seeds packed, 2 rows together.
  alone = describe(sweep.plan(tiny_config, points, str(tmp_path)), tmp_path)
  assert alone[packed[:3]] == (3, "", (), "vae") and alone[packed[3:]] == (3, "", (), "beta_vae")
  # Runs resumed from different steps train apart.
  (tmp_path / "beta_vae" / "seed_0" / "checkpoints" / "10").mkdir(parents=True)
  assert describe(plan(tmp_path), tmp_path)[packed[:3]] == (3, "", (), "vae")
  launch = next(l for l in plan(tmp_path / "new") if l.config.train.vmap_key)
  assert [(r.config.seed, r.config.model.beta, os.path.relpath(r.workdir, tmp_path / "new"))
          for r in launch.runs] == [(s, beta, f"{row}/seed_{s}") for row, beta in
                                    (("vae", 1.0), ("beta_vae", 20.0)) for s in (0, 1, 2)]
  assert [workdir.config_dict(r.config) for r in launch.runs] == [
      workdir.config_dict(runs.point_config(tiny_config, p)) for p in launch.points]


@pytest.mark.slow
def test_packed_rows_train_in_one_launch_into_their_rows(tiny_config, tmp_path):
  """The vae and beta_vae rows trained in one program write each row's run
  into its own directory, as a run of that row alone; that vmapped beta
  trains like each beta alone is ``test_runs_trained_together_match_separate_runs``."""
  points = small_points(digits, "table1", lambda p: p.row in ("vae", "beta_vae")
                        and p.seed == 0)
  sweep.run(tiny_config, points, str(tmp_path), sweep.Options(quick=True, pack_rows=True))
  for point in points:
    ran, alone = tmp_path / runs.point_dir(point), runs.point_config(tiny_config, point, quick=True)
    assert json.loads((ran / "config.json").read_text()) == workdir.config_dict(alone)
    assert json.loads((ran / "timing.json").read_text())["runs_trained_together"] == 2
    assert train.train_and_evaluate(alone, str(ran)) == json.loads((ran / "eval.json").read_text())


def test_variants_sweep_vmaps_the_noise_levels(tiny_config, tmp_path):
  points = helpers.points(mnist, "variants")
  assert {p.config_overrides()["data.validation_size"] for p in points} == {
      helpers.sweeps(mnist).VALIDATION_SIZE}
  described = describe(sweep.plan(tiny_config, points, str(tmp_path)), tmp_path)
  assert described[tuple(f"soft_vq_vae/validation/noise_std_{noise}/seed_0"
                       for noise in (0.01, 0.0, 0.05))] == (
                        1, "model.noise_std", (0.01, 0.0, 0.05), "soft_vq_vae/validation")
  assert len(described) == len(points) - 2


def test_chosen_sweep_scores_the_chosen_variant_on_the_test_split():
  points = helpers.points(mnist, "chosen")
  assert [p.seed for p in points] == [0, 1, 2]
  for point in points:
    assert "data.validation_size" not in point.config_overrides()
    assert point.config_overrides()["model.normalizer"] == helpers.sweeps(mnist).CHOSEN["model.normalizer"]


@pytest.mark.parametrize("name,split", [
    ("moonshot", "validation"), ("beta_vae", "validation"), ("variants", "validation"),
    ("noise", "validation"), ("moonshot_seeds", "validation"), ("moonshot_log_var", "validation"),
    ("vq_vae", "validation"), ("beta_vae_batch", "validation"),
    ("ablations", "test"), ("beta_vae_test", "test"), ("moonshot_test", "test"),
    ("vq_vae_test", "test")])
def test_choosing_sweeps_score_on_validation_and_chosen_settings_on_test(name, split):
  points = helpers.points(mnist, name)
  assert len({runs.point_dir(p) for p in points}) == len(points)
  for point in points:
    config = runs.point_config(mnist.get_config(), point)
    assert (config.data.validation_size > 0) == (split == "validation")
    validation.validate_config(config, num_devices=1)
  if name == "ablations":  # The row itself first, then the row with changes.
    assert runs.point_dir(points[0]) == "soft_vq_vae/seed_0"
    assert sorted(p.seed for p in points if not p.swept) == [0, 1, 2]


def test_one_directory_holds_one_config_across_all_sweeps():
  """Every sweep of configs/mnist.py can share one --workdir: a directory that
  two sweeps name (the same run) gets the same config from both."""
  configs = {}
  for name in helpers.sweeps(mnist).SWEEPS:
    for point in helpers.points(mnist, name):
      config = runs.point_config(mnist.get_config(), point).to_json(sort_keys=True)
      assert configs.setdefault(runs.point_dir(point), config) == config, (
          name, runs.point_dir(point))


def test_shards_split_families_of_seeds():
  points = helpers.points(mnist, "table1")
  shards = [sweep.shard_points(points, i, 3) for i in range(3)]
  assert sorted(runs.point_dir(p) for s in shards for p in s) == sorted(
      runs.point_dir(p) for p in points)
  for shard in shards:
    rows = {p.row for p in shard}
    assert len(shard) == 3 * len(rows)  # Every seed of a row in the same shard.


def test_a_sweep_skips_the_points_another_launcher_holds(tmp_path):
  base = digits.get_config("quick")
  points = [runs.point("raw", seed) for seed in (0, 1)]
  with locks.lock([str(tmp_path / "raw" / "seed_1")]):
    failed = sweep.run(base, points, str(tmp_path), sweep.Options(quick=True))
  assert failed == ["raw/seed_1"]
  assert (tmp_path / "raw" / "seed_0" / "eval.json").exists()
  assert not (tmp_path / "raw" / "seed_1" / "eval.json").exists()


def test_sweep_command_line_overrides_win_over_presets():
  point = helpers.points(digits, "table1")[1]  # The ae row: its preset sets num_steps.
  base = digits.get_config()
  base.train.num_steps = 200
  assert runs.point_config(base, point).train.num_steps == digits.PAPER.steps
  config = runs.point_config(base, point, command_line={"train.num_steps": 200})
  assert config.train.num_steps == 200
  assert runs.point_config(base, point, quick=True,
                           command_line={"train.num_steps": 200}).train.num_steps == 200
  swept = runs.point("soft_vq_vae", 0, swept={"model.noise_std": 0.1})
  with pytest.raises(InputError, match="config.model.noise_std is swept"):
    runs.point_config(base, swept, command_line={"model.noise_std": 0.0})


@pytest.mark.parametrize("key,value,refused", [
    ("model.bottleneck", "vq", "is set per row"),  # By the presets: every row would be VQ.
    ("model.beta", 2.0, "is set per row"),
    ("train.num_seeds", 2, "is set by the sweep itself"),  # Issue 37: raw lost its row.
    ("seed", 3, "is set by the sweep itself"),
    ("train.vmap_key", "model.beta", "is set by the sweep itself"),
    ("train.num_steps", 300, None),  # Every digits row trains 3000 steps: shortens all.
    ("eval.figures", False, None),
])
def test_a_sweep_refuses_overrides_of_keys_its_rows_set_differently(tmp_path, key, value,
                                                                   refused):
  base = digits.get_config()
  runs.apply_overrides(base, {key: value})
  plan = lambda: sweep.plan(base, helpers.points(digits, "table1"), str(tmp_path),
                            command_line={key: value})
  if refused:
    with pytest.raises(InputError, match=rf"--config.{key} {refused}"):
      plan()
  else:
    assert {launch.config[key] for launch in plan()} == {value}
  assert not os.listdir(tmp_path)
