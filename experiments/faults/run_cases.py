"""The cases of ``fault_matrix.py`` about what a run is and when it stops
(issue 37): checkpoints of another config or other data, outputs lost after
the end, overrides a sweep owns, a signal between checkpoints, a
workdir string that cannot be a path."""

import os
import signal

import numpy as np

from experiments.faults import fault_cases as fc


def other_config_without_config_json(ctx, launch):
  """Repro 1: config.json gone, a rerun at another learning rate."""
  workdir = fc.unfinished_after_200(ctx, "no_config_json")
  os.remove(os.path.join(workdir, "config.json"))
  return fc.refused("no_config_json", "--config.train.learning_rate=0.001")(ctx, launch)


def other_data_on_resume(ctx, launch):
  """Repro 4: unchecked files (no md5) replaced between a stop and the rerun."""
  data = fc.mnist_dir(ctx, "changed_data_files")
  extra = (*fc.mnist_args(data), "--config.data.verify_md5=False")
  workdir = ctx.path("changed_data")
  launch(fc.args(workdir, *extra))
  fc.unfinish(workdir)
  fc.write_idx(os.path.join(data, fc.MNIST_NAMES[0]),
               np.random.default_rng(1).integers(0, 256, (50, 28, 28)))
  return fc.refused("changed_data", *extra)(ctx, launch)


def lost_latents_made_again(ctx, launch):
  """Repro 8: a finished run whose latents.npz was deleted."""
  workdir = fc.finished_copy(ctx, "lost_latents")
  os.remove(os.path.join(workdir, "latents.npz"))
  outcome, same, note = fc.same_eval(ctx, workdir, launch(fc.args(workdir)))
  made = os.path.exists(os.path.join(workdir, "latents.npz"))
  return outcome, same and made, note or ("" if made else "latents.npz not made again")


def sigterm_between_checkpoints(ctx, launch):
  """Repro 12: SIGTERM after step 100 of a run that checkpoints only at its end."""
  workdir = ctx.path("sigterm_no_checkpoint_due")
  extra = ("--config.train.checkpoint_every=100000",)
  log = os.path.join(workdir, "metrics.jsonl")
  outcome = launch(fc.args(workdir, *extra), send=signal.SIGTERM,
                   trigger=lambda: os.path.exists(log) and os.path.getsize(log) > 0)
  saved = os.listdir(os.path.join(workdir, "checkpoints"))
  _, same, note = fc.same_eval(ctx, workdir, launch(fc.args(workdir, *extra)))
  return outcome, same and saved != [], note or ("" if saved else "no checkpoint saved")


def workdir_string(name, workdir):
  """Repro 10: ``--workdir=<workdir>`` refused with nothing created."""
  def act(ctx, launch):
    cwd = ctx.path(name)
    os.makedirs(cwd)
    outcome = launch([*fc.BASE, f"--workdir={workdir.format(cwd=cwd)}"])
    return outcome, os.listdir(cwd) == [], "it created folders"
  return act
