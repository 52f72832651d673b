"""DCASE2018 Task 1, VGG, HSPG 1e-3: the seed's protocol (see seed_tables)."""

from experiments.configs import seed_tables


def get_config():
  return seed_tables.cell("dcase2018", "VGG", "HSPG 1e-3")
