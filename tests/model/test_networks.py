"""The paper's MLP and CNN: parameter counts, shapes, initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.model import networks


def _count(module, shape):
  variables = module.init(jax.random.key(0), jnp.zeros(shape))
  return sum(p.size for p in jax.tree.leaves(variables["params"]))


@pytest.mark.slow
@pytest.mark.parametrize("module,shape,expected", [
    # 784*500+500 + 500*500+500 + 500*2000+2000
    (networks.MLPEncoder(), (1, 28, 28, 1), 392500 + 250500 + 1002000),
    # 64*2000+2000 + 2000*500+500 + 500*500+500 + 500*784+784
    (networks.MLPDecoder((28, 28, 1)), (1, 64), 130000 + 1000500 + 250500 + 392784),
    # 3x3 convs 3-64-128-256-512 with biases.
    (networks.CNNEncoder(), (1, 32, 32, 3),
     (27 * 64 + 64) + (576 * 128 + 128) + (1152 * 256 + 256) + (2304 * 512 + 512)),
    # Dense 256 -> 2*2*512, then 3x3 transposed convs 512-512-256-128-3.
    (networks.CNNDecoder((32, 32, 3)), (1, 256),
     (256 * 2048 + 2048) + (4608 * 512 + 512) + (4608 * 256 + 256)
     + (2304 * 128 + 128) + (1152 * 3 + 3)),
])
def test_parameter_counts(module, shape, expected):
  assert _count(module, shape) == expected


@pytest.mark.slow
def test_cnn_shapes():
  h = networks.CNNEncoder().apply(
      networks.CNNEncoder().init(jax.random.key(0), jnp.zeros((2, 32, 32, 3))),
      jnp.zeros((2, 32, 32, 3)))
  assert h.shape == (2, 2 * 2 * 512)
  decoder = networks.CNNDecoder((32, 32, 3))
  out = decoder.apply(decoder.init(jax.random.key(0), jnp.zeros((2, 256))), jnp.zeros((2, 256)))
  assert out.shape == (2, 32, 32, 3)


def test_glorot_uniform_weights():
  variables = networks.MLPEncoder().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  kernel = variables["params"]["dense_0"]["kernel"]
  limit = np.sqrt(6 / (784 + 500))
  assert float(jnp.max(jnp.abs(kernel))) <= limit
  assert float(jnp.std(kernel)) == pytest.approx(limit / np.sqrt(3), rel=0.02)
