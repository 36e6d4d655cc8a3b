"""``experiments/gpu_check.py --smoke``: every part runs tiny on the CPU and
reports, so that the GPU command is known to work before a GPU is lent."""

import importlib.util
import json
import subprocess
import sys

import pytest

from experiments.common import parts
from tests import ROOT

PARTS = ("table1", "training", "cifar10", "torch", "quantizers", "large_k", "tests")
TORCH_PARTS = ("torch", "quantizers")  # Need torch (and LVQ) in --torch_python.


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_part(tmp_path):
  out = tmp_path / "smoke.jsonl"
  # Alone the parts take 5-15 s each; beside the rest of the suite on 2 cores
  # the sweep has taken over --smoke's 90 s, so the test checks that every
  # part works, under budgets that leave room for the load.
  budgets = ",".join(f"{part}=240" for part in PARTS)
  subprocess.run([sys.executable, "-m", "experiments.gpu_check", "--smoke", f"--out={out}",
                  f"--budgets={budgets}"], cwd=ROOT, check=True, capture_output=True,
                 timeout=1200)
  records = [json.loads(line) for line in out.read_text().splitlines()]
  status = {r["part"]: r["status"] for r in records if "status" in r}
  has_torch = importlib.util.find_spec("torch") is not None
  for part in PARTS:
    expected = "done" if has_torch or part not in TORCH_PARTS else "failed (1)"
    assert status[part] == expected, (part, status)
  figures = lambda part: [r for r in records if r["part"] == part and "status" not in r]
  assert any(r["name"].endswith("_seeds3_ms_per_step") for r in figures("training"))
  assert any(r["name"].startswith("cifar10_cnn") for r in figures("cifar10"))
  assert any(r.get("framework") == "jax" for r in figures("quantizers"))
  runs = [r for r in figures("table1") if "run" in r]  # Shard 1 of 8: the ae row.
  assert sorted(r["run"] for r in runs) == [f"ae/seed_{s}" for s in range(3)]
  assert all(r["compile_seconds"] > 0 for r in runs)
  table = json.loads((tmp_path / "smoke_table1.json").read_text())
  assert table["protocol"]["launcher_seconds"] > 0 and len(table["rows"]) == 1


def test_a_part_over_its_budget_is_cut_and_the_next_still_runs(tmp_path):
  out = parts.Output(str(tmp_path / "cut.jsonl"))
  sleeper = parts.Part("slow", [sys.executable, "-c",
                                    "import time; print('{\"x\": 1}', flush=True); time.sleep(60)"])
  assert parts.run_part(sleeper, 1.0, out) == "cut"
  quick = parts.Part("quick", [sys.executable, "-c", "print('{\"y\": 2}')"])
  assert parts.run_part(quick, 30.0, out) == "done"
  records = [json.loads(line) for line in (tmp_path / "cut.jsonl").read_text().splitlines()]
  assert records[0] == {"part": "slow", "x": 1}
  assert records[1]["status"] == "cut" and records[1]["seconds"] < 10
  assert records[2:] == [{"part": "quick", "y": 2}, {**records[3], "status": "done"}]
