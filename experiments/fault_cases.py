"""The cases of ``fault_matrix.py``: each breaks one thing and says what must hold."""

import dataclasses
import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import time
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


def unfinished_after_200(ctx, name: str) -> str:
  """The reference run as if killed after its checkpoint at step 200."""
  workdir = finished_copy(ctx, name)
  for path in ("eval.json", "timing.json", "latents.npz", "checksums/300.json"):
    os.remove(os.path.join(workdir, path))
  shutil.rmtree(os.path.join(workdir, "checkpoints", "300"))
  return workdir


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


def sigterm_then_rerun(ctx, launch):
  workdir, outcome = signal_when(ctx, launch, "sigterm", ["checksums", "100.json"],
                                 send=signal.SIGTERM)
  _, same, note = same_eval(ctx, workdir, launch(args(workdir)))
  return outcome, same and no_tmp(workdir), note


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


def _mnist_dir(ctx, name, train_images=None, header=None, bomb=False):
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
    directory = _mnist_dir(ctx, name + "_data", **kwargs)
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
      [sys.executable, "-c", "import time; from softvq_jax import workdir\n"
       f"with workdir.lock([{workdir!r}]):\n print('held', flush=True)\n time.sleep(600)"],
      cwd=ctx.root, stdout=subprocess.PIPE, text=True)
  holder.stdout.readline()
  try:
    return launch(args(workdir)), True, ""
  finally:
    holder.kill()
    holder.wait()


def latents_with_a_pickle(ctx, launch):
  workdir = ctx.path("pickled_sweep")
  run = os.path.join(workdir, "ae", "seed_0")
  os.makedirs(run)
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


I, S = r"^error: .*", 2  # The input-error line and status.
CASES = [
    Case("reference", 0, r"eval of seed 0", reference),
    Case("sweep_overrides_a_preset_key", S, I + r"--config.model.bottleneck is set per row",
         sweep_preset_override),
    Case("bit_flipped_checkpoint", 0, r"eval of seed 0", bit_flipped_checkpoint),
    Case("truncated_checkpoint_without_manifest", 0, r"eval of seed 0",
         truncated_checkpoint_no_manifest),
    Case("checkpoints_is_a_file", S, I + r".*checkpoints should be a directory",
         checkpoints_a_file, 30),
    Case("checkpoints_read_only", S, I + r".*is not writable", checkpoints_read_only, 30),
    *[Case(f"sigint_while_compiling_{i}_of_3", 130, r"^interrupted: stopped by Ctrl-C",
           sigint_compiling) for i in (1, 2, 3)],
    Case("sigint_during_final_save", 130, r"^interrupted: .*checkpoint is at step 300",
         sigint_final_save),
    Case("sigint_during_evaluation_then_rerun", 130,
         r"^interrupted: .*step 300 is kept: rerun the same command to evaluate",
         sigint_evaluating_then_rerun),
    Case("sigterm_then_rerun", 143, r"^terminated: stopped by SIGTERM\. The last good",
         sigterm_then_rerun),
    Case("sigkill_then_rerun", 0, r"eval of seed 0", sigkill_then_rerun),
    Case("sigint_while_importing", 130, r"^interrupted: stopped by Ctrl-C", sigint_importing),
    Case("full_disk_while_training", 1, I + r"saving a checkpoint .*No space left on device",
         full_disk_training, 60),
    Case("full_disk_while_evaluating", 1, I + r"evaluation failed .*No space left on device"
         r".*step 300 is kept", full_disk_evaluating, 60),
    Case("seed_2_32", S, I + r"config.seed=4294967296 is not valid",
         refused("seed32", "--config.seed=4294967296"), 30),
    Case("seed_2_64", S, I + r"config.seed=18446744073709551616 is not valid",
         refused("seed64", "--config.seed=18446744073709551616"), 30),
    Case("tsne_points_0", S, I + r"config.eval.tsne_points=0 is not valid",
         refused("tsne0", "--config.eval.tsne_points=0", "--config.eval.figures=True"), 30),
    Case("eval_batch_1e9", S, I + r"the model needs at least",
         refused("evalbatch", "--config.eval.batch_size=1000000000"), 30),
    Case("probe_batch_1e9", S, I + r"the model needs at least",
         refused("probebatch", "--config.eval.probe_batch_size=1000000000"), 30),
    Case("codewords_2_31", S, I + r"config.model.num_codewords=2147483648 is not valid",
         refused("k31", "--config.model.num_codewords=2147483648"), 30),
    Case("over_the_process_memory_limit", S, I + r"the model needs at least .* has 8\.0 GiB",
         refused("limit", "--config.model.num_codewords=5000000",
                 prefix=("prlimit", f"--as={8 << 30}")), 30),
    Case("mnist_with_no_training_images", S, I + r"holds 0 training and 20 test images",
         mnist_files_case("empty_mnist", train_images=np.zeros((0, 28, 28))), 30),
    Case("idx_header_overflow", S, I + r"data file corrupt: .*IDX header",
         mnist_files_case("idx_overflow", header=bytes([0, 0, 8, 3]) + b"\xff" * 12), 30),
    Case("gzip_bomb", S, I + r"data file truncated or corrupt: .*its header says \(10, 28, 28",
         mnist_files_case("gzip_bomb", header=bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big")
                          + (28).to_bytes(4, "big") * 2, bomb=True), 60),
    Case("cifar_random_bins_of_official_size", S, I + r"cannot be checked", cifar_random_bins,
         60),
    Case("download_longer_than_official", S, I + r"sent more than the official 9912422",
         download_case("long_download", "long"), 60),
    Case("download_redirect_loop", S, I + r"download of .* failed: HTTP 302 .*infinite loop",
         download_case("loop_download", "loop"), 30),
    Case("planted_lock_symlink", S, I + r"\.lock should be a file, not a symlink",
         planted_symlink("lock_link", "lock"), 30),
    Case("planted_part_symlink", S, I + r"\.part is a symlink",
         planted_symlink("part_link", "part"), 30),
    Case("config_without_keys", S, I + r"the config has no key 'model'",
         config_file_case("nokeys", "def get_config():\n  c = ml_collections.ConfigDict()\n"
                          "  c.seed = 0\n  return c\n"), 30),
    Case("config_raises", S, I + r"--config: RuntimeError: boom",
         config_file_case("raises", "def get_config():\n  raise RuntimeError('boom')\n"), 30),
    Case("config_returns_none", S, I + r"--config: get_config\(\) returned None, not a ConfigDict",
         config_file_case("none", "def get_config():\n  return None\n"), 30),
    Case("config_calls_sys_exit_0", S, I + r"--config: the config file called sys.exit\(0\)",
         config_file_case("exits", "import sys\ndef get_config():\n  sys.exit(0)\n"), 30),
    Case("corrupt_config_json", S, I + r".*config.json is not valid JSON",
         prepared(_write(("corrupt_config", "config.json"), "{torn"),
                  refused("corrupt_config")), 30),
    Case("config_json_a_directory", S, I + r".*config.json should be a file",
         prepared(_write(("config_dir", "config.json"), directory=True),
                  refused("config_dir")), 30),
    Case("corrupt_eval_json", S, I + r".*eval.json is not valid JSON", corrupt_eval, 30),
    Case("dangling_symlink_workdir", S, I + r"--workdir=.* is a symlink to .*, which does not",
         prepared(lambda ctx: os.symlink(ctx.path("nowhere"), ctx.path("dangling")),
                  refused("dangling")), 30),
    Case("newline_in_workdir_is_a_file", S, I + r"--workdir=.* is a file, not a directory$",
         prepared(_write(("new\nline",), "mine"), refused("new\nline")), 30),
    Case("results_under_a_file", S, I + r"--results=.* is a file, not a directory",
         results_under_a_file, 30),
    Case("latents_with_a_pickle", S, I + r"pickled objects are never loaded",
         latents_with_a_pickle, 60),
    Case("another_launcher_holds_the_workdir", S, I + r"workdir .* is in use by pid",
         second_launcher, 30),
    Case("workdir_of_another_config", S, I + r"holds a run of another config",
         refused("reference", "--config.train.learning_rate=0.1"), 30),
    Case("finished_run_is_not_retrained", 0, r"", finished_rerun, 60),
    Case("unknown_key", S, I + r"--config: the config has no key 'num_step'; did you mean",
         refused("unknown", "--config.train.num_step=5"), 30),
    Case("file_url_refused", S, I + r"download_url='file:///etc' is not an http",
         refused("file_url", "--config.data.name=mnist", "--config.data.source=files",
                 "--config.data.dir={ctx.scratch}/file_url_data", "--config.data.download=True",
                 "--config.data.download_url=file:///etc"), 30),
]


def run_case(case: Case, ctx, launch) -> dict:
  """Runs ``case`` and judges it: a row of the table."""
  ctx.root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  t0 = time.time()
  outcome, disk_ok, note = case.act(ctx, launch)
  if outcome is None:
    return {"case": case.name, "expects": str(case.status), "exit": "", "stderr_lines": 0,
            "foreign_lines": 0, "last_line": note, "verdict": "skipped", "seconds": 0.0}
  checks = {"exit": outcome.status == case.status,
            "last line": re.search(case.last, outcome.last) is not None,
            "one line": outcome.foreign == 0,
            "disk": disk_ok, "time": outcome.seconds <= case.max_seconds}
  failed = [name for name, ok in checks.items() if not ok]
  return {"case": case.name, "expects": str(case.status), "exit": outcome.status,
          "stderr_lines": len(outcome.lines), "foreign_lines": outcome.foreign,
          "last_line": outcome.last, "seconds": round(time.time() - t0, 1),
          "verdict": "holds" if not failed else "BROKEN: " + ", ".join(failed)
                     + (f" ({note})" if note else "")}
