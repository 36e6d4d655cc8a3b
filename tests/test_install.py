"""The library installs light: its modules need jax, flax and numpy alone."""

import pkgutil
import subprocess
import sys

from softvq_jax import quantizers
from tests import ROOT

# Every module of the quantizer library, and the paper's model without its registry (which
# reads configs).
LIBRARY = (["softvq_jax.quantizers"]
           + [f"softvq_jax.quantizers.{m.name}" for m in pkgutil.iter_modules(quantizers.__path__)]
           + ["softvq_jax.model.bottlenecks", "softvq_jax.model.networks",
              "softvq_jax.model.variational"])
# What only the launcher (the `experiments` extra) may import. (optax is not
# here: flax depends on it, and flax.nnx imports it.)
LAUNCHER_ONLY = ("tensorflow_datasets", "orbax", "matplotlib", "sklearn", "tensorboardX",
                 "ml_collections")


def test_importing_the_library_imports_none_of_the_launchers_dependencies():
  assert len(LIBRARY) > 10
  code = ("import sys\n"
          + "".join(f"import {module}\n" for module in LIBRARY)
          + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({LAUNCHER_ONLY!r})))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
  assert result.stdout.strip() == "[]", result.stdout
