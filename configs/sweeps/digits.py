"""The named sweeps of configs/digits.py: Table 1's rows and the quantizers beside it.

  python -m softvq_jax.sweep --config=configs/digits.py --sweep=table1 --workdir=/tmp/digits
"""

from configs.digits import PAPER
from softvq_jax.launch import presets

SWEEPS = {
    # Table 1's rows (raw pixels and the bottlenecks' presets) on digits.
    "table1": lambda: presets.table_sweep(("raw",) + presets.PRESETS, PAPER),
    # The quantizers beside Table 1 (presets.QUANTIZER_PRESETS).
    "quantizers": lambda: presets.table_sweep(presets.QUANTIZER_PRESETS, PAPER),
}
