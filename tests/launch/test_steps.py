"""The train chunk: its cheap NaN guard computes the full guard's bits, or
says that a step was not finite."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.launch import steps
from softvq_jax.model import autoencoder

NUM_STEPS = 24


def _program(tiny_config, bottleneck, num_runs, runs_together, nan_image):
  """A tiny MLP's initial state for ``num_runs`` runs, its images (image 0
  all NaN if ``nan_image``) and the kwargs shared by both guards."""
  tiny_config.model.bottleneck = bottleneck
  model_fn = functools.partial(autoencoder.make_model, tiny_config.model, (8, 8, 1))
  optimizer = steps.make_optimizer(tiny_config.train)
  images = np.random.default_rng(0).random((48, 8, 8, 1)).astype(np.float32)
  if nan_image:
    images[0] = np.nan
  init = steps.over_runs(lambda rng: steps.init_state(rng, model_fn({}), optimizer,
                                                      jnp.zeros((1, 8, 8, 1))),
                         num_runs, [0], runs_together)
  rngs = jax.random.split(jax.random.key(0), num_runs)
  kwargs = dict(model_fn=model_fn, optimizer=optimizer, batch_size=8, pixel_var=0.1)
  return init(rngs), jnp.asarray(images), rngs, kwargs


# Every way of training runs together with soft VQ; hard VQ's guard once.
@pytest.mark.parametrize("bottleneck,num_runs,runs_together", [
    ("soft_vq", 1, "vmap"), ("soft_vq", 3, "vmap"), ("soft_vq", 3, "loop"), ("vq", 3, "vmap")])
@pytest.mark.parametrize("nan_image", [False, True])
@pytest.mark.slow
def test_the_cheap_guard_computes_the_full_guards_bits_or_says_not_finite(
    tiny_config, bottleneck, num_runs, runs_together, nan_image):
  state, images, rngs, kwargs = _program(tiny_config, bottleneck, num_runs, runs_together,
                                         nan_image)
  cheap, full = (jax.jit(functools.partial(
      steps.train_chunk, num_steps=NUM_STEPS, num_runs=num_runs, runs_together=runs_together,
      guard=guard,
      **kwargs))(state, images, rngs, {}) for guard in (steps.chunk_guard(num_runs, runs_together),
                                                          "gradients"))
  reached = np.asarray(full[0][0].step)
  if nan_image:  # The NaN image was drawn: the full guard stopped those runs there.
    assert not cheap[1] and not full[1]
    assert reached.min() < NUM_STEPS
    assert not np.isfinite(full[0][1]["loss"][reached.argmin(), reached.min()])
  else:  # Bit for bit: states and every step's metrics.
    assert cheap[1] and full[1]
    jax.tree.map(np.testing.assert_array_equal, cheap[0], full[0])
    np.testing.assert_array_equal(reached, NUM_STEPS)


def test_adam_keeps_a_non_finite_gradient_to_the_end_of_a_chunk(tiny_config):
  """train_chunk's cheap guard relies on it: a NaN or inf gradient leaves a
  non-finite first moment however many finite steps follow."""
  optimizer = steps.make_optimizer(tiny_config.train)
  params = jnp.zeros(4)
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    opt_state = optimizer.init(params)
    gradients = [jnp.ones(4).at[1].set(bad)] + [jnp.full(4, g) for g in (-1e30, 0.0, 1e30)]
    for g in gradients:
      _, opt_state = optimizer.update(g, opt_state, params)
    assert not np.isfinite(opt_state[0].mu[1]) and np.isfinite(opt_state[0].mu[0])
