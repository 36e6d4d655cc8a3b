"""Killed and restarted runs, and which stored configs count as the same run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from softvq_jax import metrics
from softvq_jax import workdir
from softvq_jax.errors import InputError

pytestmark = pytest.mark.slow  # Launchers in subprocesses, several processes.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ("--config=configs/digits.py", "--config.model.mlp_hidden=(64, 64)",
        "--config.train.num_steps=900", "--config.train.log_every=100",
        "--config.train.checkpoint_every=300", "--config.eval.figures=False",
        "--config.eval.kmeans_inits=5", "--config.eval.probe_steps=500")


def command(workdir):
  return [sys.executable, "-m", "softvq_jax.main", *ARGS, f"--workdir={workdir}"]


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


def test_written_files_have_the_umask_mode_not_mkstemps(tmp_path):
  umask = os.umask(0o022)
  try:
    workdir.write_json(str(tmp_path / "eval.json"), {"a": 1})
    metrics.MetricsLog(str(tmp_path), 0).close()
  finally:
    os.umask(umask)
  for name in ("eval.json", metrics.METRICS_FILE):
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize("start_step,kept", [(20, [10, 20]), (10, [10]), (0, [])])
def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path, start_step, kept):
  lines = [json.dumps({"step": s, "loss": 1.0}) for s in (10, 20, 30)]
  (tmp_path / metrics.METRICS_FILE).write_text("\n".join(lines[:2]) + '\n{"step": 45')
  metrics.MetricsLog(str(tmp_path), start_step).close()
  records = [json.loads(line) for line in open(tmp_path / metrics.METRICS_FILE)]
  assert [r["step"] for r in records] == kept
