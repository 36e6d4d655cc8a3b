"""Several processes on 127.0.0.1 through JAX's runtime, against one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from softvq_jax.errors import InputError
from softvq_jax.launch import distributed

pytestmark = pytest.mark.slow  # Launchers in subprocesses, several processes.

from tests import ROOT

ARGS = ("--config=configs/digits.py", "--config.model.mlp_hidden=(64, 64)",
        "--config.train.num_steps=100", "--config.train.log_every=25",
        "--config.train.checkpoint_every=50", "--config.eval.figures=False",
        "--config.eval.kmeans_inits=3", "--config.eval.probe_steps=200")


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices):
  # One thread per process: several processes share the test machine's cores.
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
              "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def start(module, args, num_processes=2, devices=2, port=None):
  """The same command in each of ``num_processes`` processes."""
  port = port or free_port()
  return [subprocess.Popen(
      [sys.executable, "-m", module, *args, "--distributed", "--heartbeat_timeout=5",
       f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
       f"--process_id={i}"], cwd=ROOT, env=env(devices), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(num_processes)]


def finish(processes, timeout=240):
  outputs = [p.communicate(timeout=timeout) for p in processes]
  return [p.returncode for p in processes], [err for _, err in outputs]


def restore(run_dir, step):
  """A run's checkpoint (saved over 4 devices), as arrays on this one device."""
  path = os.path.join(run_dir, "checkpoints", str(step), "default")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  return checkpointer.restore(path, target)


def test_two_processes_match_one_and_resume_after_a_kill(tmp_path):
  """2 processes x 2 devices, one killed mid-run and the pair rerun, give the
  eval.json and checkpoints of 1 process x 4 devices, to float rounding.

  Uninterrupted, 300 steps on 2 processes are bit-identical to 1 process;
  the resumed pair may differ in the last digits (about 1e-6 relative in a
  step-300 checkpoint). Over longer runs the cross-process all-reduce,
  summing in another order, makes the losses drift apart by about 1e-5
  relative (from step 500 on in a 900-step run).
  """
  reference, killed = tmp_path / "one", tmp_path / "two"
  single = subprocess.run([sys.executable, "-m", "softvq_jax.main", *ARGS,
                           f"--workdir={reference}"], cwd=ROOT, env=env(4),
                          capture_output=True, text=True, timeout=240)
  assert single.returncode == 0, single.stderr[-2000:]
  processes = start("softvq_jax.main", [*ARGS, f"--workdir={killed}"])
  deadline = time.time() + 180
  while not (killed / "checkpoints" / "50").exists() and time.time() < deadline:
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGKILL)
  t0 = time.time()
  codes, errors = finish(processes)
  assert codes[0] != 0 and time.time() - t0 < 60  # Stopped by the heartbeat, no hang.
  # JAX's heartbeat ("another task died"), or the collective that lost its
  # peer first: on the terminal, or in the library log the last line names.
  log = killed / "library.log"
  said = errors[0] + (log.read_text() if log.exists() else "")
  assert "another task died" in said or "the runtime failed in steps" in said, said[-3000:]
  assert not (killed / "eval.json").exists(), "the run finished before it was killed"
  codes, errors = finish(start("softvq_jax.main", [*ARGS, f"--workdir={killed}"]))
  assert codes == [0, 0], errors[0][-2000:] + errors[1][-2000:]
  results = [json.loads((run / "eval.json").read_text()) for run in (reference, killed)]
  assert results[1]["eval_split"] == results[0]["eval_split"]
  for key, tolerance in (("clustering_acc", 0.5), ("probe_acc", 0.5), ("nmi", 0.01)):
    assert results[1][key] == pytest.approx(results[0][key], abs=tolerance)
  logs = [[json.loads(line) for line in open(run / "metrics.jsonl")]
          for run in (reference, killed)]
  assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]
  for a, b in zip(*logs):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
  assert sorted(os.listdir(killed / "checkpoints")) == ["100", "50"]
  a, b = restore(reference, 100), restore(killed, 100)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_sweep_runs_one_family_across_two_processes(tmp_path):
  args = ["--config=configs/digits.py:quick", "--sweep=table1", f"--workdir={tmp_path}",
          "--config.model.mlp_hidden=(16,)", "--config.eval.figures=False",
          "--config.train.num_steps=20"]
  # Shard 2 of 8 of the digits table1 is the vae family: seeds 0, 1, 2 vmapped.
  codes, errors = finish(start("softvq_jax.sweep", [*args, "--num_shards=8", "--shard=2"]))
  assert codes == [0, 0], errors[0][-2000:] + errors[1][-2000:]
  assert sorted(os.listdir(tmp_path / "vae")) == ["seed_0", "seed_1", "seed_2"]
  for seed in range(3):
    timing = json.loads((tmp_path / "vae" / f"seed_{seed}" / "timing.json").read_text())
    assert timing["devices"] == 4 and timing["runs_trained_together"] == 3
  table = json.loads((tmp_path / "table1.json").read_text())
  assert [(row["model"], row["seeds"]) for row in table["rows"]] == [("vae", [0, 1, 2])]


def test_processes_with_different_configs_stop_before_any_work(tmp_path):
  port = free_port()
  processes = [subprocess.Popen(
      [sys.executable, "-m", "softvq_jax.main", "--config=configs/digits.py:quick",
       f"--config.seed={i}", f"--workdir={tmp_path}", "--distributed",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  codes, errors = finish(processes)
  assert codes == [2, 2]
  for err in errors:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == ["error: processes [1] were started with another config and workdir "
                     "than process 0; start every process with the same command"]
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flags,environ,expected", [
    ({}, {}, distributed.Cluster()),
    ({"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}, {},
     distributed.Cluster("10.0.0.1:1234", 4, 3)),
    ({"process_id": 1}, {"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "2",
                         "JAX_PROCESS_ID": "0"}, distributed.Cluster("h:9", 2, 1)),
    ({}, {"JAX_NUM_PROCESSES": "8", "JAX_PROCESS_ID": ""}, distributed.Cluster(None, 8, None)),
])
def test_flags_then_environment_then_auto_detection(flags, environ, expected):
  assert distributed.resolve(flags, environ) == expected


@pytest.mark.parametrize("flags,environ,message", [
    ({"num_processes": 2, "process_id": 2}, {}, r"--process_id=2 .* in \[0, 2\)"),
    ({"process_id": -1}, {}, r"--process_id=-1 .* >= 0"),
    ({"num_processes": 0}, {}, "--num_processes=0 is not valid"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, r"\$JAX_NUM_PROCESSES='two' is not an integer"),
    ({"coordinator_address": "localhost"}, {}, "give host:port"),
])
def test_bad_cluster_values(flags, environ, message):
  with pytest.raises(InputError, match=message):
    distributed.resolve(flags, environ)


def test_a_bad_process_id_is_one_line_before_any_work(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "softvq_jax.main", "--config=configs/digits.py:quick",
       f"--workdir={tmp_path / 'run'}", "--distributed", "--coordinator_address=127.0.0.1:1",
       "--num_processes=2", "--process_id=2"],
      cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert [l for l in result.stderr.splitlines() if l.startswith("error:")] == [
      "error: --process_id=2 is not valid; it must be in [0, 2)"]
  assert not (tmp_path / "run").exists()
