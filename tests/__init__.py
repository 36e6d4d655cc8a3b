"""softvq_jax's tests, one folder per part of the package (quantizers, model, data, launch)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The repository.


def snapshot(directory):
  """Every file under ``directory`` (a ``pathlib.Path``) and its bytes: what must not change
  when a command is refused or stops."""
  return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
