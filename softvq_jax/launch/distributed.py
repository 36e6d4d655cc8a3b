"""Several processes (hosts) through JAX's own multi-process runtime.

``main`` and ``sweep`` take ``--distributed``: every process runs the same
command and calls ``jax.distributed.initialize`` before any JAX work. Its
coordinator, process count and process id come from, in this order,

1. ``--coordinator_address``, ``--num_processes``, ``--process_id``;
2. ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
3. JAX's cluster auto-detection (SLURM, TPU pods, Open MPI, ...), for what
   is still missing.

On CPU, JAX's gloo collectives are selected (the default has none across
processes). A process that stops answering makes the others stop after
``--heartbeat_timeout`` seconds with JAX's error, instead of hanging.
``check_same`` then makes sure that every process was started with the same
config and workdir. Process 0 evaluates and writes results, metrics and
figures; every process takes part in training and in the orbax checkpoints,
as orbax requires.
"""

import dataclasses
import hashlib
import os
from typing import Mapping, Optional

from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from softvq_jax.errors import InputError
from softvq_jax.errors import one_line

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
       "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def define_flags() -> None:
  """The flags of a launcher that may run as one of several processes."""
  flags.DEFINE_bool("distributed", False, "Join a multi-process run: call "
                    "jax.distributed.initialize() first (see softvq_jax.launch.distributed).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0's "
                      "coordinator; default $JAX_COORDINATOR_ADDRESS, then auto-detected.")
  flags.DEFINE_integer("num_processes", None, "Number of processes; default "
                       "$JAX_NUM_PROCESSES, then auto-detected.")
  flags.DEFINE_integer("process_id", None, "This process, in [0, num_processes); "
                       "default $JAX_PROCESS_ID, then auto-detected.")
  flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds without a heartbeat after "
                       "which the other processes stop.")


@dataclasses.dataclass(frozen=True)
class Cluster:
  """What ``jax.distributed.initialize`` is given; None: auto-detected."""
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None


def resolve(values: Mapping[str, Optional[object]], environ: Mapping[str, str]) -> Cluster:
  """The cluster from flag ``values``, then ``environ``; bad values are InputErrors."""
  found = {}
  for field, variable in ENV.items():
    value = values.get(field)
    if value is None and environ.get(variable, "") != "":
      value = environ[variable]
      if field != "coordinator_address":
        try:
          value = int(value)
        except ValueError:
          raise InputError(f"${variable}={value!r} is not an integer") from None
    found[field] = value
  cluster = Cluster(**found)
  count, index = cluster.num_processes, cluster.process_id
  if count is not None and count < 1:
    raise InputError(f"--num_processes={count} is not valid; it must be >= 1")
  if index is not None and (index < 0 or (count is not None and index >= count)):
    bound = f"[0, {count})" if count is not None else ">= 0"
    raise InputError(f"--process_id={index} is not valid; it must be in {bound}")
  address = cluster.coordinator_address
  if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
    raise InputError(f"--coordinator_address={address!r} is not valid; give host:port")
  return cluster


def initialize(cluster: Cluster, heartbeat_timeout: int) -> None:
  """Starts JAX's multi-process runtime (gloo collectives on CPU)."""
  if heartbeat_timeout < 1:
    raise InputError(f"--heartbeat_timeout={heartbeat_timeout} is not valid; it must be >= 1")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
        cluster.coordinator_address, cluster.num_processes, cluster.process_id,
        heartbeat_timeout_seconds=heartbeat_timeout)
  except (RuntimeError, ValueError) as e:
    raise InputError(f"jax.distributed.initialize failed ({one_line(e)}); give "
                     "--coordinator_address, --num_processes and --process_id, or the "
                     "JAX_* variables, or run under a cluster JAX detects") from None
  logging.info("JAX process %d of %d, local devices %s", jax.process_index(),
               jax.process_count(), jax.local_devices())


def initialize_from_flags() -> None:
  """``initialize`` with the launcher's flags, if ``--distributed``."""
  values = flags.FLAGS
  if not values.distributed:
    return
  cluster = resolve({field: values[field].value for field in ENV}, os.environ)
  initialize(cluster, values.heartbeat_timeout)


def check_same(what: str, text: str) -> None:
  """Raises InputError on every process unless all processes hold ``text``.

  ``what`` names it in the message (e.g. "config and workdir").
  """
  if jax.process_count() == 1:
    return
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.uint32)
  every = np.asarray(multihost_utils.process_allgather(digest)).reshape(-1, 2)
  differ = [i for i, d in enumerate(every) if not np.array_equal(d, every[0])]
  if differ:
    raise InputError(f"processes {differ} were started with another {what} than process 0; "
                     "start every process with the same command")
