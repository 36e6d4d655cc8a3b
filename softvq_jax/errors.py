"""The error type of bad user input."""


class InputError(ValueError):
  """Bad config, data or workdir: a one-line message for the user.

  ``softvq_jax.main`` and ``softvq_jax.sweep`` print it without a traceback
  and exit with status 2. It is raised before any work starts, and before
  anything in the workdir is written.
  """
