"""The named sweeps of configs/svhn.py and configs/cifar10.py: Table 2 over both.

  python -m softvq_jax.sweep --config=configs/svhn.py --sweep=table2 ...
"""

from softvq_jax.launch import presets
from softvq_jax.launch.images32 import PAPER

# The paper's Table 2: clustering ACC (%), classification (%); no NMI reported.
PAPER_RESULTS = {
    "svhn_cropped": {
        "ae": (11.96, None, 25.95), "vae": (13.58, None, 26.42),
        "beta_vae": (14.54, None, 49.62), "info_dropout": (12.75, None, 24.46),
        "vq_vae": (12.96, None, 31.57), "soft_vq_vae": (17.68, None, 50.48),
    },
    "cifar10": {
        "ae": (21.73, None, 40.92), "vae": (24.12, None, 38.83),
        "beta_vae": (22.80, None, 36.91), "info_dropout": (21.96, None, 39.89),
        "vq_vae": (20.30, None, 33.51), "soft_vq_vae": (23.83, None, 44.54),
    },
}


SWEEPS = {
    # Table 2: both datasets x the 6 trained rows x presets.SEEDS.
    "table2": lambda: [presets.paper_point(row, seed, PAPER, dataset=dataset)
                       for seed in presets.SEEDS for dataset in PAPER_RESULTS
                       for row in presets.PRESETS if row != "soft_vq_vae_eq5"],
}
