"""DCASE2017 Task 1, ResNet, HSPG 1e-4: the seed's protocol (see seed_tables)."""

from experiments.configs import seed_tables


def get_config():
  return seed_tables.cell("dcase2017", "ResNet", "HSPG 1e-4")
