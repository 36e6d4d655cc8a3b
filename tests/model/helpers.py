"""What the model tests share: sizes, rngs and one training call of a bottleneck."""

import jax

D, K = 6, 10  # Latent size and codebook size of the small bottlenecks.
RNGS = {"params": jax.random.key(0), "noise": jax.random.key(1)}


def apply(module, h, train=True):
  """Initialises ``module`` on ``h`` and applies it: ``(variables, out, aux)``."""
  variables = module.init(RNGS, h, train=train)
  (out, aux), _ = module.apply(variables, h, train=train, rngs={"noise": jax.random.key(2)},
                               mutable=["ema"])
  return variables, out, aux
