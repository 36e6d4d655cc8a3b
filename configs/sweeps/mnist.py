"""The named sweeps of configs/mnist.py: Table 1, the quantizers beside it, the
K curve, and every setting chosen on a validation hold-out with its test run.

  python -m softvq_jax.sweep --config=configs/mnist.py --sweep=NAME ...

finds them here (``sweeps/<config file's name>``). How each choice was made:
the write-ups in experiments/results/<study>/README.md.
"""

from configs.mnist import LATENT_DIM
from configs.mnist import PAPER
from softvq_jax.launch import presets

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

# Soft VQ-VAE settings the paper leaves open, each against PAPER_FAITHFUL, as
# ``presets.paper_point`` arguments; "authors_code" is the MNIST notebook's.
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


# The variant chosen on validation (experiments/results/soft_vq_variants/README.md).
CHOSEN = {"model.normalizer": "notebook"}


# The soft_vq_vae row with eq. (5) as printed, the base of VARIANTS.
PAPER_FAITHFUL = {"model.normalizer": "paper"}


def variant_point(variant, seed):
  """One soft VQ-VAE variant (of ``VARIANTS``), scored on the validation hold-out."""
  overrides = {**PAPER_FAITHFUL, **variant.get("overrides", {}),
               "data.validation_size": VALIDATION_SIZE}
  return presets.paper_point("soft_vq_vae", seed, PAPER, variant=variant.get("variant", ""),
                             swept=variant.get("swept"), overrides=overrides)


# beta of the beta-VAE row: the KL summed over d, averaged over d, between.
BETA_VAE_BETAS = (20.0, 20.0 / LATENT_DIM, 5.0)
# The one of BETA_VAE_BETAS chosen on validation (experiments/results/rows_against_the_paper/README.md).
BETA_VAE_CHOSEN = 5.0


# The VQ-VAE row's commitment as eq. (27) prints it, in this library's units.
VQ_VAE_PRINTED = {"model.commitment": 0.25, "model.vq_weight": 1.0}
# The VQ-VAE row's settings that the paper and the authors' code leave open.
VQ_VAE_VARIANTS = (
    {},
    {"model.commitment": 0.25},
    VQ_VAE_PRINTED,
    {"train.batch_size": NOTEBOOK_BATCH_SIZE},
)
# The one of VQ_VAE_VARIANTS chosen on validation (experiments/results/rows_against_the_paper/README.md).
VQ_VAE_CHOSEN = VQ_VAE_PRINTED


# Ablations of the soft_vq_vae row on the test split, in groups: where
# sigma_k^2 comes from, the noise on z_e, where per-codeword variances start.
ABLATIONS = (
    ({}, {"model.variance": "codeword"}, {"model.variance": "fixed"}),
    ({"model.noise_std": 0.0}, {"model.noise_std": 0.05}),
    ({"model.variance": "codeword", "model.log_var_init": 0.0},),
)


# The soft_vq_vae row's noise on z_e, on the validation hold-out.
NOISE_STDS = (0.0, 0.01, 0.05)


# The moonshot (experiments/results/moonshot/README.md): settings of the soft_vq_vae row
# screened on the validation hold-out, seed 0, in the order tried. A latent
# size d comes with vq_weight 3.0 * 784 / d (``moonshot_point``).
SCREEN_STEPS = 10000
COSINE_DECAY = {"model.latent_dim": 64, "model.num_codewords": 128,
                "train.num_steps": 40000, "train.lr_schedule": "cosine"}
CODEWORD_VARIANCES = {"model.latent_dim": 64, "model.num_codewords": 128,
                      "train.num_steps": 40000, "model.variance": "codeword",
                      "model.log_var_init": 0.0}
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
    COSINE_DECAY,
    CODEWORD_VARIANCES,
)
# The trials chosen on validation, in the order chosen, for the test split.
MOONSHOT_CHOSEN = (COSINE_DECAY, CODEWORD_VARIANCES)
# The seeds of CODEWORD_VARIANCES on both splits.
MOONSHOT_SEEDS = (0, 1, 2, 3, 4)
# Other starts of CODEWORD_VARIANCES' variances (model.log_var_init), on validation.
MOONSHOT_LOG_VAR_INITS = (-1.0, 1.0)


def moonshot_point(trial, seed, *, validation=True):
  """A ``MOONSHOT_TRIALS`` setting of the soft_vq_vae row, SCREEN_STEPS steps
  unless the trial sets train.num_steps; on the validation hold-out or the
  test split."""
  swept = {"train.num_steps": SCREEN_STEPS, **trial}
  overrides = {"model.vq_weight": 3.0 * 784 / swept["model.latent_dim"]}
  if validation:
    overrides["data.validation_size"] = VALIDATION_SIZE
  return presets.paper_point("soft_vq_vae", seed, PAPER, variant="moonshot", swept=swept,
                             overrides=overrides)


# FSQ and LFQ rows beside Table 1 on a z_e head of the quantizer's size (d = 3,
# d = 7) collapse to one code (experiments/results/quantizers_beside_table1/README.md):
# settings screened on the validation hold-out, seed 0, SCREEN_STEPS steps, each
# a preset and the keys it changes.
DIRECT_FSQ = {"model.quantizer_dim": None, "model.latent_dim": 3}
DIRECT_LFQ = {"model.quantizer_dim": None, "model.latent_dim": 7, "model.commitment": 2.5}
QUANTIZER_SCREEN = (
    ("fsq", DIRECT_FSQ),
    ("fsq", {**DIRECT_FSQ, "train.learning_rate": 1e-4}),
    ("fsq", {**DIRECT_FSQ, "train.learning_rate": 3e-5}),
    ("lfq", DIRECT_LFQ),
    ("lfq", {**DIRECT_LFQ, "model.commitment": 0.0}),
    ("lfq", {**DIRECT_LFQ, "model.commitment": 0.25}),
)
# The one of QUANTIZER_SCREEN's LFQ settings chosen on validation, for the test
# split; no FSQ setting screened escaped the collapse.
LFQ_CHOSEN = {**DIRECT_LFQ, "model.commitment": 0.25}
# Then the presets' LayerNorm and projection of a 64-d z_e (model.quantizer_dim),
# screened the same way, LFQ at three commitment weights.
QUANTIZER_SCREEN_LAYERNORM = (
    ("fsq", {}),
    ("lfq", {"model.commitment": 2.5}),
    ("lfq", {"model.commitment": 0.25}),
    ("lfq", {"model.commitment": 0.0}),
)


def screen_points(screen):
  """A screen's (row, keys) settings, seed 0, SCREEN_STEPS steps, on validation."""
  return [presets.paper_point(row, 0, PAPER, swept={"train.num_steps": SCREEN_STEPS, **swept},
                              overrides={"data.validation_size": VALIDATION_SIZE})
          for row, swept in screen]


SEEDS = presets.SEEDS
CODEBOOK_SIZES = (16, 32, 64, 128, 256, 512)

# The named sweeps of ``python -m softvq_jax.sweep --sweep=NAME``: each builds
# its points. Seed-major where a sweep has several seeds, so that an
# interrupted sweep has every setting for the first seeds.
SWEEPS = {
    # The 7 rows of Table 1, and soft_vq_vae_eq5, x SEEDS.
    "table1": lambda: presets.table_sweep(PAPER_RESULTS["mnist"], PAPER, SEEDS),
    # The quantizers beside Table 1 (presets.QUANTIZER_PRESETS), x SEEDS.
    "quantizers": lambda: presets.table_sweep(presets.QUANTIZER_PRESETS, PAPER, SEEDS),
    # The QUANTIZER_SCREEN, seed 0, on the validation hold-out.
    "quantizer_screen": lambda: screen_points(QUANTIZER_SCREEN),
    # The QUANTIZER_SCREEN_LAYERNORM, seed 0, on the validation hold-out.
    "quantizer_screen_layernorm": lambda: screen_points(QUANTIZER_SCREEN_LAYERNORM),
    # The lfq row with LFQ_CHOSEN, x SEEDS, on the test split.
    "lfq_test": lambda: [presets.paper_point("lfq", seed, PAPER, swept=LFQ_CHOSEN)
                         for seed in SEEDS],
    # The K curve: soft VQ-VAE with each of CODEBOOK_SIZES, x SEEDS.
    "codebook": lambda: [
        presets.paper_point("soft_vq_vae", seed, PAPER, swept={"model.num_codewords": k})
        for seed in SEEDS for k in CODEBOOK_SIZES],
    # Soft VQ-VAE settings (VARIANTS), seed 0, on the validation hold-out.
    "variants": lambda: [variant_point(variant, 0) for variant in VARIANTS],
    # Soft VQ-VAE with the CHOSEN variant, x SEEDS, on the test split.
    "chosen": lambda: [presets.paper_point("soft_vq_vae", seed, PAPER, swept=CHOSEN)
                       for seed in SEEDS],
    # The beta-VAE row with each of BETA_VAE_BETAS, seed 0, on the validation
    # hold-out (one vmapped program).
    "beta_vae": lambda: [
        presets.paper_point("beta_vae", 0, PAPER, swept={"model.beta": beta},
                            overrides={"data.validation_size": VALIDATION_SIZE})
        for beta in BETA_VAE_BETAS],
    # The beta-VAE row with BETA_VAE_CHOSEN, x SEEDS, on the test split.
    "beta_vae_test": lambda: [
        presets.paper_point("beta_vae", seed, PAPER, swept={"model.beta": BETA_VAE_CHOSEN})
        for seed in SEEDS],
    # The beta-VAE row at NOTEBOOK_BATCH_SIZE with beta 20 and BETA_VAE_CHOSEN,
    # seed 0, on the validation hold-out: the last setting of the beta-VAE row
    # that the notebook and the paper disagree on.
    "beta_vae_batch": lambda: [
        presets.paper_point("beta_vae", 0, PAPER,
                            swept={"model.beta": beta, "train.batch_size": NOTEBOOK_BATCH_SIZE},
                            overrides={"data.validation_size": VALIDATION_SIZE})
        for beta in (PAPER.beta_vae_beta, BETA_VAE_CHOSEN)],
    # The vq_vae row with each of VQ_VAE_VARIANTS, seed 0, on the validation
    # hold-out.
    "vq_vae": lambda: [
        presets.paper_point("vq_vae", 0, PAPER, swept=swept,
                            overrides={"data.validation_size": VALIDATION_SIZE})
        for swept in VQ_VAE_VARIANTS],
    # The vq_vae row with VQ_VAE_CHOSEN, x SEEDS, on the test split.
    "vq_vae_test": lambda: [presets.paper_point("vq_vae", seed, PAPER, swept=VQ_VAE_CHOSEN)
                            for seed in SEEDS],
    # The soft_vq_vae row and each of ABLATIONS, x SEEDS (seed-major within
    # each group), on the test split.
    "ablations": lambda: [presets.paper_point("soft_vq_vae", seed, PAPER, swept=swept)
                          for group in ABLATIONS for seed in SEEDS for swept in group],
    # The soft_vq_vae row with each of NOISE_STDS, x SEEDS, on the validation
    # hold-out (one vmapped program).
    "noise": lambda: [
        presets.paper_point("soft_vq_vae", seed, PAPER, variant="noise",
                            swept={"model.noise_std": noise},
                            overrides={"data.validation_size": VALIDATION_SIZE})
        for seed in SEEDS for noise in NOISE_STDS],
    # The MOONSHOT_TRIALS, seed 0, on the validation hold-out.
    "moonshot": lambda: [moonshot_point(trial, 0) for trial in MOONSHOT_TRIALS],
    # CODEWORD_VARIANCES x MOONSHOT_SEEDS, on the validation hold-out.
    "moonshot_seeds": lambda: [moonshot_point(CODEWORD_VARIANCES, seed)
                               for seed in MOONSHOT_SEEDS],
    # CODEWORD_VARIANCES with each of MOONSHOT_LOG_VAR_INITS, x SEEDS, on the
    # validation hold-out.
    "moonshot_log_var": lambda: [
        moonshot_point({**CODEWORD_VARIANCES, "model.log_var_init": log_var}, seed)
        for seed in SEEDS for log_var in MOONSHOT_LOG_VAR_INITS],
    # The first of MOONSHOT_CHOSEN x SEEDS, the second x MOONSHOT_SEEDS, on the
    # test split.
    "moonshot_test": lambda: [
        moonshot_point(trial, seed, validation=False)
        for trial, trial_seeds in zip(MOONSHOT_CHOSEN, (SEEDS, MOONSHOT_SEEDS))
        for seed in trial_seeds],
}
