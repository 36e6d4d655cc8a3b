"""What a workdir holds: entries of the wrong kind are refused before any write, configs of older
runs match at their keys' old defaults, files are written with the umask's mode."""

import os

import pytest

from softvq_jax.errors import InputError
from softvq_jax.launch import train
from softvq_jax.launch import training_log
from softvq_jax.launch import workdir
from tests import snapshot


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
  before = snapshot(tmp_path)
  with pytest.raises(InputError, match=match):
    train.train_and_evaluate(tiny_config, str(run))
  assert snapshot(tmp_path) == before


def test_a_dangling_symlink_workdir_is_refused(tiny_config, tmp_path):
  os.symlink(tmp_path / "gone", tmp_path / "run")
  with pytest.raises(InputError, match="is a symlink to .*gone, which does not exist"):
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"))


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
