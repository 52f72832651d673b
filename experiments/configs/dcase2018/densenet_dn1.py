"""DCASE2018 Task 1, DenseNet, DN1: the seed's protocol (see seed_tables)."""

from experiments.configs import seed_tables


def get_config():
  return seed_tables.cell("dcase2018", "DenseNet", "DN1")
