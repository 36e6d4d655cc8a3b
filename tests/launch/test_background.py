"""Evaluations in a worker thread: order, errors, locks, and stopping."""

import contextlib
import threading

import pytest

from softvq_jax.launch import background


def held(released, name):
  """An ExitStack standing for a launch's locks: records its release."""
  stack = contextlib.ExitStack()
  stack.callback(released.append, name)
  return stack


def test_evaluations_run_in_order_in_a_worker_and_release_their_locks():
  released, threads = [], []

  def evaluate(name):
    threads.append(threading.current_thread().name)
    return name

  with background.Evaluations() as evaluations:
    futures = [background.submit(evaluations, lambda n=n: evaluate(n), held(released, n))
               for n in ("a", "b")]
    assert [f.result(timeout=10) for f in futures] == ["a", "b"]
  assert released == ["a", "b"]
  assert all(name.startswith("evaluation") for name in threads)


def test_an_error_in_the_worker_reaches_its_future_and_releases_the_locks():
  released = []

  def fail():
    raise OSError("disk full")

  with background.Evaluations() as evaluations:
    future = background.submit(evaluations, fail, held(released, "a"))
    with pytest.raises(OSError, match="disk full"):
      future.result(timeout=10)
  assert released == ["a"]


def test_ctrl_c_in_the_main_thread_cancels_queued_evaluations_after_the_running_one():
  released, started, go = [], threading.Event(), threading.Event()

  def running():
    started.set()
    assert go.wait(10)
    return "done"

  with pytest.raises(KeyboardInterrupt):
    with background.Evaluations() as evaluations:
      first = background.submit(evaluations, running, held(released, "running"))
      queued = background.submit(evaluations, lambda: "never", held(released, "queued"))
      assert started.wait(10)
      threading.Timer(0.2, go.set).start()
      raise KeyboardInterrupt
  assert first.result() == "done" and queued.cancelled()
  assert sorted(released) == ["queued", "running"]


def test_in_line_evaluates_at_once_and_keeps_the_error_for_the_result():
  released = []
  future = background.submit(background.InLine(), lambda: 3, held(released, "a"))
  assert future.done() and future.result() == 3 and released == ["a"]
  future = background.submit(background.InLine(), lambda: 1 / 0, held(released, "b"))
  assert released == ["a", "b"]
  with pytest.raises(ZeroDivisionError):
    future.result()
