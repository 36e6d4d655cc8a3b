"""What a run keeps in its workdir, written so that nothing is ever half-written.

* The layout: a run of a sweep point lives in ``point_dir(point)`` below
  the sweep's workdir, and each run of a config that trains several
  together (``runs.split``) in ``point_dir`` of its own point below the
  config's workdir.
* ``config.json``: the resolved config. A workdir that holds another config
  is refused with the keys that differ; one that holds ``eval.json`` for the
  same config is a finished run and is not retrained. A key that the stored
  config lacks (added to the library after that run, ``ADDED_KEYS``)
  matches only the value that keeps the earlier behaviour.
* ``metrics.jsonl`` and ``tensorboard/``: one record per logged step. On
  resume, records past the restored checkpoint are dropped, so the log of a
  resumed run reads like an uninterrupted one; a torn line (a crash
  mid-append) is dropped with a warning.
* JSON results are written to a temporary file and renamed into place, with
  the usual umask-derived mode (readable by others on a shared workdir).
* ``lock``: one launcher at a time trains in a workdir. The lock is an
  ``flock`` on ``.lock``, which names its holder (host, pid); the kernel
  releases it when the holder dies, so a killed run never blocks a rerun.
"""

import contextlib
import datetime
import fcntl
import json
import math
import os
import socket
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence

from absl import logging
import ml_collections
import tensorboardX

from softvq_jax import runs
from softvq_jax.errors import InputError

CONFIG_FILE = "config.json"
EVAL_FILE = "eval.json"
METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "timing.json"
LOCK_FILE = ".lock"

# Config keys added after runs were published, with the value that keeps the
# behaviour from before each key existed. Every key added to the config goes
# here, so that the workdirs of earlier runs stay finished runs.
ADDED_KEYS = {
    "data.download": False,
    "data.download_url": "",
    "data.verify_md5": True,
    "eval.kmeans_backend": "auto",  # Earlier runs, all on CPU, used sklearn: auto's choice.
    "model.codebook_init": "uniform",
    "model.dead_code_threshold": 0.0,
    "model.entropy_weight": 0.1,
    "model.fsq_levels": [5, 5, 5],
    "model.num_stages": 4,
    "model.log_var_init": None,
    "model.variance": "sample",
    "train.compute_dtype": "float32",
    "train.num_seeds": 1,
    "train.vmap_key": "",
    "train.vmap_values": [],
}


# The directory part that marks a point evaluated on the validation hold-out.
VALIDATION_DIR = "validation"


def point_parts(point: runs.Point, *, split: bool = True) -> List[str]:
  """The names of a point's directories below its sweep's workdir, the seed's
  excepted: ``[<dataset>, ][<row>, ][validation, ][<variant>, ][<key>_<value>, ...]``,
  one ``<key>_<value>`` per swept key, named by its last component.
  ``validation`` (``split``) marks a point evaluated on a hold-out of the
  training images (``data.validation_size``), so that a setting chosen on
  validation and then run on the test split gets two directories in one
  sweep workdir."""
  held_out = split and point.config_overrides().get("data.validation_size")
  validation = VALIDATION_DIR if held_out else ""
  parts = [part for part in (point.dataset, point.row, validation, point.variant) if part]
  return parts + [f"{key.rsplit('.', 1)[-1]}_{value}" for key, value in point.swept]


def point_dir(point: runs.Point) -> str:
  """The directory of a run below its sweep's (or vmapped config's) workdir:
  ``point_parts``, then ``seed_<seed>`` (``soft_vq_vae/noise_std_0.05/seed_0``,
  ``beta_vae/validation/beta_5.0/seed_0``)."""
  return os.path.join(*point_parts(point), f"seed_{point.seed}")


def config_dict(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The config as plain JSON types."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` by a temporary file and a rename, with the
  mode a plain ``open`` gives (0666 less the umask; mkstemp's is 0600)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  umask = os.umask(0)
  os.umask(umask)
  os.fchmod(fd, 0o666 & ~umask)
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` to ``path`` atomically (temporary file, then rename)."""
  _write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Optional[Any]:
  """The JSON in ``path``, None if there is none.

  Raises:
    InputError: ``path`` is not JSON (a torn or edited file).
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise InputError(f"{path} is not valid JSON ({e}); move it away, or use a new "
                     "--workdir") from None


_MISSING = object()


def _diff(old: Any, new: Any, prefix: str = "") -> list:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      out += _diff(old.get(key, _MISSING), new.get(key, _MISSING), f"{prefix}{key}.")
    return out
  if old is _MISSING and new == ADDED_KEYS.get(prefix[:-1], _MISSING):
    return []
  show = lambda value: "absent" if value is _MISSING else repr(value)
  return [] if old == new else [f"{prefix[:-1]}: {show(old)} in the workdir, {show(new)} now"]


def check(config: ml_collections.ConfigDict, workdir: str) -> Optional[Dict[str, Any]]:
  """Checks ``workdir`` against ``config`` before anything is written.

  Returns:
    The stored eval results if the workdir holds a finished run of this
    config, else None.

  Raises:
    InputError: the workdir holds a run of another config.
  """
  stored = read_json(os.path.join(workdir, CONFIG_FILE))
  if stored is None:
    return None
  differences = _diff(stored, config_dict(config))
  if differences:
    raise InputError(f"workdir {workdir} holds a run of another config ("
                     + "; ".join(differences) + "); use a new --workdir")
  return read_json(os.path.join(workdir, EVAL_FILE))


def write_results(workdir: str, results: Dict[str, Any], timing: Dict[str, Any]) -> None:
  """Writes timing.json, then eval.json: the file that marks the run finished."""
  write_json(os.path.join(workdir, TIMING_FILE), timing)
  write_json(os.path.join(workdir, EVAL_FILE), results)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  write_json(os.path.join(workdir, CONFIG_FILE), config_dict(config))


def _records_until(path: str, step: int) -> list:
  """The lines of ``path`` up to ``step``: a torn or foreign line (a crash
  mid-append leaves one) is dropped with a warning."""
  if not os.path.exists(path):
    return []
  kept = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      try:
        record_step = json.loads(line)["step"]
      except (ValueError, KeyError, TypeError):
        if line.strip():
          logging.warning("%s:%d is not a metrics record (%r); dropped", path, number,
                          line[:80])
        continue
      if record_step <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
  return kept


def read_metrics(workdir: str) -> list:
  """The records of ``WORKDIR/metrics.jsonl`` (none if absent), oldest first."""
  path = os.path.join(workdir, METRICS_FILE)
  return [json.loads(line) for line in _records_until(path, math.inf)]


class MetricsLog:
  """metrics.jsonl, TensorBoard scalars and a console progress line."""

  def __init__(self, workdir: str, start_step: int, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.path = os.path.join(workdir, METRICS_FILE)
    _write_atomic(self.path, "".join(_records_until(self.path, start_step)))
    self.writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                             purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, metrics: Dict[str, float], steps_per_sec: float,
            eta: float) -> None:
    """Appends one record and prints the progress line."""
    if not self.enabled:
      return
    record = {"step": step, **metrics, "steps_per_sec": steps_per_sec}
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    for key, value in record.items():
      if key != "step":
        self.writer.add_scalar(key, value, step)
    self.writer.flush()
    logging.info("step %d  loss %.4f  %.1f steps/s  ETA %dm%02ds", step,
                 metrics["loss"], steps_per_sec, eta // 60, eta % 60)

  def close(self) -> None:
    if self.enabled:
      self.writer.close()


class Locked(InputError):
  """Another live launcher holds the workdir."""


@contextlib.contextmanager
def _lock_one(workdir: str) -> Iterator[None]:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    # O_NOFOLLOW: a planted symlink (a shared /tmp) must not get its target truncated.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
  except OSError as e:
    raise InputError(f"{path} cannot be the workdir's lock ({os.strerror(e.errno)}: "
                     "a symlink?); move it away, or use a new --workdir") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
      raise Locked(f"workdir {workdir} is in use by {holder}; wait for it to end, or "
                   "use another --workdir") from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} "
                 f"(since {started})\n".encode())
    yield
  finally:
    os.close(fd)  # Releases the flock.


@contextlib.contextmanager
def lock(workdirs: Sequence[str], enabled: bool = True) -> Iterator[None]:
  """Holds the lock of every workdir in ``workdirs`` (``enabled``: process 0
  of a multi-process run locks for all).

  Raises:
    Locked: another live process holds one of them (nothing but the lock
      files is written).
  """
  with contextlib.ExitStack() as stack:
    for workdir in workdirs if enabled else ():
      stack.enter_context(_lock_one(workdir))
    yield
