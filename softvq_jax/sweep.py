"""Runs a named sweep of a config file, then tabulates it (``softvq_jax.launch.sweep``).

  python -m softvq_jax.sweep --config=configs/mnist.py --sweep=table1 \
      --config.data.source=files --config.data.dir=../shared/datasets/mnist \
      --workdir=/tmp/table1 --results=experiments/results/table1/table1_mnist
"""

from softvq_jax.launch import cli

with cli.interruptible_start(__name__):
  from softvq_jax.launch import sweep

if __name__ == "__main__":
  cli.run(sweep.main)
