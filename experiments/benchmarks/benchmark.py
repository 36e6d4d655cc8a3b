"""Speed of the training path, the soft-quantize kernel and the evaluation.

  python -m experiments.benchmarks.benchmark --quick        # about a minute
  python -m experiments.benchmarks.benchmark --out=experiments/results/benchmark_<machine>.jsonl

Prints one JSON object per line, ``{"name", "value", "unit"}``:
* ``matmul_peak_gflops``: the best float32 matmul throughput JAX reaches here;
* ``mnist_mlp_<bottleneck>_b32_ms_per_step``: the paper's MNIST MLP at batch
  32 on the launcher's own jitted, scanned ``steps.train_chunk`` (with the
  cheap NaN guard that a finite chunk runs), at steady
  state; ``..._seeds<N>_ms_per_step`` and ``..._ms_per_step_per_seed``: N = 3
  (a Table 1 row) and 21 (``--quick``: 3 alone) seeds vmapped
  (``steps.over_runs``, ``train.num_seeds``), and
  ``..._noise_std8_ms_per_step_per_run``: 8 noise levels vmapped
  (``train.vmap_key``); each with ``..._flops_fraction``, the model FLOP/s
  (from XLA's cost analysis) divided by the matmul peak, ``..._mib_moved_per_step``
  (XLA's bytes accessed; for a single run it counts both branches of the NaN
  guard's cond, an upper bound) and, for vmapped runs,
  ``..._roofline_fraction``: the roofline time max(FLOPs / matmul peak,
  bytes / ``memory_bandwidth_gbs``) over the measured time;
* ``<bottleneck>_layer_b32_ms``: the bottleneck layer's forward and gradient
  alone on a batch of 32 trunk outputs, the per-bottleneck part of a step;
* ``mnist_mlp_adam_update_ms``: the Adam update alone on the MLP's
  ``mnist_mlp_params`` parameters, the memory-bound part of a step;
* ``soft_quantize_n<N>_k<K>_d<d>_{ms,temp_mib}`` and ``..._matmuls_ms``: the
  forward-and-gradient time and peak temporary memory of ``soft_quantize``,
  and the time of its two matmuls alone (z C^T then P C, forward and gradient);
* ``soft_quantize{,_chunked}_k<K>_d256_{ms,temp_mib}``: the dense and the
  streaming (``streaming.soft_quantize_chunked``, chunks of 1024) soft quantizer,
  forward and gradient with a per-codeword variance: time at N = 4096 and
  compiled temporaries at N = 65536;
* ``{vector,soft_vector}_quantizer_32x16x16x256_k8192_{float32,bfloat16}_ms``:
  ``quantizers.VectorQuantizer`` / ``SoftVectorQuantizer`` forward and gradient
  on a tokenizer's latent grid;
* ``mnist_eval_<backend>_seconds``: the evaluation suite at MNIST size
  (K-means with 100 initialisations on 10000 x 64, probe on 60000 x 64,
  30000 steps) with each ``eval.kmeans_backend``, and
  ``mnist_kmeans_<backend>_seconds`` for its K-means alone (JAX: the second
  call, compiled).

* ``load_<dataset>_<source>_seconds``: ``input_pipeline.load`` of a whole
  dataset into scaled float32 arrays: real MNIST from the official files
  (``--mnist_dir``, md5 check on and off), CIFAR-10-sized binary files
  (60000 random records written to a temporary folder), and tfds's prepared
  array_record data where ``--tfds_data_dir`` holds it.

* ``torch_mnist_mlp_soft_vq_b32_{eager,compiled}_<device>_ms_per_step``: the
  same soft VQ-VAE step in PyTorch (``experiments/benchmarks/torch_reference.py``), eager
  and ``torch.compile``d, on the GPU if torch sees one, run by
  ``--torch_python`` (the project does not depend on torch; a separate
  virtualenv with ``pip install torch==2.13.0`` will do); with the training
  or the runs_together part, ``..._over_ours``: its time over the same run's
  JAX step alone (``mnist_mlp_soft_vq_b32_ms_per_step``, else
  ``..._alone_ms_per_step_per_run``).

* ``mnist_mlp_soft_vq_b32_{alone,vmap<N>,loop<N>}_ms_per_step_per_run``
  (``--parts=runs_together``): N = 3 and 8 soft VQ-VAE runs trained in one
  program, vmapped or looped (``train.runs_together``), per run, beside one
  run alone.

``--parts`` runs a subset: training, runs_together, kernels, quantizers,
evaluation, loading, torch.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import chunks
from experiments.common import jsonl
from experiments.common.timing import best_time
from softvq_jax import evaluation
from softvq_jax import quantizers
from softvq_jax.data import input_pipeline
from softvq_jax.errors import InputError
from softvq_jax.launch import presets
from softvq_jax.launch import steps as steps_lib
from softvq_jax.model import autoencoder
from softvq_jax.quantizers import functional
from softvq_jax.quantizers import streaming

flags.DEFINE_bool("quick", False, "Fewer repeats and a smaller kernel grid.")
flags.DEFINE_string("out", None, "Also write the JSON lines to this file.")
flags.DEFINE_list("parts", ["training", "runs_together", "kernels", "quantizers", "evaluation",
                            "loading", "torch"],
                  "Which parts to run.")
flags.DEFINE_string("mnist_dir", "../shared/datasets/mnist",
                    "The official MNIST files, for the loading part.")
flags.DEFINE_string("torch_python", sys.executable,
                    "A Python with torch, for the torch part "
                    "(experiments/benchmarks/torch_reference.py).")
flags.DEFINE_string("tfds_data_dir", None,
                    "A tfds data_dir with prepared mnist / cifar10, for the loading part.")
FLAGS = flags.FLAGS
BOTTLENECKS = ("none", "vae", "info_dropout", "vq", "soft_vq")


def emit(lines, name, value, unit):
  jsonl.emit(lines, {"name": name, "value": round(float(value), 4), "unit": unit})


def cost(jitted, *args):
  """XLA's cost analysis of the compiled program: (FLOPs, bytes accessed)."""
  analysis = jitted.lower(*args).compile().cost_analysis()
  return analysis["flops"], analysis["bytes accessed"]


def memory_bandwidth(lines, repeats):
  """Best streaming bandwidth JAX reaches: a + b on 64 MiB arrays (3 x 64 MiB
  moved) on the CPU, 1 GiB on an accelerator, where 64 MiB take a few
  microseconds and the launch would dominate (an H100 read 1 TB/s of its
  3.35 on 64 MiB)."""
  a = jnp.ones((2 ** (24 if jax.default_backend() == "cpu" else 28),), jnp.float32)
  seconds = best_time(jax.jit(lambda x, y: x + y), a, a, repeats=repeats)
  bandwidth = 3 * a.nbytes / seconds / 1e9
  emit(lines, "memory_bandwidth_gbs", bandwidth, "GB/s")
  return bandwidth


def matmul_peak(lines, repeats):
  best = 0.0
  for n in (512, 1024, 2048, 4096):
    a = jnp.ones((n, n), jnp.float32)
    fn = jax.jit(lambda x: x @ x)
    best = max(best, 2 * n ** 3 / best_time(fn, a, repeats=repeats) / 1e9)
  emit(lines, "matmul_peak_gflops", best, "GFLOP/s")
  return best


def mlp_program(bottleneck, num_runs, swept, step_counts, runs_together="vmap"):
  """The paper's MNIST MLP with ``bottleneck`` at batch 32: ``chunks.chunk_programs``."""
  config = presets.get_base_config()
  config.model.bottleneck = bottleneck
  return chunks.chunk_programs(config, jnp.zeros((1, 28, 28, 1)), num_runs, step_counts,
                               pixel_var=0.1, runs_together=runs_together, swept=swept)


def runs_together(lines, steps, repeats, run_counts):
  """Per-run ms per step of soft VQ-VAE runs trained in one program, vmapped
  and looped (``train.runs_together``), beside one run alone."""
  images = jnp.asarray(np.random.default_rng(0).random((60000, 28, 28, 1), np.float32))
  for num_runs in run_counts:
    for runs_together in steps_lib.RUNS_TOGETHER if num_runs > 1 else ("vmap",):
      state, rngs, scalars, (run,) = mlp_program("soft_vq", num_runs, "", (steps,), runs_together)
      seconds = best_time(run, state, images, rngs, scalars, repeats=repeats)
      name = "alone" if num_runs == 1 else f"{runs_together}{num_runs}"
      emit(lines, f"mnist_mlp_soft_vq_b32_{name}_ms_per_step_per_run",
           1000 * seconds / steps / num_runs, "ms")


def mlp_training(lines, peak, bandwidth, steps, repeats, run_counts):
  images = jnp.asarray(np.random.default_rng(0).random((60000, 28, 28, 1), np.float32))
  cases = ([(b, n, "") for b in BOTTLENECKS for n in run_counts]
           + [("soft_vq", 8, "noise_std")])
  for bottleneck, num_runs, swept in cases:
    state, rngs, scalars, (run, one_step) = mlp_program(bottleneck, num_runs, swept,
                                                        (steps, 1))
    seconds = best_time(run, state, images, rngs, scalars, repeats=repeats)
    per_step = seconds / steps / num_runs
    name = f"mnist_mlp_{bottleneck}_b32"
    if swept:
      name += f"_{swept}{num_runs}"
      emit(lines, name + "_ms_per_step_per_run", 1000 * per_step, "ms")
    elif num_runs > 1:
      name += f"_seeds{num_runs}"
      emit(lines, name + "_ms_per_step", 1000 * per_step * num_runs, "ms")
      emit(lines, name + "_ms_per_step_per_seed", 1000 * per_step, "ms")
    else:
      emit(lines, name + "_ms_per_step", 1000 * per_step, "ms")
    # XLA counts a scan's body once, so the costs come from a one-step program;
    # its gather would count the whole image array as read, so it gets 32 images.
    model_flops, moved = (x / num_runs for x in cost(one_step, state, images[:32], rngs,
                                                     scalars))
    emit(lines, name + "_flops_fraction", model_flops / per_step / 1e9 / peak, "fraction")
    emit(lines, name + "_mib_moved_per_step", moved / 2 ** 20, "MiB")
    if num_runs > 1:
      # The roofline: no faster than the FLOPs at the matmul peak or the memory
      # traffic at the streaming bandwidth. Only for vmapped runs: a single
      # run's NaN guard is a cond, whose both branches XLA's bytes count.
      roofline = max(model_flops / peak / 1e9, moved / bandwidth / 1e9)
      emit(lines, name + "_roofline_fraction", roofline / per_step, "fraction")


def bottleneck_layers(lines, steps, repeats):
  """Each bottleneck layer's forward and gradient alone, on a batch-32 trunk output.

  The per-bottleneck difference of a training step, without the shared MLP.
  """
  config = presets.get_base_config()
  h = jax.random.normal(jax.random.key(0), (32, config.model.mlp_hidden[-1]))
  for bottleneck in BOTTLENECKS:
    config.model.bottleneck = bottleneck
    layer = autoencoder.make_bottleneck(config.model)
    params = layer.init({"params": jax.random.key(1), "noise": jax.random.key(2)},
                        h, train=True)["params"]

    def loss(params, rng, layer=layer):
      out, aux = layer.apply({"params": params}, h, train=True, rngs={"noise": rng})
      return jnp.sum(out) + aux["loss"]

    def chunk(params, grad=jax.grad(loss)):
      keys = jax.random.split(jax.random.key(0), steps)
      return jax.lax.map(lambda rng: grad(params, rng), keys)
    seconds = best_time(jax.jit(chunk), params, repeats=repeats)
    emit(lines, f"{bottleneck}_layer_b32_ms", 1000 * seconds / steps, "ms")


def adam_update(lines, steps, repeats):
  """The optimizer's share of a step: Adam on the soft-VQ MLP's parameters.

  At batch 32 the update reads and writes every parameter and both moments
  each step, a memory-bound cost that vmapping seeds does not amortise.
  """
  config = presets.get_base_config()
  model = autoencoder.make_model(config.model, (28, 28, 1))
  optimizer = steps_lib.make_optimizer(config.train)
  state = steps_lib.init_state(jax.random.key(0), model, optimizer, jnp.zeros((1, 28, 28, 1)))
  grads = jax.tree.map(jnp.ones_like, state.params)

  def updates(params, opt_state):
    def body(carry, _):
      params, opt_state = carry
      update, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, update), opt_state), None
    return jax.lax.scan(body, (params, opt_state), None, length=steps)[0]
  seconds = best_time(jax.jit(updates), state.params, state.opt_state, repeats=repeats)
  emit(lines, "mnist_mlp_params", sum(x.size for x in jax.tree.leaves(state.params)), "count")
  emit(lines, "mnist_mlp_adam_update_ms", 1000 * seconds / steps, "ms")


def kernel_grid(lines, grid, repeats):
  rng = np.random.default_rng(0)
  for n, k, d in grid:
    z = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    codebook = jnp.asarray(rng.normal(size=(k, d)), jnp.float32)
    log_var = jnp.zeros((n, k), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    kernel = jax.jit(jax.grad(
        lambda z, c, v: jnp.sum(functional.soft_quantize(z, c, v)[0] * cotangent),
        argnums=(0, 1, 2)))
    matmuls = jax.jit(jax.grad(
        lambda z, c, v: jnp.sum(((z @ c.T + v) @ c) * cotangent), argnums=(0, 1, 2)))
    tag = f"soft_quantize_n{n}_k{k}_d{d}"
    emit(lines, tag + "_ms", 1000 * best_time(kernel, z, codebook, log_var, repeats=repeats),
         "ms")
    emit(lines, tag + "_matmuls_ms",
         1000 * best_time(matmuls, z, codebook, log_var, repeats=repeats), "ms")
    memory = kernel.lower(z, codebook, log_var).compile().memory_analysis()
    emit(lines, tag + "_temp_mib", memory.temp_size_in_bytes / 2 ** 20, "MiB")


def chunked_vs_dense(lines, repeats, d=256, timed_n=4096, memory_n=65536):
  """The dense and streaming soft quantizers at large K: time and memory."""
  rng = np.random.default_rng(0)
  for k in (4096, 16384):
    for name, fn in (("soft_quantize", lambda *a: functional.soft_quantize(*a)[0]),
                     ("soft_quantize_chunked", streaming.soft_quantize_chunked)):
      kernel = jax.jit(jax.grad(lambda z, c, v, fn=fn: jnp.sum(fn(z, c, v)),
                                argnums=(0, 1, 2)))
      z = jnp.asarray(rng.normal(size=(timed_n, d)), jnp.float32)
      codebook = jnp.asarray(rng.normal(size=(k, d)), jnp.float32)
      log_var = jnp.zeros((k,), jnp.float32)
      tag = f"{name}_k{k}_d{d}"
      emit(lines, tag + f"_n{timed_n}_ms",
           1000 * best_time(kernel, z, codebook, log_var, repeats=repeats), "ms")
      shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((memory_n, d), (k, d), (k,))]
      memory = kernel.lower(*shapes).compile().memory_analysis()
      emit(lines, tag + f"_n{memory_n}_temp_mib", memory.temp_size_in_bytes / 2 ** 20, "MiB")


def quantizer_modules(lines, repeats, shape=(32, 16, 16, 256), k=8192):
  """The quantizer modules on a tokenizer's latent grid, float32 and bfloat16."""
  for name, module in (("vector_quantizer", quantizers.VectorQuantizer(k)),
                       ("soft_vector_quantizer", quantizers.SoftVectorQuantizer(k))):
    for dtype in (jnp.float32, jnp.bfloat16):
      z = jax.random.normal(jax.random.key(0), shape, dtype)
      variables = module.init({"params": jax.random.key(1)}, z, train=False)
      variables = module.apply(variables, z, method="initialize", mutable=True,
                               rngs={"params": jax.random.key(1)})[1]  # The variance fit.
      params = variables["params"]

      def loss(params, z, module=module, variables=variables):
        (z_q, aux), _ = module.apply({**variables, "params": params}, z, train=True,
                                     mutable=["ema"])
        return jnp.sum(z_q.astype(jnp.float32)) + aux["loss"]
      grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
      tag = f"{name}_{'x'.join(map(str, shape))}_k{k}_{jnp.dtype(dtype).name}"
      emit(lines, tag + "_ms", 1000 * best_time(grad, params, z, repeats=repeats), "ms")


def mnist_evaluation(lines):
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(10, 64)) * 3
  train_y, test_y = rng.integers(0, 10, 60000), rng.integers(0, 10, 10000)
  train_x = (centres[train_y] + rng.normal(size=(60000, 64))).astype(np.float32)
  test_x = (centres[test_y] + rng.normal(size=(10000, 64))).astype(np.float32)
  config = presets.get_base_config().eval
  for backend in ("jax", "sklearn"):
    config.kmeans_backend = backend
    t0 = time.perf_counter()
    evaluation.evaluate(train_x, train_y, test_x, test_y, config, 10, seed=0)
    emit(lines, f"mnist_eval_{backend}_seconds", time.perf_counter() - t0, "s")
    t0 = time.perf_counter()
    evaluation.kmeans(test_x, 10, config.kmeans_inits, 0, backend)
    emit(lines, f"mnist_kmeans_{backend}_seconds", time.perf_counter() - t0, "s")


def _time_load(lines, name, data_config):
  t0 = time.perf_counter()
  splits = input_pipeline.load(data_config)
  emit(lines, f"load_{name}_seconds", time.perf_counter() - t0, "s")
  return splits


def loading(lines):
  config = presets.get_base_config().data
  if os.path.isdir(FLAGS.mnist_dir):
    config.name, config.source, config.dir = "mnist", "files", FLAGS.mnist_dir
    for verify in (True, False):
      config.verify_md5 = verify
      _time_load(lines, f"mnist_files{'_md5' if verify else ''}", config)
  with tempfile.TemporaryDirectory() as directory:
    rng = np.random.default_rng(0)
    for names in input_pipeline.CIFAR_FILES.values():
      for name in names:
        records = rng.integers(0, 256, (input_pipeline.CIFAR_PER_FILE,
                                        input_pipeline.CIFAR_RECORD), np.uint8)
        records[:, 0] %= 10
        records.tofile(os.path.join(directory, name))
    config.name, config.source, config.dir = "cifar10", "files", directory
    _time_load(lines, "cifar10_files", config)
  if FLAGS.tfds_data_dir:
    for name in ("mnist", "cifar10"):
      config.name, config.source, config.dir = name, "tfds", FLAGS.tfds_data_dir
      try:
        _time_load(lines, f"{name}_tfds", config)
      except InputError as e:
        print(f"skipped {name} from tfds: {e}", file=sys.stderr)


def torch_step(lines, steps, repeats):
  """The soft VQ-VAE step in PyTorch (``torch_reference.py``, run by
  ``--torch_python``), eager and compiled, on the GPU if torch sees one; and
  how many times faster the JAX step of this run is. Skipped where that
  Python has no torch."""
  try:
    records = jsonl.run(FLAGS.torch_python, "experiments.benchmarks.torch_reference",
                        f"--steps={steps}",
                        f"--repeats={repeats}")
  except subprocess.CalledProcessError as e:
    last = (e.stderr.strip().splitlines() or ["no output"])[-1]
    print(f"skipped the torch part: {last}", file=sys.stderr)
    return
  ours = {r["name"]: r["value"] for r in map(json.loads, lines) if "name" in r}
  ours = [ours[name] for name in ("mnist_mlp_soft_vq_b32_ms_per_step",
                                  "mnist_mlp_soft_vq_b32_alone_ms_per_step_per_run")
          if name in ours]
  for line in records:
    jsonl.emit(lines, line)
    if line["name"].endswith("_ms_per_step") and ours:
      emit(lines, line["name"].replace("_ms_per_step", "_over_ours"),
           line["value"] / ours[0], "x")


def main(_):
  lines = []
  repeats = 2 if FLAGS.quick else 5
  if "training" in FLAGS.parts:
    peak = matmul_peak(lines, repeats)
    bandwidth = memory_bandwidth(lines, repeats)
    mlp_training(lines, peak, bandwidth, steps=100 if FLAGS.quick else 500, repeats=repeats,
                 run_counts=(1, 3) if FLAGS.quick else (1, 3, 21))
    bottleneck_layers(lines, steps=200, repeats=repeats)
    adam_update(lines, steps=100, repeats=repeats)
  if "runs_together" in FLAGS.parts:
    runs_together(lines, steps=100 if FLAGS.quick else 500, repeats=repeats,
                  run_counts=(1, 3, 8))
  if "kernels" in FLAGS.parts:
    if FLAGS.quick:
      grid = [(4096, 1024, 64)]
    else:
      grid = [(n, k, d) for n in (4096, 16384, 65536) for k in (256, 1024, 4096)
              for d in (64, 256)]
    kernel_grid(lines, grid, min(repeats, 3))
    chunked_vs_dense(lines, min(repeats, 3))
  if "quantizers" in FLAGS.parts:
    quantizer_modules(lines, min(repeats, 3))
  if "evaluation" in FLAGS.parts:
    mnist_evaluation(lines)
  if "loading" in FLAGS.parts:
    loading(lines)
  if "torch" in FLAGS.parts:
    torch_step(lines, steps=100 if FLAGS.quick else 500, repeats=repeats)
  emit(lines, "devices", jax.device_count(), jax.devices()[0].device_kind)
  jsonl.write(lines, FLAGS.out)
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
