"""SVHN (tfds svhn_cropped), Table 2; see softvq_jax/launch/images32.py."""

from softvq_jax.launch import images32


def get_config(args=None):
  return images32.get_config("svhn_cropped", args)

