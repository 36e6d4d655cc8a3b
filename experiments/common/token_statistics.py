"""Codebook usage and perplexity of a test set's tokens, with numpy alone
(both halves of ``quantizer_benchmark.py`` use it; the PyTorch half has no JAX)."""

from typing import Dict

import numpy as np

# The codebooks of the benchmark's quantizers with more than one (stages,
# heads, groups times stages): the trailing index columns of each token.
CODEBOOKS = {"residual_vq4": 4, "vq_heads4": 4, "grouped_rvq2x2": 4}


def code_statistics(indices: np.ndarray, num_codes: int, name: str) -> Dict[str, float]:
  """``test_usage`` (the fraction of the ``num_codes`` codes used) and
  ``test_perplexity`` (exp entropy of the code histogram) of quantizer
  ``name``'s integer ``indices``, whose trailing axes hold its
  ``CODEBOOKS`` (default 1): both are averaged over its codebooks."""
  columns = indices.reshape(-1, CODEBOOKS.get(name, 1))
  usage, perplexity = [], []
  for column in columns.T:
    counts = np.bincount(column, minlength=num_codes)
    p = counts / counts.sum()
    usage.append(np.count_nonzero(counts) / num_codes)
    perplexity.append(float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))))
  return {"test_usage": round(float(np.mean(usage)), 4),
          "test_perplexity": round(float(np.mean(perplexity)), 2)}
