"""Evaluation off the training's critical path.

A sweep trains its launches one after another; a launch's evaluation
(encoding, K-means, the probe, figures: host work, or device work that
leaves the device idle in between) runs in one worker thread while the
next launch trains (``Evaluations``). Each evaluation holds its runs'
workdir locks until it ends, writes its results atomically as in line, and
computes the same programs on the same inputs, so its figures are the
same bits. Its errors reach the sweep through its future, as in line.

A multi-process run evaluates in line: its process 0 evaluates, and a
worker's programs could interleave with the training's collectives.
"""

import concurrent.futures
import contextlib
from typing import Any, Callable

from absl import logging


class Evaluations(concurrent.futures.ThreadPoolExecutor):
  """One worker thread that runs the submitted evaluations in order. On
  leaving its ``with`` block by an error it cancels those not started and
  waits for the one running; after Ctrl-C, SIGTERM or SIGHUP that one's
  ``signals.check()`` stops it before it writes its results."""

  def __init__(self):
    super().__init__(max_workers=1, thread_name_prefix="evaluation")

  def __exit__(self, exc_type, exc, traceback) -> bool:
    if exc_type is not None:
      logging.warning("%s: the queued evaluations are dropped; waiting for the one in "
                      "progress", exc_type.__name__)
    self.shutdown(wait=True, cancel_futures=exc_type is not None)
    return False


class InLine(concurrent.futures.Executor):
  """Runs each submitted call at once, in the caller's thread: evaluation in
  line, behind the same interface as ``Evaluations``."""

  def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args, **kwargs))
    except BaseException as e:  # Raised by future.result(), as a worker's error is.
      future.set_exception(e)
    return future


def submit(executor: concurrent.futures.Executor, evaluate: Callable[[], Any],
           held: contextlib.ExitStack) -> concurrent.futures.Future:
  """``evaluate()`` on ``executor``; ``held`` (the runs' locks) is released
  when it ends, fails or is cancelled."""
  try:
    future = executor.submit(evaluate)
  except BaseException:
    held.close()
    raise
  future.add_done_callback(lambda _: held.close())
  return future
