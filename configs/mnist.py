"""MNIST, Table 1: MLP 784-500-500-2000-64, batch 32, 40000 steps, Adam 3e-4.

Usage: --config=configs/mnist.py[:PRESETS] with PRESETS from
softvq_jax.configs.default (e.g. ``:beta_vae`` or ``:vq_vae,quick``). The
default is the soft VQ-VAE row.

The soft VQ-VAE row weighs codewords as the authors' MNIST notebook does
(``normalizer="notebook"``, sigma^+1): that setting printed the paper's 0.7804
(reported as 77.64). Eq. (5) as printed (sigma^-d) is the preset
``soft_vq_vae_eq5``, about 10 points of clustering accuracy lower
(experiments/results/README.md).

Loss weights are those of the authors' MNIST notebook (TF1), in this
library's units (recon summed over the 784 pixels, VQ terms summed over
d = 64). The notebook's loss is recon + 3.0 * (||sg(z) - z_q||^2 +
2.5 ||z - sg(z_q)||^2) with means over elements, which is
vq_weight = 3.0 * 784 / 64 = 36.75 with commitment 2.5; its
information-dropout cost weight 0.5 on a per-element mean is beta = 0.5 / 64.
"""

from softvq_jax.configs import default

LATENT_DIM = 64
PAPER = default.PaperValues(beta_vae_beta=20.0, vq_codewords=128,
                            soft_vq_codewords=128, steps=40000,
                            soft_vq_steps=40000,
                            info_dropout_beta=0.5 / LATENT_DIM,
                            soft_vq_normalizer="notebook")


def get_config(args=None):
  config = default.get_base_config()
  config.data.name = "mnist"
  config.data.source = "tfds"
  config.model.network = "mlp"
  config.model.latent_dim = LATENT_DIM
  config.model.num_codewords = 128
  config.model.noise_std = 0.01
  config.model.normalizer = PAPER.soft_vq_normalizer
  config.model.commitment = 2.5
  config.model.vq_weight = 3.0 * 784 / LATENT_DIM
  config.model.output_activation = "sigmoid"
  config.model.entropy_weight = 0.1 * 784  # LFQ's weight per pixel-mean loss (LVQ's).
  config.data.pixel_range = "unit"
  config.train.num_steps = 40000
  config.train.batch_size = 32
  return default.apply_args(config, args, PAPER)


# The paper's Table 1: clustering ACC (%), NMI, linear-probe accuracy (%).
PAPER_RESULTS = {"mnist": {
    "raw": (55.17, 0.5008, 92.44),
    "ae": (52.61, 0.5301, 91.91),
    "vae": (56.44, 0.5600, 89.10),
    "beta_vae": (73.81, 0.5760, 91.10),
    "info_dropout": (58.52, 0.4979, 91.11),
    "vq_vae": (51.48, 0.3541, 81.62),
    "soft_vq_vae": (77.64, 0.7188, 93.54),
    "soft_vq_vae_eq5": (77.64, 0.7188, 93.54),
}}


# Held-out training images on which the variants sweep chooses between settings.
VALIDATION_SIZE = 10000
# The authors' notebook's batch size (the paper says 32), a variant of several rows.
NOTEBOOK_BATCH_SIZE = 64

# Soft VQ-VAE settings the paper leaves open, each against the paper-faithful
# row (noise_std 0.01, eq. (5)'s normaliser as in ``soft_vq_vae_eq5``, batch 32, constant learning
# rate, the authors' loss weights), as ``default.paper_point`` arguments.
# "authors_code" is the MNIST notebook's setting: its normaliser, its noise
# line commented out, batch 64. "codebook_init data" starts the codebook at
# encodings (softvq_jax.quantizer_core.data_codebook).
VARIANTS = (
    {"swept": {"model.noise_std": 0.01}},
    {"swept": {"model.normalizer": "notebook"}},
    {"swept": {"train.batch_size": NOTEBOOK_BATCH_SIZE}},
    {"swept": {"model.noise_std": 0.0}},
    {"variant": "authors_code", "overrides": {
        "model.normalizer": "notebook", "model.noise_std": 0.0,
        "train.batch_size": NOTEBOOK_BATCH_SIZE}},
    {"swept": {"model.noise_std": 0.05}},
    {"swept": {"train.lr_schedule": "cosine"}},
    {"swept": {"model.commitment": 0.25}},
    {"swept": {"model.codebook_init": "data"}},
)


# The variant with the best validation clustering at the time the test-split
# runs had to start (experiments/results/README.md): the notebook's normaliser,
# since adopted by the ``soft_vq_vae`` row.
CHOSEN = {"model.normalizer": "notebook"}


# The setting the variants change: eq. (5) as printed. Their points keep the
# soft_vq_vae row's name, which they had when their results were published.
PAPER_FAITHFUL = {"model.normalizer": "paper"}


def variant_point(variant, seed):
  """One soft VQ-VAE variant (of ``VARIANTS``), scored on the validation hold-out."""
  overrides = {**PAPER_FAITHFUL, **variant.get("overrides", {}),
               "data.validation_size": VALIDATION_SIZE}
  return default.paper_point("soft_vq_vae", seed, PAPER, variant=variant.get("variant", ""),
                             swept=variant.get("swept"), overrides=overrides)


# beta of the beta-VAE row on the validation hold-out: the authors' loss is
# 784 * recon + 20 * KL; with the KL summed over d = 64 that is beta = 20 (the
# preset), with the KL averaged over d it is beta = 20 / 64 in this library's
# units; 5 lies between them.
BETA_VAE_BETAS = (20.0, 20.0 / LATENT_DIM, 5.0)
# The one of BETA_VAE_BETAS with the best validation clustering
# (experiments/results/beta_vae_mnist.md), for the test split.
BETA_VAE_CHOSEN = 5.0


# The VQ-VAE row's settings that the paper and the authors' code leave open,
# seed 0 on the validation hold-out: its NMI (0.44 on test) is above the
# paper's 0.3541 and its probe (78.24) below the paper's 81.62. The codebook
# term's weight does not matter under Adam (it is the codebook's only
# gradient); what pulls the encoder is vq_weight * commitment: the row's
# 36.75 * 2.5 (the notebook's), 36.75 * 0.25 (eq. (27)'s beta at the
# notebook's scale) and 1 * 0.25 (eq. (27) as printed, in this library's
# units). Batch 64 is the notebook's. A setting closer than the row to both of
# the paper's numbers would run on the test split, 3 seeds.
VQ_VAE_VARIANTS = (
    {},
    {"model.commitment": 0.25},
    {"model.commitment": 0.25, "model.vq_weight": 1.0},
    {"train.batch_size": NOTEBOOK_BATCH_SIZE},
)
# The one of VQ_VAE_VARIANTS closer than the row to both the paper's NMI and
# probe on validation (experiments/results/vq_vae_mnist.md), for the test
# split: eq. (27) as printed (0.3873 / 82.12 against the row's 0.4240 / 77.18).
VQ_VAE_CHOSEN = VQ_VAE_VARIANTS[2]


# Ablations of the soft_vq_vae row on the test split (its settings fixed
# before: the row itself, then the row changed), in the order they run:
# where sigma_k^2 comes from (the paper's "learned variances control the
# smoothness"), then the noise on z_e, then where per-codeword variances
# start. The K curve is the ``codebook`` sweep.
ABLATIONS = (
    ({}, {"model.variance": "codeword"}, {"model.variance": "fixed"}),
    ({"model.noise_std": 0.0}, {"model.noise_std": 0.05}),
    # Per codeword, starting where the head starts (sigma^2 about 1) instead of
    # at the initial fit (sigma^2 about 0.006 on MNIST), added once the first
    # group had run: does the start, or the per-sample head, make the difference?
    ({"model.variance": "codeword", "model.log_var_init": 0.0},),
)


# The soft VQ-VAE row's noise on z_e (model.noise_std; the paper's 0.01 is
# the row's), seeds 0, 1, 2 on the validation hold-out: the choice that the
# ablations' noise group (test split) could not make on two seeds. Its runs
# are named "noise" apart from the variants sweep's noise levels, which use
# eq. (5)'s normaliser.
NOISE_STDS = (0.0, 0.01, 0.05)


# The moonshot: settings of the soft_vq_vae row screened for K-means accuracy
# on the validation hold-out, seed 0, in the order tried (every one is kept
# here; experiments/results/moonshot_mnist.*). Each trial names the keys it
# changes; a latent size d comes with vq_weight 3.0 * 784 / d, the notebook's
# per-element weighting of the VQ terms at that d.
SCREEN_STEPS = 10000
MOONSHOT_TRIALS = (
    {"model.latent_dim": 64, "model.num_codewords": 128},
    {"model.latent_dim": 10, "model.num_codewords": 128},
    {"model.latent_dim": 10, "model.num_codewords": 10},
    {"model.latent_dim": 10, "model.num_codewords": 32},
    {"model.latent_dim": 64, "model.num_codewords": 10},
    {"model.latent_dim": 32, "model.num_codewords": 128},
    {"model.latent_dim": 64, "model.num_codewords": 32},
    {"model.latent_dim": 64, "model.num_codewords": 512},
    {"model.latent_dim": 64, "model.num_codewords": 128, "train.learning_rate": 1e-3},
    {"model.latent_dim": 64, "model.num_codewords": 128, "model.commitment": 10.0},
    {"model.latent_dim": 64, "model.num_codewords": 128, "train.num_steps": 40000,
     "train.lr_schedule": "cosine"},
    # Added after the ablations' test runs of this setting (per-codeword
    # variances starting at log sigma^2 = 0) had been seen: it must win here,
    # on validation and over seeds (``moonshot_seeds``), to be chosen.
    {"model.latent_dim": 64, "model.num_codewords": 128, "train.num_steps": 40000,
     "model.variance": "codeword", "model.log_var_init": 0.0},
)
# The trials chosen on validation, in the order chosen, each run once on the
# test split (``moonshot_test``): cosine decay, best of the seed-0 screen;
# then the per-codeword variances from log sigma^2 = 0, whose 3 validation
# seeds (``moonshot_seeds``: 85.29, 86.65, 77.34) average above every other
# trial (cosine decay 80.30 at seed 0; the row 78.67 over 3 seeds).
MOONSHOT_CHOSEN = (MOONSHOT_TRIALS[10], MOONSHOT_TRIALS[11])
# The seeds of the second choice on both splits: the bar (mean of 3 seeds) is
# judged on seeds 0-2; seeds 3 and 4 were added after those results, to pin
# its expected accuracy (test 84.39, 80.05; validation 88.91, 85.04).
MOONSHOT_SEEDS = (0, 1, 2, 3, 4)
# The start of the second choice's per-codeword variances (model.log_var_init;
# its own is 0), x SEEDS on the validation hold-out: one seed in five of it
# clusters near the row's 78-80, on either split. Decided before they ran: a
# start replaces 0 as the choice, and runs once on the test split, only if its
# mean over seeds 0-2 beats 0's there (83.09).
MOONSHOT_LOG_VAR_INITS = (-1.0, 1.0)


def moonshot_point(trial, seed, *, validation=True):
  """A ``MOONSHOT_TRIALS`` setting of the soft_vq_vae row, SCREEN_STEPS steps
  unless the trial sets train.num_steps; on the validation hold-out or the
  test split."""
  swept = {"train.num_steps": SCREEN_STEPS, **trial}
  overrides = {"model.vq_weight": 3.0 * 784 / swept["model.latent_dim"]}
  if validation:
    overrides["data.validation_size"] = VALIDATION_SIZE
  return default.paper_point("soft_vq_vae", seed, PAPER, variant="moonshot", swept=swept,
                             overrides=overrides)


SEEDS = default.SEEDS
CODEBOOK_SIZES = (16, 32, 64, 128, 256, 512)

# The named sweeps of ``python -m softvq_jax.sweep --sweep=NAME``: each builds
# its points. Seed-major where a sweep has several seeds, so that an
# interrupted sweep has every setting for the first seeds.
SWEEPS = {
    # The 7 rows of Table 1, and soft_vq_vae_eq5, x SEEDS.
    "table1": lambda: default.table_sweep(PAPER_RESULTS["mnist"], PAPER, SEEDS),
    # The quantizers beside Table 1 (default.QUANTIZER_PRESETS), x SEEDS.
    "quantizers": lambda: default.table_sweep(default.QUANTIZER_PRESETS, PAPER, SEEDS),
    # The K curve: soft VQ-VAE with each of CODEBOOK_SIZES, x SEEDS.
    "codebook": lambda: [
        default.paper_point("soft_vq_vae", seed, PAPER, swept={"model.num_codewords": k})
        for seed in SEEDS for k in CODEBOOK_SIZES],
    # Soft VQ-VAE settings (VARIANTS), seed 0, on the validation hold-out.
    "variants": lambda: [variant_point(variant, 0) for variant in VARIANTS],
    # Soft VQ-VAE with the CHOSEN variant, x SEEDS, on the test split.
    "chosen": lambda: [default.paper_point("soft_vq_vae", seed, PAPER, swept=CHOSEN)
                       for seed in SEEDS],
    # The beta-VAE row with each of BETA_VAE_BETAS, seed 0, on the validation
    # hold-out (one vmapped program).
    "beta_vae": lambda: [
        default.paper_point("beta_vae", 0, PAPER, swept={"model.beta": beta},
                            overrides={"data.validation_size": VALIDATION_SIZE})
        for beta in BETA_VAE_BETAS],
    # The beta-VAE row with BETA_VAE_CHOSEN, x SEEDS, on the test split.
    "beta_vae_test": lambda: [
        default.paper_point("beta_vae", seed, PAPER, swept={"model.beta": BETA_VAE_CHOSEN})
        for seed in SEEDS],
    # The beta-VAE row at NOTEBOOK_BATCH_SIZE with beta 20 and BETA_VAE_CHOSEN,
    # seed 0, on the validation hold-out: the last setting of the beta-VAE row
    # that the notebook and the paper disagree on.
    "beta_vae_batch": lambda: [
        default.paper_point("beta_vae", 0, PAPER,
                            swept={"model.beta": beta, "train.batch_size": NOTEBOOK_BATCH_SIZE},
                            overrides={"data.validation_size": VALIDATION_SIZE})
        for beta in (PAPER.beta_vae_beta, BETA_VAE_CHOSEN)],
    # The vq_vae row with each of VQ_VAE_VARIANTS, seed 0, on the validation
    # hold-out.
    "vq_vae": lambda: [
        default.paper_point("vq_vae", 0, PAPER, swept=swept,
                            overrides={"data.validation_size": VALIDATION_SIZE})
        for swept in VQ_VAE_VARIANTS],
    # The vq_vae row with VQ_VAE_CHOSEN, x SEEDS, on the test split.
    "vq_vae_test": lambda: [default.paper_point("vq_vae", seed, PAPER, swept=VQ_VAE_CHOSEN)
                            for seed in SEEDS],
    # The soft_vq_vae row and each of ABLATIONS, x SEEDS (seed-major within
    # each group), on the test split.
    "ablations": lambda: [default.paper_point("soft_vq_vae", seed, PAPER, swept=swept)
                          for group in ABLATIONS for seed in SEEDS for swept in group],
    # The soft_vq_vae row with each of NOISE_STDS, x SEEDS, on the validation
    # hold-out (one vmapped program).
    "noise": lambda: [
        default.paper_point("soft_vq_vae", seed, PAPER, variant="noise",
                            swept={"model.noise_std": noise},
                            overrides={"data.validation_size": VALIDATION_SIZE})
        for seed in SEEDS for noise in NOISE_STDS],
    # The MOONSHOT_TRIALS, seed 0, on the validation hold-out.
    "moonshot": lambda: [moonshot_point(trial, 0) for trial in MOONSHOT_TRIALS],
    # The 12th of MOONSHOT_TRIALS x MOONSHOT_SEEDS, on the validation hold-out.
    "moonshot_seeds": lambda: [moonshot_point(MOONSHOT_TRIALS[11], seed)
                               for seed in MOONSHOT_SEEDS],
    # The 12th of MOONSHOT_TRIALS with each of MOONSHOT_LOG_VAR_INITS, x SEEDS,
    # on the validation hold-out.
    "moonshot_log_var": lambda: [
        moonshot_point({**MOONSHOT_TRIALS[11], "model.log_var_init": log_var}, seed)
        for seed in SEEDS for log_var in MOONSHOT_LOG_VAR_INITS],
    # The first of MOONSHOT_CHOSEN x SEEDS, the second x MOONSHOT_SEEDS, on the
    # test split.
    "moonshot_test": lambda: [
        moonshot_point(trial, seed, validation=False)
        for trial, trial_seeds in zip(MOONSHOT_CHOSEN, (SEEDS, MOONSHOT_SEEDS))
        for seed in trial_seeds],
}


def get_sweep(name):
  """The points of ``SWEEPS[name]``, for ``python -m softvq_jax.sweep --sweep=NAME``."""
  return default.named_sweep(SWEEPS, name)
