"""softvq_jax: quantization-regularized autoencoders (Wu & Flierl, AAAI 2020).

The quantizer library for any JAX model is ``softvq_jax.quantizers`` (linen, NNX, pure functions);
the paper's autoencoders are ``softvq_jax.model`` over ``softvq_jax.data``; and the experiment
launcher (``python -m softvq_jax.main`` / ``softvq_jax.sweep``) is ``softvq_jax.launch``.
"""
