"""softvq_jax's tests, one folder per part of the package (quantizers, model, data, launch)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The repository.
