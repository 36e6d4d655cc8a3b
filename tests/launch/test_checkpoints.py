"""Checkpoints: damaged, diverging or bit-flipped ones are set aside for the one before, a failed
save names the last good one, and a killed run resumes to the same bits."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from softvq_jax.errors import InputError
from softvq_jax.errors import RunStopped
from softvq_jax.launch import checkpoints
from softvq_jax.launch import steps
from softvq_jax.launch import train
from tests import ROOT


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_previous(tiny_config, tmp_path):
  expected = train.train_and_evaluate(tiny_config, str(tmp_path / "full"))
  run = tmp_path / "damaged"
  train.train_and_evaluate(tiny_config, str(run))
  os.remove(run / "eval.json")
  # The repro: orbax raises a bare Exception for a short array file.
  largest = max((p for p in (run / "checkpoints" / "20").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])
  assert train.train_and_evaluate(tiny_config, str(run)) == expected


@pytest.mark.slow
def test_a_failed_save_stops_the_run_naming_the_last_good_checkpoint(
    tiny_config, tmp_path, monkeypatch):
  save = ocp.CheckpointManager.save

  def disk_full_at_step_20(self, step, *args, **kwargs):
    if step == 20:
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full_at_step_20)
  with pytest.raises(RunStopped, match=r"saving a checkpoint in .* failed \(No space left "
                     r"on device\).*last good checkpoint is at step 10"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]
  assert not (tmp_path / "eval.json").exists()


@pytest.mark.slow
def test_divergence_before_the_first_checkpoint_says_so(tiny_config, tmp_path,
                                                          monkeypatch):
  load = train.input_pipeline.load

  def all_nan(data_config):
    data = load(data_config)
    data.train_images[:] = np.nan
    return data

  monkeypatch.setattr(train.input_pipeline, "load", all_nan)
  with pytest.raises(FloatingPointError, match="No checkpoint was saved yet"):
    train.train_and_evaluate(tiny_config, str(tmp_path))


_TINY_STATE = steps.TrainState(step=jnp.full((1,), 10, jnp.int32),
                               params={"w": jnp.ones((1, 3))}, opt_state={}, model_state={})


def test_resuming_on_another_device_count_warns(tmp_path, caplog):
  state = _TINY_STATE
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  managers = checkpoints.Managers([str(tmp_path)], max_to_keep=2)
  managers.save(10, state)
  managers.wait()
  metadata = tmp_path / "checkpoints" / "10" / "_CHECKPOINT_METADATA"
  stored = json.loads(metadata.read_text())
  assert stored["custom_metadata"] == {"devices": jax.device_count()}
  stored["custom_metadata"]["devices"] = 99
  metadata.write_text(json.dumps(stored))
  # As if written on 99 devices: its manifest is that of the edited files.
  os.remove(tmp_path / checkpoints.CHECKSUMS_DIR / "10.json")
  managers = checkpoints.Managers([str(tmp_path)], max_to_keep=2)
  managers.wait()
  with caplog.at_level(logging.WARNING):
    restored = managers.restore(state, sharding)
  assert int(restored.step[0]) == 10
  assert "written on 99 devices" in caplog.text


@pytest.mark.parametrize("recorded, now, refused", [
    ({"config": {"lr": 1.0}, "data": "a"}, {"config": {"lr": 1.0}, "data": "a"}, None),
    ({"config": {"lr": 1.0}, "data": "a"}, {"config": {"lr": 2.0}, "data": "a"},
     r"step 10: lr: 1.0 in the checkpoint, 2.0 now\)"),
    ({"config": {"lr": 1.0}, "data": "a"}, {"config": {"lr": 1.0}, "data": "b"},
     r"training images a in the checkpoint, b now"),
    ({}, {"config": {"lr": 1.0}, "data": "a"}, None),  # From before provenance.
])
def test_checkpoints_of_another_config_or_data_are_refused(tmp_path, recorded, now, refused):
  managers = checkpoints.Managers([str(tmp_path)], max_to_keep=2, provenance=[recorded])
  managers.save(10, _TINY_STATE)
  managers.wait()
  on_disk = sorted(str(p) for p in tmp_path.rglob("*"))
  managers = checkpoints.Managers([str(tmp_path)], max_to_keep=2, provenance=[now])
  if refused is None:
    managers.check_provenance()
  else:
    with pytest.raises(InputError, match=refused):
      managers.check_provenance()
  assert sorted(str(p) for p in tmp_path.rglob("*")) == on_disk


@pytest.mark.slow
def test_a_resume_without_config_json_or_on_other_data_is_refused(tiny_config, tmp_path,
                                                                   monkeypatch):
  """Issue 37's repros 1 and 4: config.json removed before a rerun at another
  learning rate; the training images changed before a rerun."""
  _interrupted_after_step_20(tiny_config, tmp_path)
  os.remove(tmp_path / "config.json")
  on_disk = sorted(str(p) for p in tmp_path.rglob("*"))
  tiny_config.train.learning_rate *= 3
  with pytest.raises(InputError, match=r"holds checkpoints of another run \(step 20: "
                     r"train.learning_rate: "):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.train.learning_rate /= 3
  load = train.input_pipeline.load

  def one_image_changed(data_config):
    data = load(data_config)
    data.train_images[0] = 0.0
    return data

  monkeypatch.setattr(train.input_pipeline, "load", one_image_changed)
  with pytest.raises(InputError, match=r"step 20: training images float32\[.*sha256:.* in "
                     r"the checkpoint"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert sorted(str(p) for p in tmp_path.rglob("*")) == on_disk


def _interrupted_after_step_20(config, run):
  """A run of 30 steps killed after its checkpoint at step 20 (the issue's
  repro, scaled): eval.json and checkpoint 30 removed."""
  config.train.num_steps, config.train.max_checkpoints = 30, 3
  train.train_and_evaluate(config, str(run))
  os.remove(run / "eval.json")
  shutil.rmtree(run / "checkpoints" / "30")
  os.remove(run / checkpoints.CHECKSUMS_DIR / "30.json")


@pytest.mark.slow
def test_a_bit_flipped_checkpoint_is_set_aside_for_the_one_before(tiny_config, tmp_path,
                                                                  caplog):
  tiny_config.train.num_steps, tiny_config.train.max_checkpoints = 30, 3
  expected = train.train_and_evaluate(tiny_config, str(tmp_path / "full"))
  run = tmp_path / "flipped"
  _interrupted_after_step_20(tiny_config, run)
  for path in (run / "checkpoints" / "20").rglob("*"):
    if path.is_file() and "/d/" in str(path):  # tensorstore's data files.
      data = bytearray(path.read_bytes())
      data[len(data) // 2] ^= 1
      path.write_bytes(bytes(data))
  with caplog.at_level(logging.WARNING):
    assert train.train_and_evaluate(tiny_config, str(run)) == expected
  assert "checkpoint 20 set aside (sha256 mismatch" in caplog.text
  assert (run / "set_aside" / "checkpoint_20").is_dir()
  assert sorted(os.listdir(run / "checkpoints")) == ["10", "20", "30"]


@pytest.mark.slow
def test_a_checkpoint_that_diverges_at_once_is_set_aside(tiny_config, tmp_path,
                                                        monkeypatch, caplog):
  tiny_config.train.num_steps, tiny_config.train.max_checkpoints = 30, 3
  expected = train.train_and_evaluate(tiny_config, str(tmp_path / "full"))
  run = tmp_path / "nan"
  _interrupted_after_step_20(tiny_config, run)
  restore = ocp.CheckpointManager.restore

  def nan_at_step_20(self, step, *args, **kwargs):
    state = restore(self, step, *args, **kwargs)
    nan = lambda x: x * np.nan if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(nan, state) if step == 20 else state

  monkeypatch.setattr(ocp.CheckpointManager, "restore", nan_at_step_20)
  with caplog.at_level(logging.WARNING):
    assert train.train_and_evaluate(tiny_config, str(run)) == expected
  assert "checkpoint 20 set aside (a non-finite loss in its first steps)" in caplog.text


ARGS = ("--config=configs/digits.py", "--config.model.mlp_hidden=(64, 64)",
        "--config.train.num_steps=900", "--config.train.log_every=100",
        "--config.train.checkpoint_every=300", "--config.eval.figures=False",
        "--config.eval.kmeans_inits=5", "--config.eval.probe_steps=500")


def command(workdir):
  return [sys.executable, "-m", "softvq_jax.main", *ARGS, f"--workdir={workdir}"]


@pytest.mark.slow
def test_sigkill_then_restart_gives_identical_eval(tmp_path):
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  subprocess.run(command(reference), cwd=ROOT, check=True, capture_output=True, timeout=300)
  process = subprocess.Popen(command(killed), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (killed / "checkpoints" / "300").exists() and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (killed / "eval.json").exists(), "the run finished before it was killed"
  subprocess.run(command(killed), cwd=ROOT, check=True, capture_output=True, timeout=300)
  assert (killed / "eval.json").read_bytes() == (reference / "eval.json").read_bytes()
  steps = lambda run: [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
  assert steps(killed) == steps(reference) == list(range(100, 1000, 100))
