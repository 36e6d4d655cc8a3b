"""Moved to ``softvq_jax.quantizers.functional`` (VQ) and ``softvq_jax.model.variational``
(VAE, information dropout); this alias stays for one release."""

import warnings

from softvq_jax.model.variational import *  # noqa: F401,F403  pylint: disable=wildcard-import
from softvq_jax.quantizers.functional import *  # noqa: F401,F403  pylint: disable=wildcard-import

warnings.warn("softvq_jax.bottlenecks moved to softvq_jax.quantizers.functional; "
              "import it from there",
              DeprecationWarning, stacklevel=2)
