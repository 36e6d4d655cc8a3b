"""The benchmark tokenizer's convolution weights, drawn once with numpy, so
that the JAX and PyTorch halves of ``quantizer_benchmark.py`` start from the
same network and differ in their quantizers alone."""

from typing import Dict, Tuple

import numpy as np

# name -> (kernel height, width, input channels, output channels or None for
# the latent size), in the order the layers run: three encoder convolutions,
# then two decoder ones.
LAYERS = (("encoder_patch", (4, 4, 1, 64)), ("encoder_mix", (3, 3, 64, 64)),
          ("encoder_out", (1, 1, 64, None)), ("decoder_mix", (3, 3, None, 64)),
          ("decoder_out", (1, 1, 64, 16)))


def conv_weights(seed: int, latent: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """``{name: (kernel (kh, kw, in, out), bias (out,))}``, float32, each
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default for both)."""
  rng = np.random.default_rng([seed, 2024])
  weights = {}
  for name, shape in LAYERS:
    shape = tuple(latent if n is None else n for n in shape)
    bound = 1.0 / np.sqrt(np.prod(shape[:3]))
    weights[name] = (rng.uniform(-bound, bound, shape).astype(np.float32),
                     rng.uniform(-bound, bound, shape[3:]).astype(np.float32))
  return weights
