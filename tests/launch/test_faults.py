"""Fault injection: damaged checkpoints, a full disk, Ctrl-C, two launchers,
bad flags, bad values and bad files. Each ends in one line, with the exit
status of ``softvq_jax.launch.cli``, and nothing already written is lost.
Killed and restarted runs end as uninterrupted ones, and stored configs count
as the same run exactly when they are."""

import errno
import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import digits
from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError
from softvq_jax.errors import RunStopped
from softvq_jax.launch import checkpoints
from softvq_jax.launch import cli
from softvq_jax.launch import locks
from softvq_jax.launch import runs
from softvq_jax.launch import signals
from softvq_jax.launch import steps
from softvq_jax.launch import sweep
from softvq_jax.launch import train
from softvq_jax.launch import training_log
from softvq_jax.launch import validation
from softvq_jax.launch import workdir
from tests import ROOT


def files(directory):
  return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


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
def test_ctrl_c_finishes_pending_saves_and_names_the_resume_step(
    tiny_config, tmp_path, monkeypatch):
  write = training_log.MetricsLog.write

  def interrupted_at_step_20(self, step, *args, **kwargs):
    if step == 20:
      raise KeyboardInterrupt
    write(self, step, *args, **kwargs)

  monkeypatch.setattr(training_log.MetricsLog, "write", interrupted_at_step_20)
  with pytest.raises(KeyboardInterrupt, match="last good checkpoint is at step 10"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  monkeypatch.undo()
  assert train.train_and_evaluate(tiny_config, str(tmp_path))["eval_split"] == "test"


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


def test_second_launcher_is_refused_naming_the_holder(tiny_config, tmp_path):
  with locks.lock([str(tmp_path)]):
    with pytest.raises(locks.Locked, match=rf"in use by pid {os.getpid()} on host"):
      train.train_and_evaluate(tiny_config, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == [locks.LOCK_FILE]


@pytest.mark.slow
def test_the_lock_of_a_killed_launcher_does_not_block(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from softvq_jax.launch import locks\n"
       f"with locks.lock([{str(tmp_path)!r}]):\n print('held', flush=True)\n"
       " time.sleep(600)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(locks.Locked, match=f"pid {holder.pid}"):
    with locks.lock([str(tmp_path)]):
      pass
  holder.kill()
  holder.wait()
  with locks.lock([str(tmp_path)]):
    pass


def test_a_sweep_skips_the_points_another_launcher_holds(tmp_path):
  base = digits.get_config("quick")
  points = [runs.point("raw", seed) for seed in (0, 1)]
  with locks.lock([str(tmp_path / "raw" / "seed_1")]):
    failed = sweep.run(base, points, str(tmp_path), quick=True)
  assert failed == ["raw/seed_1"]
  assert (tmp_path / "raw" / "seed_0" / "eval.json").exists()
  assert not (tmp_path / "raw" / "seed_1" / "eval.json").exists()


def test_sweep_command_line_overrides_win_over_presets():
  point = digits.get_sweep("table1")[1]  # The ae row: its preset sets num_steps.
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
    ("model.bottleneck", "vq", True),  # The rows' presets set it: every row would be VQ.
    ("model.beta", 2.0, True),
    ("train.num_steps", 300, False),  # Every digits row trains 3000 steps: shortens all.
    ("eval.figures", False, False),
])
def test_a_sweep_refuses_overrides_of_keys_its_rows_set_differently(tmp_path, key, value,
                                                                   refused):
  base = digits.get_config()
  runs.apply_overrides(base, {key: value})
  plan = lambda: sweep.plan(base, digits.get_sweep("table1"), str(tmp_path),
                            command_line={key: value})
  if refused:
    with pytest.raises(InputError, match=rf"--config.{key} is set per row by this sweep"):
      plan()
  else:
    assert {launch.config[key] for launch in plan()} == {value}
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("overrides,match", [
    ({"seed": -1}, r"config.seed=-1 is not valid"),
    ({"model.mlp_hidden": (256, -3)}, r"config.model.mlp_hidden=\(256, -3\)"),
    ({"model.cnn_channels": ()}, r"config.model.cnn_channels=\(\) is not valid"),
    ({"train.learning_rate": float("inf")}, r"learning_rate=inf is not valid; it must be "
     "finite"),
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


def test_workdir_that_is_a_file_is_refused(tiny_config, tmp_path):
  path = tmp_path / "a_file"
  path.write_text("mine")
  with pytest.raises(InputError, match="is a file, not a directory"):
    train.train_and_evaluate(tiny_config, str(path))
  assert path.read_text() == "mine"


@pytest.mark.parametrize("plant,match", [
    (lambda w: (w / "checkpoints").write_text("x"), r"checkpoints should be a directory"),
    (lambda w: (w / "config.json").mkdir(), r"config.json should be a file"),
    (lambda w: os.symlink(w.parent / "victim", w / ".lock"), r".lock should be a file, not a "
     "symlink"),
    (lambda w: (w / "config.json").write_text("{torn"), r"config.json is not valid JSON"),
])
def test_workdir_entries_of_the_wrong_kind_are_refused_before_any_write(
    tiny_config, tmp_path, plant, match):
  (tmp_path / "victim").write_text("precious")
  run = tmp_path / "run"
  run.mkdir()
  plant(run)
  before = files(tmp_path)
  with pytest.raises(InputError, match=match):
    train.train_and_evaluate(tiny_config, str(run))
  assert files(tmp_path) == before


def test_a_dangling_symlink_workdir_is_refused(tiny_config, tmp_path):
  os.symlink(tmp_path / "gone", tmp_path / "run")
  with pytest.raises(InputError, match="is a symlink to .*gone, which does not exist"):
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"))


def test_the_lock_never_follows_a_symlink(tmp_path):
  (tmp_path / "victim").write_text("precious")
  os.symlink(tmp_path / "victim", tmp_path / locks.LOCK_FILE)
  with pytest.raises(InputError, match="cannot be the workdir's lock"):
    with locks.lock([str(tmp_path)]):
      pass
  assert (tmp_path / "victim").read_text() == "precious"


def test_unwritable_workdir_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(validation.os, "access", lambda path, mode: path != str(tmp_path))
  with pytest.raises(InputError, match=f"{tmp_path} is not writable"):
    validation.validate_workdir(str(tmp_path / "new" / "run"))


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


def test_resuming_on_another_device_count_warns(tmp_path, caplog):
  state = steps.TrainState(step=jnp.full((1,), 10, jnp.int32),
                           params={"w": jnp.ones((1, 3))}, opt_state={}, model_state={})
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


@pytest.mark.parametrize("argv,line", [
    (["--config.train.num_step=5"],
     "error: --config: the config has no key 'num_step'; did you mean 'num_steps'?"),
    (["--config.modl.beta=1"],
     "error: --config: the config has no key 'modl'; did you mean 'model'?"),
    (["--config.train.num_steps=abc"],
     "error: flag --config.train.num_steps=abc: invalid literal for int() with base 10: "
     "'abc'"),
    (["--config=configs/digits.py:nope"], "error: ValueError: unknown preset 'nope'"),
    (["--config=configs/missing.py"],
     "error: --config: [Errno 2] No such file or directory: 'configs/missing.py'"),
    (["--config={broken}"], "error: --config: SyntaxError: invalid syntax"),
    (["--config={exits}"], "error: --config: the config file called sys.exit(0) while it "
     "loaded"),
    (["--config={none}"], "error: --config: get_config() returned None, not a ConfigDict"),
])
def test_bad_flags_are_one_line_and_status_2(argv, line, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  files_ = {"broken": "def get_config(:\n",
            "exits": "import sys\ndef get_config():\n  sys.exit(0)\n",
            "none": "def get_config():\n  return None\n"}
  for name, text in files_.items():
    (tmp_path / f"{name}.py").write_text(text)
  argv = [a.format(**{name: tmp_path / f"{name}.py" for name in files_}) for a in argv]
  if not any(a.startswith("--config=") for a in argv):
    argv = ["--config=configs/digits.py"] + argv
  flag_values = flags.FlagValues()
  # As at import time of main: the flag reads sys.argv for its override flags.
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True, sys_argv=["main", *argv])
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_flags(["main", *argv], flag_values)
  assert exit_info.value.code == cli.EXIT_INPUT
  err = capsys.readouterr().err
  assert err.startswith(line) and err.count("\n") == 1, err


@pytest.mark.parametrize("error,status,prefix", [
    (InputError("bad value"), cli.EXIT_INPUT, "error: bad value"),
    (FloatingPointError("non-finite"), cli.EXIT_STOPPED, "error: non-finite"),
    (RunStopped("disk"), cli.EXIT_STOPPED, "error: disk"),
    (OSError(errno.ENOSPC, "No space left on device"), cli.EXIT_STOPPED,
     "error: [Errno 28] No space left on device; nothing written before it is lost"),
    (KeyboardInterrupt("stopped by Ctrl-C. The last good checkpoint is at step 300"),
     cli.EXIT_INTERRUPTED, "interrupted: stopped by Ctrl-C. The last good checkpoint"),
    (signals.Terminated("stopped by SIGTERM. The last good checkpoint is at step 300"),
     cli.EXIT_TERMINATED, "terminated: stopped by SIGTERM. The last good checkpoint"),
    (InputError("workdir /tmp/a\nb is a file"), cli.EXIT_INPUT,
     "error: workdir /tmp/a b is a file"),
    (MemoryError("cannot allocate"), cli.EXIT_STOPPED, "error: out of memory (MemoryError"),
])
def test_errors_end_in_one_line_with_their_status(error, status, prefix, capsys):
  def main(argv):
    del argv
    raise error

  with pytest.raises(SystemExit) as exit_info:
    cli.guard(main)(["main"])
  assert exit_info.value.code == status
  err = capsys.readouterr().err
  assert err.startswith(prefix) and err.count("\n") == 1, err


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


def test_signals_in_a_deferred_block_arrive_at_its_end():
  reached_the_end = []
  with pytest.raises(KeyboardInterrupt):
    with signals.deferred():
      signal.raise_signal(signal.SIGINT)
      reached_the_end.append(True)  # A save here is never cut short.
  assert reached_the_end == [True]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_dropped_interrupt_is_raised_again_by_check(monkeypatch):
  monkeypatch.setattr(signals, "_received", [])
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    signals.install()

    class DropsIt:  # Python drops what a __del__ raises, as in a gc callback.
      def __del__(self):
        signal.raise_signal(signal.SIGTERM)

    DropsIt()
    with pytest.raises(signals.Terminated, match="stopped by SIGTERM"):
      signals.check()
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


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


@pytest.mark.slow
@pytest.mark.parametrize("value,refused", [(1, False), (2, True)])
def test_key_added_after_a_run_matches_only_at_its_default(tiny_config, tmp_path, value,
                                                          refused):
  stored = workdir.config_dict(tiny_config)
  del stored["train"]["num_seeds"]  # As written before the key existed.
  workdir.write_json(str(tmp_path / workdir.CONFIG_FILE), stored)
  tiny_config.train.num_seeds = value
  if refused:
    with pytest.raises(InputError, match="train.num_seeds: absent in the workdir, 2 now"):
      workdir.check(tiny_config, str(tmp_path))
  else:
    assert workdir.check(tiny_config, str(tmp_path)) is None


@pytest.mark.slow
def test_written_files_have_the_umask_mode_not_mkstemps(tmp_path):
  umask = os.umask(0o022)
  try:
    workdir.write_json(str(tmp_path / "eval.json"), {"a": 1})
    training_log.MetricsLog(str(tmp_path), 0).close()
  finally:
    os.umask(umask)
  for name in ("eval.json", training_log.METRICS_FILE):
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


@pytest.mark.slow
@pytest.mark.parametrize("start_step,kept", [(20, [10, 20]), (10, [10]), (0, [])])
def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path, start_step, kept):
  lines = [json.dumps({"step": s, "loss": 1.0}) for s in (10, 20, 30)]
  (tmp_path / training_log.METRICS_FILE).write_text("\n".join(lines[:2]) + '\n{"step": 45')
  training_log.MetricsLog(str(tmp_path), start_step).close()
  records = [json.loads(line) for line in open(tmp_path / training_log.METRICS_FILE)]
  assert [r["step"] for r in records] == kept
