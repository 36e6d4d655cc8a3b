"""Codebook usage and perplexity of a test set's tokens, with numpy alone
(both halves of ``quantizer_benchmark.py`` use it; the PyTorch half has no JAX)."""

from typing import Dict

import numpy as np


def code_statistics(indices: np.ndarray, num_codes: int, stages: bool) -> Dict[str, float]:
  """``test_usage`` (the fraction of the ``num_codes`` codes used) and
  ``test_perplexity`` (exp entropy of the code histogram) of integer
  ``indices``; with ``stages``, the last axis holds a residual quantizer's
  stages and both are averaged over them."""
  columns = indices.reshape(-1, indices.shape[-1]) if stages else indices.reshape(-1, 1)
  usage, perplexity = [], []
  for column in columns.T:
    counts = np.bincount(column, minlength=num_codes)
    p = counts / counts.sum()
    usage.append(np.count_nonzero(counts) / num_codes)
    perplexity.append(float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))))
  return {"test_usage": round(float(np.mean(usage)), 4),
          "test_perplexity": round(float(np.mean(perplexity)), 2)}
