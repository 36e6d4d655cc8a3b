"""Moved to ``softvq_jax.quantizers.streaming``; this alias stays for one release."""

import warnings

from softvq_jax.quantizers.streaming import *  # noqa: F401,F403  pylint: disable=wildcard-import

warnings.warn("softvq_jax.streaming moved to softvq_jax.quantizers.streaming; "
              "import it from there",
              DeprecationWarning, stacklevel=2)
