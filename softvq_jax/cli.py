"""The command-line contract shared by ``main`` and ``sweep``.

Every way a command can end, with its exit status and one line on stderr
(no traceback):

* 0: done.
* 2 (``error: ...``): bad input, found before anything is written: flags
  (an unknown key, a value of the wrong type, a missing or broken config
  file, an unknown preset), the config's values, the data, the workdir
  (``softvq_jax.errors.InputError``).
* 1 (``error: ...``): the run stopped on its way: a non-finite loss, a
  checkpoint that could not be saved, a disk that filled up. The line says
  where the last good checkpoint is.
* 130 (``interrupted: ...``): Ctrl-C; pending checkpoints are finished first
  and the line names the step a rerun resumes from.
"""

import re
import sys
from typing import Callable, List, NoReturn

from absl import app
from absl import flags

from softvq_jax.errors import InputError, RunStopped

EXIT_INPUT = 2
EXIT_STOPPED = 1
EXIT_INTERRUPTED = 130


def one_line(error: BaseException) -> str:
  """The message of ``error`` on one line: a message that carries a
  traceback (config files fail inside absl) keeps its last line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = lines[-1:]
  return " ".join(lines) or type(error).__name__


def _unknown_key(error: Exception) -> str:
  """ml_collections' message for a misspelt ``--config.*`` key, on one line."""
  text = str(error).replace("\\'", "'").replace("\\n", " ")
  match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if match:
    return f"the config has no key {match[2]!r}; did you mean {match[1]!r}?"
  return f"the config has no key {text.strip(chr(39) + chr(34))!r}"


def fail(message: str, status: int = EXIT_INPUT, prefix: str = "error") -> NoReturn:
  print(f"{prefix}: {message}", file=sys.stderr)
  sys.exit(status)


def parse_flags(argv: List[str], flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
  """absl's flag parsing, with every failure (and the config file's) as one
  ``error:`` line and exit status 2.

  Config flags load their file, presets and ``--config.*`` overrides lazily;
  they are loaded here, so that a broken file fails before ``main`` runs.
  """
  try:
    argv = flag_values(argv)
    flag_values.config.to_json_best_effort()
  except flags.Error as e:
    fail(one_line(e))
  except (KeyError, AttributeError) as e:
    fail(f"--config: {_unknown_key(e)}")
  except OSError as e:  # A missing or unreadable file; the last line names it.
    fail(f"--config: {str(e).splitlines()[-1].strip()}")
  except Exception as e:  # pylint: disable=broad-except
    # Whatever a config file raises while it loads is the user's input.
    fail(f"--config: {type(e).__name__}: {one_line(e)}")
  return argv


def guard(main: Callable[[List[str]], None]) -> Callable[[List[str]], None]:
  """``main`` with this module's exit statuses and error lines."""

  def guarded(argv):
    try:
      main(argv)
    except InputError as e:
      fail(str(e))
    except KeyboardInterrupt as e:
      fail(str(e) or "stopped by Ctrl-C", EXIT_INTERRUPTED, prefix="interrupted")
    except (RunStopped, FloatingPointError) as e:
      fail(str(e), EXIT_STOPPED)
    except OSError as e:
      fail(f"{e}; nothing written before it is lost, rerun the same command to "
           "resume", EXIT_STOPPED)

  return guarded


def run(main: Callable[[List[str]], None]) -> None:
  """``app.run(main)`` with this module's flag parsing, exit statuses and lines."""
  app.run(guard(main), flags_parser=parse_flags)
