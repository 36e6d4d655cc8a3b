"""Issue 35's residual-FSQ repro, shared by both halves of
``residual_fsq_error.py`` (numpy only: the torch half imports it too)."""

import numpy as np

LEVELS = (8, 5, 5, 5)


def points(seed: int, num_points: int) -> np.ndarray:
  """z ~ U(-0.9, 0.9)^4, float32, ``(num_points, 4)``."""
  return np.random.default_rng(seed).uniform(-0.9, 0.9, (num_points, 4)).astype(np.float32)
