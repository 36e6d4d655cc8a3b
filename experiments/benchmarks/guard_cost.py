"""What the NaN guard costs, and where vmapped runs lose to looped ones.

  python -m experiments.benchmarks.guard_cost \
      --out=experiments/results/cpu_speed/guard_cost_cpu.jsonl
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      taskset -c 0 python -m experiments.benchmarks.guard_cost \
      --out=experiments/results/cpu_speed/guard_cost_cpu_one_thread.jsonl

The soft VQ-VAE step of the paper's MNIST MLP at batch 32 (as
``benchmark.py``), ms per step per run, the best of ``--repeats`` chunks of
``--steps`` steps, the variants of each part timed in turn within every
repeat so that they see the same machine:
* ``guard_<guard>_runs<R>``: ``steps.train_steps`` with each ``guard`` of
  ``train_step`` (``gradients``, the full guard; ``loss``; ``none``) for one
  run and for 3 runs vmapped, where a cond is a select;
* ``<part>_<runs_together>3``: 3 runs vmapped or looped (``steps.over_runs``) doing
  part of a step: ``forward`` (the loss alone), ``forward_backward`` (loss,
  gradients and an SGD update), ``adam`` (the Adam update of a fixed
  gradient).
"""

import functools
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import jsonl
from softvq_jax.launch import presets
from softvq_jax.launch import steps
from softvq_jax.model import autoencoder

flags.DEFINE_integer("steps", 200, "Steps per timed chunk.")
flags.DEFINE_integer("repeats", 5, "Timed chunks per variant; the best counts.")
flags.DEFINE_string("out", None, "Also write the JSON lines to this file.")
flags.DEFINE_list("variants", None, "Time only these of variant_names(); default all.")
FLAGS = flags.FLAGS
NUM_RUNS = 3
# (runs, the guards timed with that many runs); the parts of a step.
GUARDS = ((1, ("gradients", "loss", None)), (NUM_RUNS, ("gradients", None)))
PARTS = ("forward", "forward_backward", "adam")


def guard_name(guard, num_runs):
  return f"guard_{guard or 'none'}_runs{num_runs}"


def part_name(part, runs_together):
  return f"{part}_{runs_together}{NUM_RUNS}"


def variant_names():
  """Every variant this script times, in order."""
  return ([guard_name(g, n) for n, modes in GUARDS for g in modes]
          + [part_name(p, r) for p in PARTS for r in steps.RUNS_TOGETHER])


def setup():
  config = presets.get_base_config()
  model_fn = functools.partial(autoencoder.make_model, config.model, (28, 28, 1))
  optimizer = steps.make_optimizer(config.train)
  images = jnp.asarray(np.random.default_rng(0).random((60000, 28, 28, 1), np.float32))
  init = lambda rng: steps.init_state(rng, model_fn({}), optimizer, jnp.zeros((1, 28, 28, 1)))
  return model_fn, optimizer, images, init


def best_of(programs, args):
  """ms per step per run of each ``programs[name] = (fn, num_runs)`` in
  ``--variants`` (compiled only then)."""
  programs = {name: program for name, program in programs.items()
              if not FLAGS.variants or name in FLAGS.variants}
  for fn, _ in programs.values():
    jax.block_until_ready(fn(*args[fn]))
  best = {name: float("inf") for name in programs}
  for _ in range(FLAGS.repeats):
    for name, (fn, num_runs) in programs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args[fn]))
      seconds = (time.perf_counter() - start) / FLAGS.steps / num_runs
      best[name] = min(best[name], 1000 * seconds)
  return best


def guards(model_fn, optimizer, images, init):
  kwargs = dict(model_fn=model_fn, optimizer=optimizer, batch_size=32, pixel_var=0.1,
                num_steps=FLAGS.steps)
  programs, args = {}, {}
  for num_runs, guard_modes in GUARDS:
    rngs = jax.random.split(jax.random.key(0), num_runs)
    state = jax.jit(steps.over_runs(init, num_runs, [0]))(rngs)
    for guard in guard_modes:
      fn = jax.jit(steps.over_runs(functools.partial(steps.train_steps, guard=guard, **kwargs),
                                   num_runs, [0, None, 0, 0]))
      programs[guard_name(guard, num_runs)] = (fn, num_runs)
      args[fn] = (state, images, rngs, {})
  return best_of(programs, args)


def parts(model_fn, optimizer, images, init):
  def draw(state, rng):
    data_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    return images[jax.random.randint(data_rng, (32,), 0, images.shape[0])], noise_rng

  def forward(state, rng):
    x, noise_rng = draw(state, rng)
    loss, _ = steps.loss_fn(state.params, state.model_state, x, noise_rng, model=model_fn({}),
                            pixel_var=0.1)
    return state.replace(step=state.step + 1,
                         params=jax.tree.map(lambda p: p + 1e-12 * loss, state.params))

  def forward_backward(state, rng):
    x, noise_rng = draw(state, rng)
    grads = jax.grad(steps.loss_fn, has_aux=True)(state.params, state.model_state, x, noise_rng,
                                                  model=model_fn({}), pixel_var=0.1)[0]
    return state.replace(step=state.step + 1,
                         params=jax.tree.map(lambda p, g: p - 1e-9 * g, state.params, grads))

  def adam(state, rng):
    del rng
    grads = jax.tree.map(lambda p: 1e-3 * p, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, opt_state=opt_state,
                         params=optax.apply_updates(state.params, updates))

  rngs = jax.random.split(jax.random.key(0), NUM_RUNS)
  state = jax.jit(jax.vmap(init))(rngs)
  programs, args = {}, {}
  for name, part in zip(PARTS, (forward, forward_backward, adam)):
    chunk = lambda state, rng, part=part: jax.lax.scan(
        lambda s, _: (part(s, rng), None), state, None, length=FLAGS.steps)[0]
    for runs_together in steps.RUNS_TOGETHER:
      fn = jax.jit(steps.over_runs(chunk, NUM_RUNS, [0, 0], runs_together))
      programs[part_name(name, runs_together)] = (fn, NUM_RUNS)
      args[fn] = (state, rngs)
  return best_of(programs, args)


def main(_):
  unknown = sorted(set(FLAGS.variants or ()) - set(variant_names()))
  if unknown:
    raise app.UsageError(f"--variants: unknown {unknown}; the variants are {variant_names()}")
  lines = []
  setting = setup()
  for timed in (guards, parts):
    for name, ms in timed(*setting).items():
      jsonl.emit(lines, {"name": f"{name}_ms_per_step_per_run", "value": round(ms, 4),
                         "unit": "ms"})
  jsonl.write(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
