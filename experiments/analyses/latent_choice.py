"""Which latent the clustering reads: the paper leaves it open for two rows.

  python -m experiments.analyses.latent_choice --workdirs=RUN[,RUN...] \
      --out=experiments/results/rows_against_the_paper/latent_choice_mnist.jsonl

For each finished run (a workdir with ``config.json`` and checkpoints),
restores its last checkpoint and runs the evaluation suite (its own
``config.eval``, on the split its ``config.data`` evaluates) on three latents:

* ``z_e``: the encoder's output, the VAE's mean (what ``eval.json`` reports);
* ``decoder_input``: what the decoder reads at test time (VQ: z_q; soft VQ:
  the soft z_q; VAE: the mean again);
* ``train_sample``: what the decoder reads in training (VAE: a posterior
  sample; information dropout: a noisy z; soft VQ with noise: a noisy z_q).

Prints one JSON line per run and latent.
"""

import functools

from absl import app
from absl import flags
import jax
import numpy as np

from experiments.common import jsonl
from experiments.common import restore
from softvq_jax import evaluation
from softvq_jax.model import autoencoder

flags.DEFINE_list("workdirs", [], "Finished runs' workdirs.")
flags.DEFINE_string("out", None, "Also write the JSON lines to this file.")
FLAGS = flags.FLAGS
LATENTS = ("z_e", "decoder_input", "train_sample")


def latents(model: autoencoder.Autoencoder, variables, images: np.ndarray, kind: str,
            batch_size: int, seed: int) -> np.ndarray:
  """``(N, d)`` latents of one ``kind`` (module docstring), in batches."""
  def one_batch(module, x):
    if kind == "z_e":
      return module.encode(x)
    z, _ = module.bottleneck(module.encoder(x), train=kind == "train_sample")
    return z

  fn = jax.jit(lambda v, x, rng: model.apply(v, x, method=one_batch, rngs={"noise": rng}))
  rng = jax.random.key(seed)
  return np.concatenate([
      np.asarray(fn(variables, images[i:i + batch_size], jax.random.fold_in(rng, i)))
      for i in range(0, len(images), batch_size)])


def evaluate_run(run_dir: str):
  """One result dict per latent kind of the run in ``run_dir``."""
  config, data, model, variables = restore.load_run(run_dir)
  encode = functools.partial(latents, model, variables, batch_size=config.eval.batch_size,
                             seed=config.seed)
  for kind in LATENTS:
    results = evaluation.evaluate(encode(data.train_images, kind), data.train_labels,
                                  encode(data.eval_images, kind), data.eval_labels,
                                  config.eval, data.num_classes, config.seed)
    yield {"run": run_dir, "latent": kind, "eval_split": data.eval_split, **results}


def main(_):
  lines = []
  for run_dir in FLAGS.workdirs:
    for result in evaluate_run(run_dir):
      jsonl.emit(lines, result, sort_keys=True)
  jsonl.write(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
