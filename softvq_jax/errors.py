"""The error types that reach the user as one line (``softvq_jax.cli``)."""


class InputError(ValueError):
  """Bad config, data or workdir: a one-line message for the user.

  ``softvq_jax.main`` and ``softvq_jax.sweep`` print it without a traceback
  and exit with status 2. It is raised before any work starts, and before
  anything in the workdir is written.
  """


class RunStopped(RuntimeError):
  """A run that stopped on its way (a checkpoint that could not be saved):
  the message names the cause and the last good checkpoint."""


def first_line(error: BaseException) -> str:
  """The first line of ``error``'s message (its type's name if it has none),
  for one-line reports of errors raised by other libraries."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
