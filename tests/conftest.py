"""Shared fixtures: a tiny, fast digits config."""

import os
import sys

import pytest

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
