"""The main job: ``hspg-asc train`` with no arguments runs exactly this config."""

from experiments.asc import config


def get_config():
  return config.default_config()
