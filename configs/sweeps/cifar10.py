"""The named sweeps of configs/cifar10.py: those of configs/sweeps/svhn.py (Table 2
over both datasets)."""

from configs.sweeps.svhn import PAPER_RESULTS  # noqa: F401
from configs.sweeps.svhn import SWEEPS  # noqa: F401
