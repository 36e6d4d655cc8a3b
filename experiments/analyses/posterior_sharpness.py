"""How smooth a soft VQ-VAE's posterior is, per run: the paper's claim that
the learned variances control the smoothness, measured.

  python -m experiments.analyses.posterior_sharpness --workdirs=RUN[,RUN...] \
      --out=experiments/results/ablations/posterior_sharpness_mnist.jsonl

For each finished soft VQ-VAE run, restores its last checkpoint and, on its
evaluation split (test images unless it held out a validation split), in
evaluation mode (no noise), reports:

* ``entropy``: the mean entropy (nats) of p(mu_k | z_e), eq. (7), and
  ``effective_codewords`` = exp of it (1: a hard assignment, K: uniform);
* ``max_prob``: the mean of the largest posterior weight;
* ``log_var_mean`` / ``log_var_std``: mean and std of log sigma_k^2 over
  images and codewords (per codeword or fixed: over codewords);
* ``shift``: the mean over images of ||z_hat - z_e||^2 / d, how far the
  soft quantization moves a latent; ``recon``: the mean reconstruction
  term (the training loss's units) of the evaluation images.

Prints one JSON line per run.
"""

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import jsonl
from experiments.common import restore
from softvq_jax.model import autoencoder

flags.DEFINE_list("workdirs", [], "Finished soft VQ-VAE runs' workdirs.")
flags.DEFINE_string("out", None, "Also write the JSON lines to this file.")
FLAGS = flags.FLAGS


def _batch_statistics(module: autoencoder.Autoencoder, x, log_var_params, pixel_var):
  h = module.encoder(x)
  z_hat, aux = module.bottleneck(h, train=False)
  probs, z = aux["probs"], aux["latent"]
  if isinstance(log_var_params, dict):  # The per-sample head.
    log_var = h @ log_var_params["kernel"] + log_var_params["bias"]
  else:
    log_var = jnp.broadcast_to(log_var_params, probs.shape)
  entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1)
  recon = autoencoder.reconstruction_loss(module.decoder(z_hat), x, kind=module.recon,
                                          output_activation=module.output_activation,
                                     pixel_var=pixel_var)
  return {"entropy": entropy, "max_prob": jnp.max(probs, axis=-1),
          "log_var": jnp.mean(log_var, axis=-1), "log_var_var": jnp.var(log_var, axis=-1),
          "shift": jnp.mean((z_hat - z) ** 2, axis=-1), "recon": recon[None]}


def sharpness(run_dir: str) -> dict:
  config, data, model, variables = restore.load_run(run_dir)
  if config.model.bottleneck != "soft_vq":
    raise ValueError(f"{run_dir} is not a soft VQ-VAE run")
  log_var_params = variables["params"]["bottleneck"]["log_var"]
  pixel_var = data.pixel_variance
  fn = jax.jit(lambda v, x: model.apply(v, x, log_var_params, pixel_var,
                                        method=_batch_statistics))
  size = config.eval.batch_size
  stats = [fn(variables, data.eval_images[i:i + size])
           for i in range(0, len(data.eval_images), size)]
  values = {k: np.concatenate([np.asarray(s[k], np.float64) for s in stats]) for k in stats[0]}
  mean = {k: float(np.mean(v)) for k, v in values.items()}
  # The total variance: the mean variance within images plus that of their means.
  var_of_means = float(np.var(values["log_var"]))
  return {"run": run_dir, "variance": config.model.variance,
          "log_var_init": config.model.log_var_init,
          "noise_std": config.model.noise_std, "num_codewords": config.model.num_codewords,
          "eval_split": data.eval_split, "entropy": mean["entropy"],
          "effective_codewords": float(np.exp(mean["entropy"])),
          "max_prob": mean["max_prob"], "log_var_mean": mean["log_var"],
          "log_var_std": float(np.sqrt(mean["log_var_var"] + var_of_means)),
          "shift": mean["shift"], "recon": mean["recon"]}


def main(_):
  lines = []
  for run_dir in FLAGS.workdirs:
    jsonl.emit(lines, sharpness(run_dir), sort_keys=True)
  jsonl.write(lines, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
