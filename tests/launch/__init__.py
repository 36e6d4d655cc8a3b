"""Tests of softvq_jax.launch, one file per module."""
