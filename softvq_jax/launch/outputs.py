"""What a finished run leaves beside its ``eval.json``: the evaluation
latents (``latents.npz``) and, with ``eval.figures``, its figures
(``softvq_jax.launch.figures``).

A run is finished when all of them are on disk: ``missing`` names those
that are not (deleted, or never written by an older version), and
``train.train_and_evaluate`` makes them again from the final checkpoint,
leaving ``eval.json`` as it was.
"""

import functools
import io
import os
from typing import List

import jax
import numpy as np

from softvq_jax.data import input_pipeline
from softvq_jax.launch import figures
from softvq_jax.launch import runs as runs_lib
from softvq_jax.launch import workdir as workdir_lib
from softvq_jax.model import autoencoder

LATENTS_FILE = "latents.npz"
# The figures every trained run with eval.figures has (codebook usage and
# curves depend on the bottleneck and the log).
FIGURE_FILES = ("tsne.png", "reconstructions.png")


def missing(run: runs_lib.Run) -> List[str]:
  """The outputs that ``run``'s workdir lacks."""
  names = [LATENTS_FILE] + (list(FIGURE_FILES) if run.config.eval.figures else [])
  return [name for name in names if not os.path.exists(os.path.join(run.workdir, name))]


def encode(model: autoencoder.Autoencoder, variables, images: np.ndarray,
           batch_size: int) -> np.ndarray:
  """Downstream latents ``(N, d)`` of ``images``: one jitted program that maps
  the model over batches (the last one zero-padded) on the device, compiled
  once per model and shape (models are equal when their configs are)."""
  count = len(images)
  padded = np.concatenate([images, np.zeros(((-count) % batch_size,) + images.shape[1:],
                                            images.dtype)])
  batches = padded.reshape((-1, batch_size) + images.shape[1:])
  latents = _encode_batches(model, variables, batches)
  return np.asarray(latents).reshape(len(padded), -1)[:count]


@functools.partial(jax.jit, static_argnames="model")
def _encode_batches(model: autoencoder.Autoencoder, variables, batches: jax.Array) -> jax.Array:
  apply = functools.partial(model.apply, variables, method=autoencoder.Autoencoder.encode)
  return jax.lax.map(apply, batches)


def write(run: runs_lib.Run, model: autoencoder.Autoencoder, variables,
          data: input_pipeline.Splits, eval_latents: np.ndarray) -> None:
  """The run's figures (with ``eval.figures``), then ``latents.npz`` (atomically),
  which keeps the t-SNE embedding of its figure (``tsne``, made with the
  run's seed) for the sweep's table to reuse."""
  config = run.config
  embedding = {}
  if config.eval.figures:
    xy = figures.write_all(run.workdir, model, variables, data, eval_latents,
                           title=f"{config.model.bottleneck} on {config.data.name} "
                           f"({data.eval_split})", tsne_points=config.eval.tsne_points,
                           seed=config.seed)
    embedding = {"tsne": xy}
  latents = io.BytesIO()
  np.savez(latents, latents=eval_latents, labels=data.eval_labels, split=data.eval_split,
           **embedding)
  workdir_lib.write_atomic(os.path.join(run.workdir, LATENTS_FILE), latents.getvalue())


def remake(run: runs_lib.Run, model: autoencoder.Autoencoder, variables,
           data: input_pipeline.Splits) -> None:
  """Writes the outputs of a finished run again from its trained variables."""
  eval_latents = encode(model, variables, data.eval_images, run.config.eval.batch_size)
  write(run, model, variables, data, eval_latents)
