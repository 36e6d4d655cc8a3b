"""A run's training log: ``metrics.jsonl``, TensorBoard scalars and a
console progress line.

One record per logged step. On resume, records past the restored
checkpoint are dropped, so the log of a resumed run reads like an
uninterrupted one; a torn line (a crash mid-append) is dropped with a
warning.
"""

import json
import math
import os
from typing import Dict

from absl import logging
import tensorboardX

from softvq_jax.launch import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"


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
    workdir_lib.write_atomic(self.path, "".join(_records_until(self.path, start_step)))
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
