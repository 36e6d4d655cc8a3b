"""The command-line contract: bad flags and every way a command ends are one line with their exit
status."""

import errno
import signal

from absl import flags
from ml_collections import config_flags
import pytest

from softvq_jax.errors import InputError
from softvq_jax.errors import RunStopped
from softvq_jax.launch import cli
from softvq_jax.launch import signals
from tests import ROOT


@pytest.mark.parametrize("argv,line", [
    (["--config.train.num_step=5"],
     "error: --config: the config has no key 'num_step'; did you mean 'num_steps'?"),
    (["--config.modl.beta=1"],
     "error: --config: the config has no key 'modl'; did you mean 'model'?"),
    (["--config.train.num_steps=abc"],
     "error: flag --config.train.num_steps=abc: invalid literal for int() with base 10: "
     "'abc'"),
    (["--config=configs/digits.py:nope"], "error: ValueError: unknown preset 'nope'"),
    (["--config=configs/missing.py"],
     "error: --config: [Errno 2] No such file or directory: 'configs/missing.py'"),
    (["--config={broken}"], "error: --config: SyntaxError: invalid syntax"),
    (["--config={exits}"], "error: --config: the config file called sys.exit(0) while it "
     "loaded"),
    (["--config={none}"], "error: --config: get_config() returned None, not a ConfigDict"),
])
def test_bad_flags_are_one_line_and_status_2(argv, line, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  files_ = {"broken": "def get_config(:\n",
            "exits": "import sys\ndef get_config():\n  sys.exit(0)\n",
            "none": "def get_config():\n  return None\n"}
  for name, text in files_.items():
    (tmp_path / f"{name}.py").write_text(text)
  argv = [a.format(**{name: tmp_path / f"{name}.py" for name in files_}) for a in argv]
  if not any(a.startswith("--config=") for a in argv):
    argv = ["--config=configs/digits.py"] + argv
  flag_values = flags.FlagValues()
  # As at import time of main: the flag reads sys.argv for its override flags.
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True, sys_argv=["main", *argv])
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_flags(["main", *argv], flag_values)
  assert exit_info.value.code == cli.EXIT_INPUT
  err = capsys.readouterr().err
  assert err.startswith(line) and err.count("\n") == 1, err


@pytest.mark.parametrize("error,status,prefix", [
    (InputError("bad value"), cli.EXIT_INPUT, "error: bad value"),
    (FloatingPointError("non-finite"), cli.EXIT_STOPPED, "error: non-finite"),
    (RunStopped("disk"), cli.EXIT_STOPPED, "error: disk"),
    (OSError(errno.ENOSPC, "No space left on device"), cli.EXIT_STOPPED,
     "error: [Errno 28] No space left on device; nothing written before it is lost"),
    (KeyboardInterrupt("stopped by Ctrl-C. The last good checkpoint is at step 300"),
     cli.EXIT_INTERRUPTED, "interrupted: stopped by Ctrl-C. The last good checkpoint"),
    (signals.Terminated("stopped by SIGTERM. The last good checkpoint is at step 300"),
     143, "terminated: stopped by SIGTERM. The last good checkpoint"),
    (signals.Terminated("stopped by SIGHUP. The last good", signal.SIGHUP), 129,
     "terminated: stopped by SIGHUP. The last good"),  # Issue 37: a lost ssh session.
    (InputError("workdir /tmp/a\nb is a file"), cli.EXIT_INPUT,
     "error: workdir /tmp/a b is a file"),
    (MemoryError("cannot allocate"), cli.EXIT_STOPPED, "error: out of memory (MemoryError"),
])
def test_errors_end_in_one_line_with_their_status(error, status, prefix, capsys):
  def main(argv):
    del argv
    raise error

  with pytest.raises(SystemExit) as exit_info:
    cli.guard(main)(["main"])
  assert exit_info.value.code == status
  err = capsys.readouterr().err
  assert err.startswith(prefix) and err.count("\n") == 1, err
