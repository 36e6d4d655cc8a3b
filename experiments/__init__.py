"""The experiments behind experiments/results/, run from the repository's root as
``python -m experiments.<group>.<script>``: ``benchmarks``, ``faults``, ``analyses``, and the
helpers they share in ``common``."""
