"""The paper's representation tests: K-means clustering and a linear probe.

Scales: accuracies (``clustering_acc``, ``probe_acc``) are in percent
(0-100), as in the paper's tables; ``nmi`` and ``ari`` are in [0, 1] and
[-1, 1].

* Clustering: K-means with ``eval.kmeans_inits`` initialisations (the paper
  uses 100) on the evaluation split's latents, keeping the run with the best
  inertia (``eval.kmeans_backend``: ``jax``, all inits in one program on the
  device, ``softvq_jax.quantizers.kmeans``; ``sklearn``, float64 on the host; ``auto``,
  the default: ``jax`` on an accelerator, ``sklearn`` on a CPU, where it is
  faster: experiments/results/evaluation_loading_speed/benchmark_cpu_evaluation.jsonl);
  accuracy by Hungarian matching of clusters to classes, NMI as
  2 I(y, y') / (H(y) + H(y')), and ARI.
* Linear probe: the paper's classifier, one dense layer with a softmax,
  trained with Adam on the training split's latents (standardised with the
  training statistics; features constant on the training split are only
  centred) and scored on the evaluation split. Seeded and deterministic.
"""

import functools
from typing import Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.optimize
import sklearn.cluster
import sklearn.metrics

from softvq_jax.quantizers import kmeans as kmeans_lib

KMEANS_BACKENDS = ("auto", "jax", "sklearn")


def clustering_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Best one-to-one match of clusters to classes, in percent.

  Any number of clusters works: with more clusters than classes the extra
  clusters count as errors; with fewer, the unmatched classes do.

  Args:
    y_true: class labels, shape ``(N,)``, non-negative ints.
    y_pred: cluster ids, shape ``(N,)``, non-negative ints.
  """
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  counts = np.zeros((y_pred.max() + 1, y_true.max() + 1), np.int64)
  np.add.at(counts, (y_pred, y_true), 1)
  rows, cols = scipy.optimize.linear_sum_assignment(counts, maximize=True)
  return 100.0 * counts[rows, cols].sum() / y_true.size


def nmi(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Normalised mutual information with arithmetic averaging, in [0, 1]."""
  return float(sklearn.metrics.normalized_mutual_info_score(
      y_true, y_pred, average_method="arithmetic"))


def kmeans(latents: np.ndarray, num_clusters: int, num_inits: int, seed: int,
           backend: str = "jax") -> np.ndarray:
  """Cluster ids ``(N,)`` of the best-inertia run of ``num_inits`` K-means."""
  if backend == "auto":
    backend = "sklearn" if jax.default_backend() == "cpu" else "jax"
  if backend == "jax":
    fit = kmeans_lib.kmeans(jax.random.key(seed), latents, num_clusters, num_inits)
    return np.asarray(fit.labels)
  if backend == "sklearn":
    km = sklearn.cluster.KMeans(num_clusters, n_init=num_inits, random_state=seed)
    return km.fit_predict(np.asarray(latents, np.float64))
  raise ValueError(f"kmeans backend must be one of {KMEANS_BACKENDS}, got {backend!r}")


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "batch_size"))
def _train_probe(rng, x, y, *, num_classes, steps, batch_size, learning_rate):
  optimizer = optax.adam(learning_rate)
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}

  def loss_fn(params, xb, yb):
    logits = xb @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def step(carry, i):
    params, opt_state = carry
    idx = jax.random.randint(jax.random.fold_in(rng, i), (batch_size,), 0, x.shape[0])
    grads = jax.grad(loss_fn)(params, x[idx], y[idx])
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(steps))
  return params


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray,
                 eval_y: np.ndarray, *, num_classes: int, steps: int,
                 batch_size: int, learning_rate: float, seed: int,
                 standardize: bool = True) -> float:
  """Test accuracy (percent) of a softmax-regression probe on the latents;
  ``FloatingPointError`` if the probe diverged.

  Args:
    train_x, eval_x: features, shapes ``(N, F)`` and ``(M, F)``.
    train_y, eval_y: labels, shapes ``(N,)`` and ``(M,)``.
    num_classes: number of classes C.
    steps, batch_size, learning_rate: Adam training of the dense layer.
    seed: seeds the batch order.
    standardize: scale features to zero mean and unit variance on the
      training split first (features constant there are only centred).
  """
  mean, std = np.zeros(train_x.shape[1]), np.ones(train_x.shape[1])
  if standardize:
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)  # Constant features (blank pixels) stay put.
  standardise = lambda x: jnp.asarray((x - mean) / std, jnp.float32)
  params = _train_probe(jax.random.key(seed), standardise(train_x),
                        jnp.asarray(train_y), num_classes=num_classes, steps=steps,
                        batch_size=batch_size, learning_rate=learning_rate)
  logits = standardise(eval_x) @ params["w"] + params["b"]
  if not jnp.isfinite(logits).all():
    raise FloatingPointError(f"the linear probe diverged (non-finite logits after {steps} "
                             f"steps at learning rate {learning_rate:g}); lower "
                             "eval.probe_learning_rate")
  return 100.0 * float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(eval_y)))


def evaluate(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray,
             eval_y: np.ndarray, eval_config: ml_collections.ConfigDict,
             num_classes: int, seed: int) -> Dict[str, float]:
  """Clustering and probe metrics of representations ``(N, F)`` and ``(M, F)``;
  ``FloatingPointError`` for non-finite representations or probe, never a number."""
  train_x = np.asarray(train_x, np.float32).reshape(len(train_x), -1)
  eval_x = np.asarray(eval_x, np.float32).reshape(len(eval_x), -1)
  for name, x in (("training", train_x), ("evaluation", eval_x)):
    if not np.isfinite(x).all():
      raise FloatingPointError(f"the {name} representations hold non-finite values: no "
                               "K-means or probe figure can be made of them")
  clusters = kmeans(eval_x, eval_config.num_clusters or num_classes,
                    eval_config.kmeans_inits, seed, eval_config.kmeans_backend)
  return {
      "clustering_acc": clustering_accuracy(eval_y, clusters),
      "nmi": nmi(eval_y, clusters),
      "ari": float(sklearn.metrics.adjusted_rand_score(eval_y, clusters)),
      "probe_acc": linear_probe(
          train_x, train_y, eval_x, eval_y, num_classes=num_classes,
          steps=eval_config.probe_steps, batch_size=eval_config.probe_batch_size,
          learning_rate=eval_config.probe_learning_rate, seed=seed),
  }
