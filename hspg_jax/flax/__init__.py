"""Flax NNX integration: zero-invariant groups from dataflow, structured pruning.

Imports flax; the ``hspg_jax`` core does not import this module.

Typical use::

  graph = hspg_jax.flax.analyze_channels(model, example_input)
  print(graph.table())                           # families, members, groups
  tx = hspg_jax.hspg(lr, lam, graph.spec)        # train on nnx.state(model, nnx.Param)
  ...
  small = hspg_jax.flax.prune(model, graph)      # zero groups removed, same outputs
  print(hspg_jax.flax.prune_report(model, small, example_input))
"""

from hspg_jax.flax.groups import ChannelFamily
from hspg_jax.flax.groups import ChannelGraph
from hspg_jax.flax.groups import analyze_channels
from hspg_jax.flax.groups import zero_invariant_groups
from hspg_jax.flax.prune import PruneReport
from hspg_jax.flax.prune import count_macs
from hspg_jax.flax.prune import count_params
from hspg_jax.flax.prune import prune
from hspg_jax.flax.prune import prune_report
from hspg_jax.flax.prune import with_state

__all__ = [
    "ChannelFamily",
    "ChannelGraph",
    "PruneReport",
    "analyze_channels",
    "count_macs",
    "count_params",
    "prune",
    "prune_report",
    "with_state",
    "zero_invariant_groups",
]
