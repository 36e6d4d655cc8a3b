"""The library installs light: its modules need jax, flax and numpy alone."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ("bottlenecks", "streaming", "quantizer_core", "quantizers", "nnx",
           "codebook_health", "kmeans", "layers", "networks")
# What only the launcher (the `experiments` extra) may import. (optax is not
# here: flax depends on it, and flax.nnx imports it.)
LAUNCHER_ONLY = ("tensorflow_datasets", "orbax", "matplotlib", "sklearn", "tensorboardX",
                 "ml_collections")


def test_importing_the_library_imports_none_of_the_launchers_dependencies():
  code = ("import sys\n"
          + "".join(f"import softvq_jax.{module}\n" for module in LIBRARY)
          + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({LAUNCHER_ONLY!r})))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
  assert result.stdout.strip() == "[]", result.stdout
