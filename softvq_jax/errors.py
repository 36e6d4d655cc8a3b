"""The error types that reach the user as one line (``softvq_jax.launch.cli``)."""


class InputError(ValueError):
  """Bad config, data or workdir: a one-line message for the user.

  ``softvq_jax.main`` and ``softvq_jax.sweep`` print it without a traceback
  and exit with status 2. It is raised before any work starts, and before
  anything in the workdir is written.
  """


class RunStopped(RuntimeError):
  """A run that stopped on its way (a checkpoint that could not be saved):
  the message names the cause and the last good checkpoint."""


def one_line(error: BaseException) -> str:
  """``error``'s message on one line: its lines joined, or only the last
  where it carries a traceback (config files fail inside absl), or its
  type's name if it has none."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = lines[-1:]
  return " ".join(lines) or type(error).__name__
