"""Tests of softvq_jax.data, one file per module."""
