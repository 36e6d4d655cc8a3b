"""Moved to ``softvq_jax.quantizers.nnx``; this alias stays for one release."""

import warnings

from softvq_jax.quantizers.nnx import *  # noqa: F401,F403  pylint: disable=wildcard-import

warnings.warn("softvq_jax.nnx moved to softvq_jax.quantizers.nnx; "
              "import it from there",
              DeprecationWarning, stacklevel=2)
