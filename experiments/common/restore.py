"""A finished run restored for the experiments' scripts: its config (with
the keys added since it ran), data, model and last checkpoint's variables."""

import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from softvq_jax.data import input_pipeline
from softvq_jax.launch import checkpoints
from softvq_jax.launch import config_keys
from softvq_jax.launch import workdir as workdir_lib
from softvq_jax.model import autoencoder


def restore_variables(run_dir: str):
  """The model variables of the run's newest checkpoint, on the default device."""
  # orbax restores from absolute paths only.
  path = os.path.abspath(os.path.join(run_dir, checkpoints.CHECKPOINTS_DIR,
                                      str(checkpoints.latest_step(run_dir)), "default"))
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  state = checkpointer.restore(path, target)
  return {"params": state["params"], **state["model_state"]}


def load_run(run_dir: str):
  """``(config, data, model, variables)`` of the finished run in ``run_dir``."""
  config = ml_collections.ConfigDict(workdir_lib.read_json(
      os.path.join(run_dir, workdir_lib.CONFIG_FILE)))
  for key, value in config_keys.ADDED_KEYS.items():  # Runs from before a key existed.
    section, field = key.split(".")
    if field not in config[section]:
      config[section][field] = value
  data = input_pipeline.load(config.data)
  model = autoencoder.make_model(config.model, data.image_shape)
  return config, data, model, restore_variables(run_dir)
