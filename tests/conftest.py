"""Shared fixtures: a tiny, fast digits config; one compilation cache."""

import os
import shutil
import sys
import tempfile

import pytest

# Many tests (and the launchers they start as subprocesses, which inherit the
# environment) compile the same small programs: JAX's persistent cache
# compiles each once per test session. Set before JAX is imported.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="softvq_jax_tests_")
  os.environ["SOFTVQ_JAX_TEST_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Two test workers share 2 cores: OpenMP threads (scikit-learn's) wait
# passively, as the launchers' do (softvq_jax.launch.cli), instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_sessionfinish(session):
  """The session that made the cache (not an xdist worker) removes it."""
  if not hasattr(session.config, "workerinput") and "SOFTVQ_JAX_TEST_CACHE" in os.environ:
    shutil.rmtree(os.environ["SOFTVQ_JAX_TEST_CACHE"], ignore_errors=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # For `from configs import ...`.

from configs import digits  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def tiny_config():
  """Digits with a small MLP: trains 20 steps and evaluates in seconds."""
  config = digits.get_config("quick")
  config.model.mlp_hidden = (32, 32)
  config.eval.figures = False
  config.eval.batch_size = 512
  return config


@pytest.fixture
def mock_tfds(monkeypatch):
  """``tfds.testing.mock_data(num_examples=N)`` as ``mock_tfds(N)``, made to
  work with this library's tfds reader: preparing is a no-op under the mock
  (the real one needs TensorFlow), and the mock's ``__getitems__``, a partial
  that gets no self, is given one that takes the keys first, as the real data
  source's method does."""
  from tensorflow_datasets import testing as tfds_testing  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.testing import mocking  # pylint: disable=g-import-not-at-top

  from softvq_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(input_pipeline, "tensorflow_available", lambda: True)
  monkeypatch.setattr(mocking, "_getitems",
                      lambda keys, generator: [generator[k] for k in keys])
  return lambda num_examples: tfds_testing.mock_data(num_examples=num_examples)
