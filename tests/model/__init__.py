"""Tests of softvq_jax.model, one file per module."""
