"""The VAE and information-dropout maths, hand-computed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.model import variational


@pytest.mark.parametrize("mean,log_var,expected", [
    (0.0, 0.0, 0.0),
    (1.0, 0.0, 0.5 * 3),
    (0.0, np.log(2.0), 0.5 * 3 * (2 - 1 - np.log(2.0))),
])
def test_gaussian_kl_hand_computed(mean, log_var, expected):
  kl = variational.gaussian_kl(jnp.full((2, 3), mean), jnp.full((2, 3), log_var))
  np.testing.assert_allclose(kl, [expected, expected], rtol=1e-6, atol=1e-7)


def test_reparameterize_moments():
  samples = variational.reparameterize(jax.random.key(0), jnp.full((200000, 1), 2.0),
                              jnp.full((200000, 1), np.log(9.0)))
  assert float(samples.mean()) == pytest.approx(2.0, abs=0.03)
  assert float(samples.std()) == pytest.approx(3.0, abs=0.03)


def test_info_dropout_hand_computed():
  alpha = jnp.full((2, 4), 0.7)
  np.testing.assert_allclose(variational.info_dropout_penalty(alpha, 0.7), -4 * np.log(1.001),
                             rtol=1e-4)
  z = jnp.ones((100000, 1))
  noisy = variational.info_dropout_noise(jax.random.key(0), z, 0.5)
  assert float(jnp.log(noisy).std()) == pytest.approx(0.5, abs=0.01)
  assert float(jnp.min(noisy)) > 0
