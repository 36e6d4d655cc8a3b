"""One launcher at a time per workdir: a second is refused naming the holder, a killed holder
blocks nothing, and the lock never follows a symlink."""

import os
import subprocess
import sys

import pytest

from softvq_jax.errors import InputError
from softvq_jax.launch import locks
from softvq_jax.launch import train
from tests import ROOT


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


def test_the_lock_never_follows_a_symlink(tmp_path):
  (tmp_path / "victim").write_text("precious")
  os.symlink(tmp_path / "victim", tmp_path / locks.LOCK_FILE)
  with pytest.raises(InputError, match="cannot be the workdir's lock"):
    with locks.lock([str(tmp_path)]):
      pass
  assert (tmp_path / "victim").read_text() == "precious"
