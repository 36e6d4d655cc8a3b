"""The cases of ``fault_matrix.py``: each breaks one thing and says what must hold."""

import dataclasses
import gzip
import os
import shutil
import signal
import subprocess
import sys
from typing import Callable, List, Optional, Tuple

import numpy as np

BASE = ("--config=configs/digits.py", "--config.model.mlp_hidden=(64, 64)",
        "--config.train.num_steps=300", "--config.train.log_every=100",
        "--config.train.checkpoint_every=100", "--config.train.max_checkpoints=3",
        "--config.eval.figures=False", "--config.eval.kmeans_inits=2",
        "--config.eval.probe_steps=200")
MNIST_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclasses.dataclass
class Case:
  """One fault: ``act(ctx, launch)`` returns the launch to judge, and False
  with a note where something on disk is not as promised."""
  name: str
  status: int  # The exit status the launcher must end with.
  last: str  # A regex that its last stderr line must match.
  act: Callable
  max_seconds: float = 120.0


def args(workdir: str, *extra: str) -> List[str]:
  return [*BASE, f"--workdir={workdir}", *extra]


def eval_bytes(workdir: str) -> bytes:
  path = os.path.join(workdir, "eval.json")
  return open(path, "rb").read() if os.path.exists(path) else b""


def exists(*parts: str) -> Callable[[], bool]:
  return lambda: os.path.exists(os.path.join(*parts))


def no_tmp(workdir: str) -> bool:
  """No half-written orbax checkpoint below ``workdir``."""
  return not any("tmp" in name for _, dirs, _ in os.walk(workdir) for name in dirs)


def mount_tmpfs(ctx, name: str, size_kb: int, read_only: bool = False) -> Optional[str]:
  path = ctx.path(name)
  os.makedirs(path, exist_ok=True)
  options = f"size={size_kb}k" + (",ro" if read_only else "")
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                          capture_output=True, check=False)
  if result.returncode:
    return None
  ctx.reference.setdefault("mounts", []).append(path)
  return path


def unmount_all(ctx) -> None:
  for path in reversed(ctx.reference.get("mounts", [])):
    subprocess.run(["umount", path], capture_output=True, check=False)


def write_idx(path: str, array: np.ndarray) -> None:
  header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def mnist_args(directory: str) -> Tuple[str, ...]:
  return ("--config.data.name=mnist", "--config.data.source=files",
          f"--config.data.dir={directory}", "--config.model.latent_dim=16")


def finished_copy(ctx, name: str) -> str:
  """A copy of the reference run's workdir."""
  workdir = ctx.path(name)
  shutil.copytree(ctx.path("reference"), workdir, symlinks=True)
  return workdir


def unfinish(workdir: str) -> str:
  """A finished 300-step run in ``workdir`` as if killed after its checkpoint
  at step 200."""
  for path in ("eval.json", "timing.json", "latents.npz", "checksums/300.json"):
    os.remove(os.path.join(workdir, path))
  shutil.rmtree(os.path.join(workdir, "checkpoints", "300"))
  return workdir


def unfinished_after_200(ctx, name: str) -> str:
  """The reference run as if killed after its checkpoint at step 200."""
  return unfinish(finished_copy(ctx, name))


def same_eval(ctx, workdir: str, outcome) -> Tuple[object, bool, str]:
  same = eval_bytes(workdir) == ctx.reference["eval"]
  return outcome, same, "" if same else "eval.json differs from the uninterrupted run"


# --- The cases. ---------------------------------------------------------------------


def reference(ctx, launch):
  outcome = launch(args(ctx.path("reference")))
  ctx.reference["eval"] = eval_bytes(ctx.path("reference"))
  return outcome, bool(ctx.reference["eval"]), ""


def sweep_preset_override(ctx, launch):
  workdir = ctx.path("sweep_override")
  outcome = launch(["--config=configs/digits.py", "--sweep=table1", f"--workdir={workdir}",
                    "--config.train.num_steps=300", "--config.eval.figures=False",
                    "--config.model.bottleneck=vq"], module="softvq_jax.sweep")
  return outcome, not os.path.exists(workdir), "the sweep wrote its workdir"


def bit_flipped_checkpoint(ctx, launch):
  workdir = unfinished_after_200(ctx, "bit_flip")
  for root, _, names in os.walk(os.path.join(workdir, "checkpoints", "200")):
    for name in names:
      if os.sep + "d" in root:  # tensorstore's data files.
        data = bytearray(open(os.path.join(root, name), "rb").read())
        data[len(data) // 2] ^= 1
        open(os.path.join(root, name), "wb").write(bytes(data))
  outcome, same, note = same_eval(ctx, workdir, launch(args(workdir)))
  aside = os.path.isdir(os.path.join(workdir, "set_aside", "checkpoint_200"))
  return outcome, same and aside, note or ("" if aside else "checkpoint 200 not set aside")


def truncated_checkpoint_no_manifest(ctx, launch):
  workdir = unfinished_after_200(ctx, "truncated")
  shutil.rmtree(os.path.join(workdir, "checksums"))  # As written before manifests.
  files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(workdir, "checkpoints",
                                                                    "200")) for n in ns]
  largest = max(files, key=os.path.getsize)
  data = open(largest, "rb").read()
  open(largest, "wb").write(data[:len(data) // 2])
  return same_eval(ctx, workdir, launch(args(workdir)))


def checkpoints_a_file(ctx, launch):
  workdir = ctx.path("checkpoints_file")
  os.makedirs(workdir)
  open(os.path.join(workdir, "checkpoints"), "w").close()
  outcome = launch(args(workdir))
  return outcome, os.listdir(workdir) == ["checkpoints"], "something was written"


def checkpoints_read_only(ctx, launch):
  workdir = ctx.path("checkpoints_ro")
  os.makedirs(os.path.join(workdir, "checkpoints"))
  if mount_tmpfs(ctx, os.path.join("checkpoints_ro", "checkpoints"), 64, read_only=True) is None:
    return None, True, "skipped: mounting a tmpfs needs root"
  return launch(args(workdir)), True, ""


def signal_when(ctx, launch, name, trigger_parts, send=signal.SIGINT, delay=0.0):
  workdir = ctx.path(name)
  trigger = exists(workdir, *trigger_parts)
  return workdir, launch(args(workdir), trigger=trigger, send=send, delay=delay)


def sigint_compiling(ctx, launch):
  # config.json is written just before the model is built and compiled.
  name = f"sigint_compile_{len(os.listdir(ctx.scratch))}"
  workdir, outcome = signal_when(ctx, launch, name, ["config.json"], delay=0.3)
  return outcome, not os.path.exists(os.path.join(workdir, "eval.json")), "it finished"


def sigint_final_save(ctx, launch):
  workdir = ctx.path("sigint_final_save")
  directory = os.path.join(workdir, "checkpoints")
  trigger = lambda: os.path.isdir(directory) and any(n.startswith("300") for n in
                                                     os.listdir(directory))
  outcome = launch(args(workdir), trigger=trigger)
  whole = no_tmp(workdir) and os.path.isdir(os.path.join(directory, "300"))
  return outcome, whole, "" if whole else "checkpoint 300 is missing or half-written"


def sigint_evaluating_then_rerun(ctx, launch):
  workdir, outcome = signal_when(ctx, launch, "sigint_eval", ["checksums", "300.json"],
                                 delay=0.2)
  _, same, note = same_eval(ctx, workdir, launch(args(workdir)))
  return outcome, same and no_tmp(workdir), note


def signal_then_rerun(name: str, send: int):
  """``send`` after the checkpoint at step 100, then a rerun to the end."""
  def act(ctx, launch):
    workdir, outcome = signal_when(ctx, launch, name, ["checksums", "100.json"], send=send)
    _, same, note = same_eval(ctx, workdir, launch(args(workdir)))
    return outcome, same and no_tmp(workdir), note
  return act


def sigkill_then_rerun(ctx, launch):
  workdir, _ = signal_when(ctx, launch, "sigkill", ["checksums", "200.json"],
                           send=signal.SIGKILL)
  return same_eval(ctx, workdir, launch(args(workdir)))


def sigint_importing(ctx, launch):
  workdir = ctx.path("sigint_import")
  outcome = launch(args(workdir), trigger=lambda: True, delay=0.4)
  return outcome, not os.path.exists(workdir), "it wrote the workdir"


def full_disk(ctx, launch, name, size_kb, *extra):
  workdir = mount_tmpfs(ctx, name, size_kb)
  if workdir is None:
    return None, True, "skipped: mounting a tmpfs needs root"
  return launch(args(workdir, *extra)), True, ""


def full_disk_training(ctx, launch):
  return full_disk(ctx, launch, "full_disk_train", 400)


def full_disk_evaluating(ctx, launch):
  # Room for training's files (the reference run's, and a checkpoint more
  # while orbax writes the next before it deletes the oldest), not for the
  # figures (about 130 kB).
  size = lambda path: sum(os.path.getsize(os.path.join(root, name))
                          for root, _, names in os.walk(path) for name in names)
  room = size(ctx.path("reference")) + size(ctx.path("reference", "checkpoints", "300"))
  return full_disk(ctx, launch, "full_disk_eval", room // 1024 + 48,
                   "--config.eval.figures=True")


def refused(workdir_name, *extra, module="softvq_jax.main", prefix=()):
  """A case whose launch must be refused before anything is written."""

  def act(ctx, launch):
    workdir = ctx.path(workdir_name)
    before = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else None
    values = [v.format(ctx=ctx) for v in extra]
    outcome = launch(args(workdir, *values), module=module, prefix=prefix)
    after = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else None
    return outcome, before == after, "" if before == after else "the workdir changed"

  return act


def prepared(prepare, act):
  def both(ctx, launch):
    prepare(ctx)
    return act(ctx, launch)
  return both


def _config_file(ctx, name, body):
  path = ctx.path(f"{name}.py")
  with open(path, "w") as f:
    f.write("import ml_collections\n" + body)
  return path


def config_file_case(name, body):
  def act(ctx, launch):
    path = _config_file(ctx, name, body)
    workdir = ctx.path(name)
    outcome = launch([f"--config={path}", f"--workdir={workdir}"])
    return outcome, not os.path.exists(workdir), "it wrote the workdir"
  return act


def mnist_dir(ctx, name, train_images=None, header=None, bomb=False):
  directory = ctx.path(name)
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  write_idx(os.path.join(directory, MNIST_NAMES[0]), train_images if train_images is not None
            else rng.integers(0, 256, (50, 28, 28)))
  write_idx(os.path.join(directory, MNIST_NAMES[1]), rng.integers(0, 10, (
      0 if train_images is not None and not len(train_images) else 50,)))
  write_idx(os.path.join(directory, MNIST_NAMES[2]), rng.integers(0, 256, (20, 28, 28)))
  write_idx(os.path.join(directory, MNIST_NAMES[3]), rng.integers(0, 10, (20,)))
  if header is not None:
    with gzip.open(os.path.join(directory, MNIST_NAMES[0]), "wb") as f:
      f.write(header)
      for _ in range(1024 if bomb else 0):
        f.write(bytes(1 << 20))
  return directory


def mnist_files_case(name, **kwargs):
  def act(ctx, launch):
    directory = mnist_dir(ctx, name + "_data", **kwargs)
    return refused(name, *mnist_args(directory), "--config.data.verify_md5=False")(
        ctx, launch)
  return act


def cifar_random_bins(ctx, launch):
  directory = ctx.path("cifar_bins")
  os.makedirs(directory)
  for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    np.random.default_rng(0).integers(0, 10, 10000 * 3073, dtype=np.uint8).tofile(
        os.path.join(directory, name))
  return refused("cifar", "--config.data.name=cifar10", "--config.data.source=files",
                 f"--config.data.dir={directory}")(ctx, launch)


def download_case(name, mode):
  def act(ctx, launch):
    directory = ctx.path(name + "_data")
    outcome, unchanged, note = refused(
        name, *mnist_args(directory), "--config.data.download=True",
        f"--config.data.download_url={ctx.mirror.url}/{mode}")(ctx, launch)
    parts = [n for n in os.listdir(directory) if n.endswith(".part")] if os.path.isdir(
        directory) else []
    return outcome, unchanged and not parts, note or (f"left {parts}" if parts else "")
  return act


def planted_symlink(name, where):
  def act(ctx, launch):
    victim = ctx.path(name + "_victim")
    open(victim, "w").write("precious")
    workdir, data = ctx.path(name), ctx.path(name + "_data")
    os.makedirs(workdir)
    os.makedirs(data)
    link = (os.path.join(workdir, ".lock") if where == "lock"
            else os.path.join(data, MNIST_NAMES[0] + ".part"))
    os.symlink(victim, link)
    extra = () if where == "lock" else (*mnist_args(data), "--config.data.download=True",
                                        f"--config.data.download_url={ctx.mirror.url}/ok")
    outcome = launch(args(workdir, *extra))
    intact = open(victim).read() == "precious"
    return outcome, intact, "" if intact else "the symlink's target was written"
  return act


def second_launcher(ctx, launch):
  workdir = ctx.path("locked")
  os.makedirs(workdir)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import time; from softvq_jax.launch import locks\n"
       f"with locks.lock([{workdir!r}]):\n print('held', flush=True)\n time.sleep(600)"],
      cwd=ctx.root, stdout=subprocess.PIPE, text=True)
  holder.stdout.readline()
  try:
    return launch(args(workdir)), True, ""
  finally:
    holder.kill()
    holder.wait()


def latents_with_a_pickle(ctx, launch):
  """A finished run of a sweep (the reference's files) with pickled latents."""
  workdir = ctx.path("pickled_sweep")
  run = os.path.join(workdir, "ae", "seed_0")
  shutil.copytree(ctx.path("reference"), run, symlinks=True)
  np.savez(os.path.join(run, "latents.npz"), latents=np.array([{"a": 1}], dtype=object),
           labels=np.zeros(1))
  return launch(["--config=configs/digits.py", "--sweep=table1", f"--workdir={workdir}",
                 "--aggregate_only"], module="softvq_jax.sweep"), True, ""


def results_under_a_file(ctx, launch):
  open(ctx.path("a_file"), "w").close()
  return refused("results_file", "--sweep=table1", f"--results={ctx.path('a_file')}/t",
                 module="softvq_jax.sweep")(ctx, launch)


def _write(path_parts, text=None, directory=False):
  def prepare(ctx):
    path = ctx.path(*path_parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if directory:
      os.makedirs(path)
    else:
      open(path, "w").write(text)
  return prepare


def corrupt_eval(ctx, launch):
  workdir = finished_copy(ctx, "corrupt_eval")
  open(os.path.join(workdir, "eval.json"), "w").write("{torn")
  return launch(args(workdir)), True, ""


def finished_rerun(ctx, launch):
  outcome = launch(args(ctx.path("reference")))
  return outcome, eval_bytes(ctx.path("reference")) == ctx.reference["eval"], ""
