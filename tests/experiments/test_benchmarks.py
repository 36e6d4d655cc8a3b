"""The benchmarks of experiments/benchmarks/ run end to end on tiny inputs (without torch)."""

import gzip
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.manifold

from experiments.benchmarks import guard_cost
from experiments.common import chunks
from experiments.common import tsne_scores
from tests import ROOT


def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(n).to_bytes(4, "big") for n in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_quantizer_benchmark_writes_its_table(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 256), ("t10k", 100)):
    _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
  out = tmp_path / "bench"
  subprocess.run([sys.executable, "-m", "experiments.benchmarks.quantizer_benchmark", "--steps=55",
                  "--batch_size=8", "--seeds=0", "--quantizers=vq_ema,fsq",
                  f"--mnist_dir={tmp_path}", f"--out={out}"],
                 cwd=ROOT, check=True, capture_output=True, timeout=600)
  *records, environment = [json.loads(line) for line in open(f"{out}.jsonl")]
  assert set(environment["environment"]["versions"]) >= {"jax", "jaxlib", "flax", "optax"}
  assert [r["quantizer"] for r in records] == ["vq_ema", "fsq"]
  for record in records:
    assert 0 < record["test_usage"] <= 1 and np.isfinite(record["test_mse"])
  assert "| fsq | jax |" in open(f"{out}.md").read()


@pytest.mark.slow
def test_large_k_benchmark_writes_its_table(tmp_path):
  out = tmp_path / "large_k"
  subprocess.run([sys.executable, "-m", "experiments.benchmarks.large_k_benchmark",
                  "--sizes=64x96x8", "--chunk_size=32", "--repeats=1", f"--out={out}"],
                 cwd=ROOT, check=True, capture_output=True, timeout=600)
  *records, environment = [json.loads(line) for line in open(f"{out}.jsonl")]
  assert set(environment["environment"]["versions"]) >= {"jax", "jaxlib", "flax", "optax"}
  assert {r["module"] for r in records} == {"VectorQuantizer", "SoftVectorQuantizer"}
  assert all(r["chunked_ms"] > 0 and r["chunked_temp_gib"] <= r["dense_temp_gib"] for r in records)


@pytest.mark.slow
def test_guard_cost_times_the_variants_it_is_given(tmp_path):
  """Two of the variants (compiling all eleven takes a minute and a half here)."""
  names = guard_cost.variant_names()
  assert {f"guard_{g}_runs1" for g in ("gradients", "loss", "none")} <= set(names)
  assert {f"{part}_{runs_together}3" for part in ("forward", "forward_backward", "adam")
          for runs_together in ("vmap", "loop")} <= set(names)
  out = tmp_path / "guard_cost.jsonl"
  command = [sys.executable, "-m", "experiments.benchmarks.guard_cost", "--steps=2",
             "--repeats=1", f"--out={out}"]
  refused = subprocess.run(command + ["--variants=adam_vmap9"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
  assert refused.returncode != 0 and "--variants: unknown ['adam_vmap9']" in refused.stderr
  assert not out.exists()
  subprocess.run(command + ["--variants=guard_none_runs1,adam_loop3"], cwd=ROOT, check=True,
                 capture_output=True, timeout=600)
  *records, environment = [json.loads(line) for line in open(out)]
  assert "versions" in environment["environment"]
  assert [r["name"] for r in records] == ["guard_none_runs1_ms_per_step_per_run",
                                          "adam_loop3_ms_per_step_per_run"]
  assert all(r["value"] > 0 for r in records)


@pytest.mark.slow
def test_nearest_search_agrees_with_argmin_and_writes_its_table(tmp_path):
  out = tmp_path / "search"
  subprocess.run([sys.executable, "-m", "experiments.benchmarks.nearest_search",
                  "--num_latents=50", "--num_codewords=7", "--dim=3", "--calls=2",
                  "--repeats=1", f"--out={out}"],
                 cwd=ROOT, check=True, capture_output=True, timeout=300)
  *records, environment = [json.loads(line) for line in open(f"{out}.jsonl")]
  assert "versions" in environment["environment"]
  assert [r["search"] for r in records] == ["distances_only", "argmin", "two_reductions",
                                            "top_k", "nearest_indices"]
  assert all(r["ms"] > 0 for r in records)
  assert all(r["same_as_argmin"] for r in records[2:])


def test_tsne_timing_times_and_scores_an_embedding():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 20)
  x = rng.normal(size=(60, 4)) + 5 * labels[:, None]
  embed = lambda x, seed: sklearn.manifold.TSNE(2, perplexity=15, random_state=seed).fit_transform(x)
  record = tsne_scores.measure(embed, x, labels, repeats=1)
  assert record["num_points"] == 60 and record["seconds"] > 0
  # Three clusters five standard deviations apart stay apart.
  assert record["knn10_accuracy"] > 0.9 and record["trustworthiness"] > 0.8
  shuffled = tsne_scores.shows(x, labels, rng.normal(size=(60, 2)))
  assert shuffled["knn10_accuracy"] < 0.7 and shuffled["trustworthiness"] < 0.8


@pytest.mark.slow
def test_chunk_programs_build_the_runs_and_a_chunk_per_step_count(tiny_config):
  """The benchmarks' programs: two soft VQ runs, each with its own noise level."""
  state, rngs, scalars, programs = chunks.chunk_programs(
      tiny_config, jnp.zeros((1, 8, 8, 1)), 2, (1, 3), pixel_var=0.1, swept="noise_std")
  assert len(programs) == 2 and rngs.shape == (2,)
  np.testing.assert_allclose(scalars["noise_std"], [0.0, 0.07])
  images = jnp.asarray(np.random.default_rng(0).random((64, 8, 8, 1), np.float32))
  (trained, metrics), finite = programs[1](state, images, rngs, scalars)
  assert finite and metrics["loss"].shape == (2, 3)
  np.testing.assert_array_equal(trained.step, [3, 3])
  assert not np.array_equal(metrics["loss"][0], metrics["loss"][1])
