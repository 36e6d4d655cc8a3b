"""What a run keeps in its workdir, written so that nothing is ever half-written.

* The layout: a run of a sweep point lives in ``point_dir(point)`` below
  the sweep's workdir, and each run of a config that trains several
  together (``runs.split``) in ``point_dir`` of its own point below the
  config's workdir.
* ``config.json``: the resolved config. A workdir that holds another config
  is refused with the keys that differ; one that holds ``eval.json`` for the
  same config is a finished run and is not retrained. A key that the stored
  config lacks (added to the library after that run,
  ``config_keys.ADDED_KEYS``) matches only the value that keeps the earlier
  behaviour.
* ``metrics.jsonl`` and ``tensorboard/``: the training log
  (``softvq_jax.launch.training_log``).
* JSON results are written to a temporary file and renamed into place, with
  the usual umask-derived mode (readable by others on a shared workdir).
* ``.lock``: one launcher at a time trains in a workdir
  (``softvq_jax.launch.locks``).
"""

import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple, Union

import ml_collections

from softvq_jax.errors import InputError
from softvq_jax.launch import config_keys

CONFIG_FILE = "config.json"
EVAL_FILE = "eval.json"
TIMING_FILE = "timing.json"

def config_dict(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The config as plain JSON types."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def write_atomic(path: str, text: Union[str, bytes]) -> None:
  """Writes ``text`` (or bytes) to ``path`` by a temporary file and a rename,
  with the mode a plain ``open`` gives (0666 less the umask; mkstemp's is 0600)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  umask = os.umask(0)
  os.umask(umask)
  os.fchmod(fd, 0o666 & ~umask)
  with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` to ``path`` atomically (temporary file, then rename)."""
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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


MISSING = object()  # A key's value where a config lacks the key (``differing_keys``).


def differing_keys(old: Any, new: Any, prefix: str = "") -> List[Tuple[str, Any, Any]]:
  """``(dotted key, old value, new value)`` for every key of two configs as
  plain dicts (``config_dict``) whose values differ, sorted; an absent value
  is ``MISSING``, and a key that ``old`` lacks matches the value of
  ``config_keys.ADDED_KEYS``."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      out += differing_keys(old.get(key, MISSING), new.get(key, MISSING), f"{prefix}{key}.")
    return out
  if old is MISSING and new == config_keys.ADDED_KEYS.get(prefix[:-1], MISSING):
    return []
  return [] if old == new else [(prefix[:-1], old, new)]


def differences(old: Any, new: Any, where: str = "in the workdir") -> List[str]:
  """The keys of a stored config ``old`` that differ from ``new``, one
  phrase each (``"key: old where, new now"``; see ``differing_keys``)."""
  show = lambda value: "absent" if value is MISSING else repr(value)
  return [f"{key}: {show(a)} {where}, {show(b)} now" for key, a, b in differing_keys(old, new)]


def finished(workdir: str) -> bool:
  """Whether ``workdir`` holds a finished run: its eval.json, written last
  (``write_results``)."""
  return os.path.exists(os.path.join(workdir, EVAL_FILE))


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
  changed = differences(stored, config_dict(config))
  if changed:
    raise InputError(f"workdir {workdir} holds a run of another config ("
                     + "; ".join(changed) + "); use a new --workdir")
  return read_json(os.path.join(workdir, EVAL_FILE))


def write_results(workdir: str, results: Dict[str, Any], timing: Dict[str, Any]) -> None:
  """Writes timing.json, then eval.json: the file that marks the run finished."""
  write_json(os.path.join(workdir, TIMING_FILE), timing)
  write_json(os.path.join(workdir, EVAL_FILE), results)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  write_json(os.path.join(workdir, CONFIG_FILE), config_dict(config))
