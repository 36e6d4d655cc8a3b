"""The launchers' persistent compilation cache, and the compile time they record."""

import json
import os
import subprocess
import sys
import threading

import jax
import pytest

from softvq_jax.launch import compilation
from tests import ROOT


@pytest.mark.slow
def test_a_second_identical_launch_loads_its_programs_from_the_cache(tmp_path):
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
  timings = []
  for name in ("first", "second"):
    subprocess.run([sys.executable, "-m", "softvq_jax.main", "--config=configs/digits.py:quick",
                    "--config.eval.figures=False", f"--workdir={tmp_path / name}"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    timings.append(json.loads((tmp_path / name / "timing.json").read_text()))
    assert os.listdir(tmp_path / "cache")
  first, second = (t["compile_seconds"] for t in timings)
  assert 0 < second < first / 3, (first, second)
  assert ((tmp_path / "first" / "eval.json").read_bytes()
          == (tmp_path / "second" / "eval.json").read_bytes())


def test_seconds_add_up_compiles_within_the_block_in_its_thread():
  with compilation.Seconds() as compile_time:
    # An evaluation compiling in a worker thread meanwhile is not counted.
    worker = threading.Thread(target=lambda: jax.jit(lambda x: x * 7).lower(1.0).compile())
    worker.start()
    worker.join()
    assert compile_time.total == 0
    jax.jit(lambda x: x * 3 + 1).lower(1.0).compile()
  assert compile_time.total > 0
  before = compile_time.total
  jax.jit(lambda x: x * 5 - 2).lower(1.0).compile()
  assert compile_time.total == before


def test_an_unwritable_cache_folder_leaves_the_cache_off(tmp_path):
  (tmp_path / "a_file").write_text("")
  assert compilation.enable_cache(str(tmp_path / "a_file" / "cache")) is None
