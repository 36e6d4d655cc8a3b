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
* 143 (``terminated: ...``): SIGTERM (a scheduler's warning before it
  kills), handled as Ctrl-C (``softvq_jax.launch.signals``); 129 likewise
  for SIGHUP (a closed terminal, a lost ssh session).

What the libraries print on the way (orbax's background threads, XLA) goes
to ``WORKDIR/library.log``, which the line names (``softvq_jax.launch.console``).
A failed command leaves at once: no interpreter teardown waits on orbax's
threads or runs while XLA still compiles.

Both commands import this module first; it sets ``OMP_WAIT_POLICY=PASSIVE``
(unless the user set it) before scikit-learn loads OpenMP.
"""

import contextlib
import os
import re
import sys
import traceback
from typing import Callable, Iterator, List, NoReturn, Optional

from absl import app
from absl import flags

from softvq_jax.errors import InputError
from softvq_jax.errors import RunStopped
from softvq_jax.errors import one_line
from softvq_jax.launch import console
from softvq_jax.launch import signals

# A sweep evaluates (scikit-learn's OpenMP: t-SNE) beside training (XLA's
# threads). OpenMP threads that spin while they wait then take the cores from
# both: beside a busy process on 2 cores, a t-SNE of 360 points took 11-14 s
# spinning and 3.4-3.9 s with passive waits (and 0.4 s either way when idle).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_INPUT = 2
EXIT_STOPPED = 1
EXIT_INTERRUPTED = 130
# absl's flags that print and exit while the flags parse.
_HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml",
               "--only_check_args")


def _unknown_key(error: Exception) -> str:
  """ml_collections' message for a misspelt ``--config.*`` key, on one line."""
  text = str(error).replace("\\'", "'").replace("\\n", " ")
  match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if match:
    return f"the config has no key {match[2]!r}; did you mean {match[1]!r}?"
  return f"the config has no key {text.strip(chr(39) + chr(34))!r}"


def fail(message: str, status: int = EXIT_INPUT, prefix: str = "error",
         workdir: Optional[str] = None) -> NoReturn:
  """Prints ``prefix: message`` and exits with ``status``; a run that stopped
  (not bad input) also saves the captured library output into ``workdir``
  and names the file."""
  log = console.save(workdir) if status != EXIT_INPUT else None
  suffix = f" (library output: {log})" if log else ""
  print(f"{prefix}: {message}{suffix}", file=console.stream(), flush=True)
  sys.exit(status)


def _interrupt_line(error: KeyboardInterrupt):
  """The status, prefix and message of Ctrl-C, SIGTERM or SIGHUP."""
  if isinstance(error, signals.Terminated):
    return 128 + error.signum, "terminated", str(error) or "stopped by SIGTERM"
  return EXIT_INTERRUPTED, "interrupted", str(error) or "stopped by Ctrl-C"


def parse_flags(argv: List[str], flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
  """absl's flag parsing, with every failure (and the config file's) as one
  ``error:`` line and exit status 2.

  Config flags load their file, presets and ``--config.*`` overrides lazily;
  they are loaded here, so that a broken file fails before ``main`` runs.
  """
  try:
    try:
      argv = flag_values(argv)
      config = flag_values.config
    except SystemExit as e:
      if any(arg.split("=")[0] in _HELP_FLAGS for arg in argv):
        raise
      fail(f"--config: the config file called sys.exit({e.code!r}) while it loaded")
    # (A file that failed to load gives an object that raises on use.)
    if config is None or isinstance(config, (dict, list, tuple, str, int, float)):
      returned = "None" if config is None else type(config).__name__
      fail(f"--config: get_config() returned {returned}, not a ConfigDict")
    config.to_json_best_effort()
  except flags.Error as e:
    if "--config must have a value other than None" in str(e):  # absl's check of it.
      fail("--config: get_config() returned None, not a ConfigDict")
    fail(one_line(e))
  except (KeyError, AttributeError) as e:
    fail(f"--config: {_unknown_key(e)}")
  except OSError as e:  # A missing or unreadable file; the last line names it.
    fail(f"--config: {str(e).splitlines()[-1].strip()}")
  except Exception as e:  # pylint: disable=broad-except
    # Whatever a config file raises while it loads is the user's input.
    fail(f"--config: {type(e).__name__}: {one_line(e)}")
  return argv


def guard(main: Callable[[List[str]], None],
          workdir: Callable[[], Optional[str]] = lambda: None
          ) -> Callable[[List[str]], None]:
  """``main`` with this module's exit statuses and error lines; ``workdir()``
  is where a stopped run's library output goes."""

  def guarded(argv):
    try:
      main(argv)
    except InputError as e:
      fail(one_line(e))
    except KeyboardInterrupt as e:
      status, prefix, message = _interrupt_line(e)
      fail(message, status, prefix, workdir())
    except (RunStopped, FloatingPointError) as e:
      fail(one_line(e), EXIT_STOPPED, workdir=workdir())
    except OSError as e:
      fail(f"{one_line(e)}; nothing written before it is lost, rerun the same command "
           "to resume", EXIT_STOPPED, workdir=workdir())
    except Exception as e:  # pylint: disable=broad-except
      if not _out_of_memory(e):
        raise
      fail(f"out of memory ({type(e).__name__}: {one_line(e)[:200]}); reduce "
           "config.model.num_codewords, the batch sizes or the runs trained together; "
           "every checkpoint written is kept", EXIT_STOPPED, workdir=workdir())

  return guarded


def _out_of_memory(error: Exception) -> bool:
  """Python's MemoryError, or XLA's RESOURCE_EXHAUSTED (matched by name, so
  that this module does not import jax)."""
  return isinstance(error, MemoryError) or (
      type(error).__name__ in ("XlaRuntimeError", "JaxRuntimeError")
      and "RESOURCE_EXHAUSTED" in str(error))


@contextlib.contextmanager
def interruptible_start(module_name: str) -> Iterator[None]:
  """Ctrl-C or SIGTERM while a launcher (``module_name`` ``"__main__"``;
  an import of it changes nothing) imports its modules, or a module of the
  ``experiments`` extra missing: one line.

  A signal is only recorded while the modules import (``signals.install``'s
  ``record_only``: an exception inside jaxlib's initialisation can crash the
  interpreter later) and reported once they have.
  """
  if module_name != "__main__":
    yield
    return
  signals.install(record_only=True)
  try:
    yield
  except ModuleNotFoundError as e:
    print(f"error: the launcher needs its extra, pip install 'softvq_jax[experiments]' "
          f"({e})", file=sys.stderr, flush=True)
    _leave(EXIT_INPUT)
  if signals.received() is not None:
    _stop_on_signal(signals.received(), " while starting; nothing was written")


def _workdir_flag() -> Optional[str]:
  return flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else None


def _leave(status) -> NoReturn:
  """Exits with ``status``; a failure leaves at once (``os._exit``): orbax's
  threads of a failed save never finish, and a teardown while XLA compiles
  can crash."""
  if status:
    code = status if isinstance(status, int) else EXIT_STOPPED
    for stream in (sys.stdout, console.stream()):
      stream.flush()
    os._exit(code)  # pylint: disable=protected-access
  console.save(_workdir_flag())
  sys.exit(0)


def _stop_on_signal(error: KeyboardInterrupt, suffix: str = "") -> NoReturn:
  """The line and exit status of Ctrl-C or SIGTERM that ``guard`` did not see."""
  status, prefix, message = _interrupt_line(error)
  print(f"{prefix}: {message}{suffix}", file=console.stream(), flush=True)
  _leave(status)


def run(main: Callable[[List[str]], None]) -> NoReturn:
  """``app.run(main)`` with this module's exit statuses and error lines,
  SIGTERM as Ctrl-C, and the libraries' output captured."""
  signals.install()
  console.capture()
  try:
    app.run(guard(main, _workdir_flag), flags_parser=parse_flags)
  except SystemExit as e:
    if not e.code and signals.received() is not None:
      # A signal whose exception Python dropped: the command did not finish.
      _stop_on_signal(signals.received())
    _leave(e.code)
  except KeyboardInterrupt as e:  # Ctrl-C while the flags load.
    _stop_on_signal(e)
  except BaseException:  # pylint: disable=broad-except
    # A bug, not an input or a stop: its traceback belongs on the terminal.
    traceback.print_exc(file=console.stream())
    _leave(EXIT_STOPPED)
  _leave(0)
