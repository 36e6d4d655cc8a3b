"""PNG figures of a finished run, written into its workdir.

* ``tsne.png``: t-SNE of evaluation latents coloured by label (paper, Fig. 4;
  the sweep draws one panel per row of its table with ``tsne``);
* ``reconstructions.png``: evaluation images (top) and reconstructions;
* ``codebook_usage.png``: how often each codeword is the nearest / most
  probable one on the evaluation split (quantizers only);
* ``training_curves.png``: loss terms and codebook perplexity from
  ``metrics.jsonl``.

Figures are drawn through matplotlib's object API (``figure.Figure``), not
pyplot's global state, so that an evaluation in a worker thread
(``softvq_jax.launch.background``) can draw while another thread does.
"""

import os
from typing import Optional, Sequence, Tuple

from matplotlib import figure
import numpy as np
import sklearn.manifold

from softvq_jax.launch import training_log
from softvq_jax.model import autoencoder

NUM_RECONSTRUCTIONS = 10
TSNE_COLUMNS = 4


def _subplots(*args, figsize: Tuple[float, float], **kwargs):
  """``(fig, axes)``: pyplot's ``subplots`` on a figure of its own."""
  fig = figure.Figure(figsize=figsize)
  return fig, fig.subplots(*args, **kwargs)


def tsne_embedding(latents: np.ndarray, num_points: int, seed: int) -> np.ndarray:
  """2-D t-SNE ``(n, 2)`` of the first ``n = min(num_points, N)`` latents
  ``(N, d)``: scikit-learn's Barnes-Hut, PCA start, perplexity 30 (less for
  few points). Deterministic for a seed on one machine, so that a table
  reuses a run's embedding (``tables.write_tsne``)."""
  latents = latents[:num_points]
  return sklearn.manifold.TSNE(2, init="pca", random_state=seed,
                               perplexity=min(30.0, (len(latents) - 1) / 3)
                               ).fit_transform(latents)


def tsne(path: str, panels: Sequence[Tuple[str, np.ndarray, np.ndarray]]) -> None:
  """t-SNE scatters, one per ``(title, embedding (n, 2), labels (N >= n,))``
  (``tsne_embedding``), coloured by label, in rows of at most TSNE_COLUMNS."""
  columns = min(len(panels), TSNE_COLUMNS)
  rows = -(-len(panels) // columns)
  fig, axes = _subplots(rows, columns, figsize=(5 * columns, 5 * rows), squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.set_axis_off()
  for ax, (title, xy, labels) in zip(axes.flat, panels):
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels[:len(xy)], cmap="tab10", s=3)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title)
  axes[0, -1].legend(*scatter.legend_elements(), loc="best", fontsize=7, markerscale=0.8)
  fig.savefig(path, dpi=110, bbox_inches="tight")


def per_seed(path: str, labels: Sequence[str], *, title: str,
             panels: Sequence[Tuple[str, Sequence[Sequence[float]],
                                    Sequence[Optional[float]]]]) -> None:
  """Panels side by side under ``title``, one row of each per label, from
  ``(name, values, references)``: ``values[i]`` are row i's per-seed values (a dot each, a bar
  at their mean), ``references[i]`` a value to mark (a cross) or None."""
  y = np.arange(len(labels))[::-1]
  width = 3.2 * len(panels) + 0.07 * max(len(label) for label in labels)
  fig, axes = _subplots(1, len(panels), figsize=(width, 1.2 + 0.4 * len(labels)),
                        sharey=True, squeeze=False)
  fig.suptitle(title)
  for ax, (name, values, references) in zip(axes[0], panels):
    means = [np.mean(v) for v in values]
    ax.barh(y, means, color="0.85")
    for row, seeds in zip(y, values):
      ax.plot(seeds, np.full(len(seeds), row), "o", color="C0", ms=4)
    marked = [(row, ref) for row, ref in zip(y, references) if ref is not None]
    if marked:
      ax.plot([ref for _, ref in marked], [row for row, _ in marked], "x", color="C3",
              label="paper")
    shown = [x for v in values for x in v] + [ref for _, ref in marked]
    margin = 0.1 * (max(shown) - min(shown)) + 1e-9
    ax.set_xlim(min(shown) - margin, max(shown) + margin)
    ax.set_title(name)
  axes[0, 0].set_yticks(y, labels)
  if any(ref is not None for _, _, refs in panels for ref in refs):
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper right", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def curve(path: str, *, title: str, xlabel: str, xs: Sequence[float],
          panels: Sequence[Tuple[str, Sequence[Sequence[float]]]]) -> None:
  """Panels side by side under ``title``, one per ``(name, values)``:
  ``values[i]`` are the per-seed values at ``xs[i]`` (a dot each, the mean
  joined by a line). The x axis is log2 where ``xs`` are positive and span
  a factor of 8 or more (codebook sizes)."""
  order = np.argsort(xs)
  xs = np.asarray(xs, dtype=float)[order]
  log = xs.min() > 0 and xs.max() >= 8 * xs.min()
  fig, axes = _subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
  fig.suptitle(title)
  for ax, (name, values) in zip(axes[0], panels):
    values = [values[i] for i in order]
    for x, seeds in zip(xs, values):
      ax.plot(np.full(len(seeds), x), seeds, "o", color="C0", ms=3, alpha=0.6)
    ax.plot(xs, [np.mean(v) for v in values], "-", color="C0")
    if log:
      ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_title(name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _show(ax, image: np.ndarray) -> None:
  image = np.clip(image - image.min() if image.min() < 0 else image, 0, 1)
  ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
  ax.axis("off")


def reconstructions(path: str, images: np.ndarray, recons: np.ndarray) -> None:
  """Two rows: ``images`` and their ``recons``, both ``(n, H, W, C)``."""
  n = len(images)
  fig, axes = _subplots(2, n, figsize=(n, 2.2))
  for i in range(n):
    _show(axes[0, i], images[i])
    _show(axes[1, i], recons[i])
  fig.savefig(path, dpi=100, bbox_inches="tight")


def codebook_usage(path: str, indices: np.ndarray, num_codewords: int) -> None:
  """Bar chart of codeword counts, sorted by frequency."""
  counts = np.sort(np.bincount(indices.reshape(-1), minlength=num_codewords))[::-1]
  fig, ax = _subplots(figsize=(6, 3))
  ax.bar(np.arange(num_codewords), counts, width=1.0)
  ax.set_xlabel("codeword (sorted by use)")
  ax.set_ylabel("assigned latents")
  ax.set_title(f"{int((counts > 0).sum())} of {num_codewords} codewords used")
  fig.savefig(path, dpi=120, bbox_inches="tight")


def training_curves(path: str, records: Sequence[dict]) -> None:
  """One panel per logged metric against the step."""
  keys = [k for k in autoencoder.METRICS if k in records[0]]
  fig, axes = _subplots(1, len(keys), figsize=(3 * len(keys), 2.6), squeeze=False)
  steps = [r["step"] for r in records]
  for ax, key in zip(axes[0], keys):
    ax.plot(steps, [r[key] for r in records])
    ax.set_title(key)
    ax.set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def write_all(workdir: str, model: autoencoder.Autoencoder, variables, data,
              eval_latents: np.ndarray, *, title: str, tsne_points: int,
              seed: int) -> np.ndarray:
  """All figures of a run (see the module docstring).

  Args:
    workdir: where the PNGs go; its ``metrics.jsonl`` gives the curves.
    model, variables: the trained model.
    data: the run's ``input_pipeline.Splits``.
    eval_latents: the evaluation split's latents, ``(N, d)``.
    title: of the t-SNE panel.
    tsne_points, seed: t-SNE of the first ``tsne_points`` latents, seeded.

  Returns:
    The t-SNE embedding, ``(min(tsne_points, N), 2)``.
  """
  xy = tsne_embedding(eval_latents, tsne_points, seed)
  tsne(os.path.join(workdir, "tsne.png"), [(title, xy, data.eval_labels)])
  images = data.eval_images[:NUM_RECONSTRUCTIONS]
  recons, aux = model.apply(variables, images, method=autoencoder.Autoencoder.reconstruct)
  reconstructions(os.path.join(workdir, "reconstructions.png"), images, np.asarray(recons))
  if "indices" in aux:
    _, aux = model.apply(variables, data.eval_images, train=False)
    codebook_usage(os.path.join(workdir, "codebook_usage.png"),
                   np.asarray(aux["indices"]), model.bottleneck.num_codewords)
  records = training_log.read_metrics(workdir)
  if records:
    training_curves(os.path.join(workdir, "training_curves.png"), records)
  return xy
