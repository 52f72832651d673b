"""DCASE2017 Task 1, ResNet, RN3: the seed's protocol (see seed_tables)."""

from experiments.configs import seed_tables


def get_config():
  return seed_tables.cell("dcase2017", "ResNet", "RN3")
