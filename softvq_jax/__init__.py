"""softvq_jax: quantization-regularized autoencoders (Wu & Flierl, AAAI 2020)."""
