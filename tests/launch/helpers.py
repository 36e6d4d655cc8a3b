"""What the launcher tests share: a config file's sweeps, as the sweep launcher finds them."""

from softvq_jax.launch import sweep


def sweeps(config_module):
  """The sweeps module beside ``config_module``'s file (``sweep.load_sweeps``)."""
  return sweep.load_sweeps(config_module.__file__)


def points(config_module, name):
  """The points of the sweep ``name`` of ``config_module``'s file."""
  return sweep.sweep_points(sweeps(config_module), name)
