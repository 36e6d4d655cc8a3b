"""Tests of softvq_jax.quantizers, one file per module."""
