"""What the quantizer tests share: rngs, data, one training call, the codebook in use, a
Python on 4 forced CPU devices."""

import os
import subprocess
import sys

import jax
import numpy as np

from softvq_jax import quantizers
from softvq_jax.quantizers import nnx as vq_nnx
from tests import ROOT

PARAMS_RNG = {"params": jax.random.key(0)}  # Where nothing else should be random.
RNGS = {"params": jax.random.key(0), "noise": jax.random.key(1)}
LINEN = {"hard": quantizers.VectorQuantizer, "soft": quantizers.SoftVectorQuantizer}
FSQ_LEVELS = (8, 5, 5, 3)  # Even and odd levels.
NNX = {"hard": vq_nnx.VectorQuantizer, "soft": vq_nnx.SoftVectorQuantizer}


def random_problem(n, k, d, scale=1.0, seed=0):
  """``z (n, d)``, a codebook ``(k, d)``, per-codeword log-variances and a cotangent."""
  rng = np.random.default_rng(seed)
  return (scale * rng.normal(size=(n, d)).astype(np.float32),
          scale * rng.normal(size=(k, d)).astype(np.float32),
          (0.5 * rng.normal(size=(k,))).astype(np.float32),
          rng.normal(size=(n, d)).astype(np.float32))


def clustered(n=256, k=8, d=4, seed=0):
  """``n`` points around ``k`` well-separated centres."""
  rng = np.random.default_rng(seed)
  centres = 5.0 * rng.normal(size=(k, d))
  return (centres[rng.integers(0, k, n)] + 0.1 * rng.normal(size=(n, d))).astype(np.float32)


def train(module, variables, *args, **kwargs):
  """One training call of a linen quantizer: ``(out, aux, updated variables)``."""
  (out, aux), state = module.apply(variables, *args, train=True, mutable=["ema"], **kwargs)
  return out, aux, {**variables, **state}


def initialize(module, variables, z, seed=0, **kwargs):
  """``variables`` after the module's ``initialize`` on the batch ``z``."""
  return module.apply(variables, z, method="initialize", mutable=True,
                      rngs={"params": jax.random.key(seed)}, **kwargs)[1]


def ready(module, z, *args, **kwargs):
  """A linen quantizer's variables: ``init`` on ``z``, then ``initialize`` on it."""
  return initialize(module, module.init(PARAMS_RNG, z, *args, train=False), z, **kwargs)


def codebook_of(variables):
  """The codebook in use: the EMA one, or the parameter."""
  if "codebook" in variables.get("ema", {}):
    return variables["ema"]["codebook"]
  return variables["params"]["codebook"]


def fsq_reference(z, levels, eps=1e-3):
  """Mentzer et al.'s bound-and-round in float64 numpy."""
  levels = np.asarray(levels, np.float64)
  half_l = (levels - 1) * (1 + eps) / 2
  offset = np.where(levels % 2 == 0, 0.5, 0.0)
  bounded = np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset
  return np.round(bounded) / (levels // 2)


def on_4_devices(*args):
  """``python *args`` from the repository root on 4 forced CPU devices: the CompletedProcess."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=240)
