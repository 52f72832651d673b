"""Zero-invariant groups of a Flax NNX model, derived from its dataflow.

:func:`analyze_channels` traces the model's eval-mode forward with
``jax.make_jaxpr`` and follows every channel from the conv / dense layer that
produces it to the layers that consume it (see ``_dataflow`` for the
abstract interpretation). The result is one group per output channel of each
conv / dense layer, holding every parameter slice that must vanish with it:
its kernel filter and bias, and the BatchNorm scale and bias that follow.
Channels summed by a residual add (identity shortcuts included) or multiplied
together share one family; channels of a concatenation map back to their
producers. Channels that reach the model output (the classifier's) are never
grouped.

Zero-invariance is checked, not assumed: a family is grouped only if zeroing
all its members makes the channel exactly zero at every consumer. Whatever
the analysis cannot follow (an unknown primitive, a reshape that merges the
channel axis, a per-channel parameter spanning several producers, ...) leaves
the layers involved ungrouped -- a conservative fallback, listed with the
reason in :attr:`ChannelGraph.ungrouped` -- or, with ``strict=True``, raises.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
from flax import nnx

from hspg_jax import groups as groups_lib
from hspg_jax.flax import _dataflow
from hspg_jax.flax import _trace

__all__ = ["ChannelFamily", "ChannelGraph", "analyze_channels", "zero_invariant_groups"]


@dataclasses.dataclass(frozen=True)
class ChannelFamily:
  """One grouped family: ``size`` groups; group ``i`` is channel ``i`` everywhere.

  Attributes:
    name: the family name used in the group spec (the first producer's module
      path, ``+N`` when N more producers share it).
    size: number of groups (channels).
    producers: module paths of the conv / dense layers producing the channels.
    members: ``(state path, axis)`` of every leaf cut in full along ``axis``:
      the spec's members (``nnx.Param``) and the BatchNorm statistics.
    dependents: ``(state path, axis, start, length, offset)`` consumer slices:
      family channel ``offset + j`` is position ``start + j`` along ``axis``.
  """

  name: str
  size: int
  producers: tuple[str, ...]
  members: tuple[tuple[str, int], ...]
  dependents: tuple[tuple[str, int, int, int, int], ...]


@dataclasses.dataclass(frozen=True)
class ChannelGraph:
  """Result of :func:`analyze_channels`.

  Attributes:
    spec: the group spec for ``nnx.state(model, nnx.Param)``; pass it (or
      :attr:`structure`) as ``groups=`` to :func:`hspg_jax.hspg`.
    structure: ``spec`` resolved against the params (``.table()`` prints it).
    families: the grouped families, in the order they are first produced.
    ungrouped: ``(producer module path, reason)`` for every layer whose output
      channels are left ungrouped.
    paths: path of every state leaf the analysis saw (params first).
    shapes: their shapes.
    inputs: the example input's ``ShapeDtypeStruct`` (pruning re-checks shapes).
    apply_fn: the forward used, or None for ``model(inputs)``.
  """

  spec: Any
  structure: groups_lib.GroupStructure
  families: tuple[ChannelFamily, ...]
  ungrouped: tuple[tuple[str, str], ...]
  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  inputs: Any = dataclasses.field(default=None, repr=False, compare=False)
  apply_fn: Any = dataclasses.field(default=None, repr=False, compare=False)

  def table(self) -> str:
    """The group table, then the ungrouped layers and why."""
    lines = [self.structure.table()]
    if self.ungrouped:
      lines.append("ungrouped (conservative fallback):")
      lines.extend(f"  {p}: {why}" for p, why in self.ungrouped)
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()


def analyze_channels(model: nnx.Module, inputs, *, apply_fn=None,
                     strict: bool = False) -> ChannelGraph:
  """Finds the zero-invariant channel groups of ``model`` from its dataflow.

  Args:
    model: a Flax NNX module. It is not modified (the trace runs on an eval-mode
      copy sharing its arrays).
    inputs: an example input: an array, a ``jax.ShapeDtypeStruct`` or a shape
      tuple (float32). Only shapes and dtypes are used; nothing is computed.
    apply_fn: ``apply_fn(model, inputs) -> outputs``; default ``model(inputs)``.
    strict: raise ``ValueError`` where the analysis meets an op it cannot
      follow, instead of leaving the layers involved ungrouped.

  Returns:
    A :class:`ChannelGraph`.

  Raises:
    ValueError: in strict mode, naming the op and the layers whose channels
      reach it.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> import hspg_jax.flax
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.conv = nnx.Conv(2, 8, (3, 3), use_bias=False, rngs=rngs)
    ...     self.bn = nnx.BatchNorm(8, rngs=rngs)
    ...     self.head = nnx.Linear(8, 3, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.head(jnp.mean(nnx.relu(self.bn(self.conv(x))), axis=(1, 2)))
    >>> graph = hspg_jax.flax.analyze_channels(Net(nnx.Rngs(0)), (1, 16, 16, 2))
    >>> print(graph.structure.table())  # doctest: +NORMALIZE_WHITESPACE
    family  groups  size  members
    conv         8    20  bn/bias[0], bn/scale[0], conv/kernel[3]
    1 families, 8 groups
    >>> graph.ungrouped
    (('head', 'reaches the model output'),)
  """
  traced = _trace.trace_eval(model, inputs, apply_fn)
  n = traced.num_leaves
  is_param = [i < traced.num_params for i in range(n)]
  analysis = _dataflow.Analysis(traced.paths, traced.shapes, is_param, strict=strict)
  try:
    analysis.run(traced.jaxpr, n)
  except _dataflow.Unsupported as e:
    raise ValueError(f"analyze_channels(strict=True): {e}") from None

  params = nnx.state(model, nnx.Param)
  p_leaves, p_def = jax.tree_util.tree_flatten(params)
  if len(p_leaves) != traced.num_params:
    raise ValueError("nnx.state(model, nnx.Param) changed while tracing")
  spec_leaves: list = [None] * len(p_leaves)
  families, ungrouped = [], []
  module = lambda leaf: _trace.module_path(traced.paths[leaf])  # noqa: E731
  for info in analysis.families():
    producers = tuple(dict.fromkeys(module(leaf) for leaf in info.producers))
    if info.reasons:
      ungrouped.extend((p, "; ".join(info.reasons)) for p in producers)
      continue
    name = producers[0] + (f"+{len(producers) - 1}" if len(producers) > 1 else "")
    for leaf, axis in info.members:
      if is_param[leaf]:
        spec_leaves[leaf] = groups_lib.GroupAxis(axis, name)
    families.append(ChannelFamily(
        name, info.size, producers,
        tuple((traced.paths[leaf], axis) for leaf, axis in info.members),
        tuple((traced.paths[leaf], axis, s, k, o) for leaf, axis, s, k, o in info.dependents)))
  unsupported = sorted({why for _, why in ungrouped if "unsupported op" in why})
  if unsupported:
    warnings.warn("analyze_channels: some layers are left ungrouped (conservative fallback): "
                  + "; ".join(unsupported), stacklevel=2)
  spec = jax.tree_util.tree_unflatten(p_def, spec_leaves)
  structure = groups_lib.resolve(params, spec)
  return ChannelGraph(spec, structure, tuple(families), tuple(ungrouped), traced.paths,
                      traced.shapes, _trace.as_abstract(inputs), apply_fn)


def zero_invariant_groups(model: nnx.Module, inputs, **kw):
  """The group spec of :func:`analyze_channels` (for ``nnx.state(model, nnx.Param)``).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import hspg_jax, hspg_jax.flax
    >>> model = nnx.Sequential(nnx.Linear(4, 6, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(6, 2, rngs=nnx.Rngs(1)))
    >>> spec = hspg_jax.flax.zero_invariant_groups(model, (1, 4))
    >>> tx = hspg_jax.hspg(0.1, 1e-3, spec)
    >>> state = tx.init(nnx.state(model, nnx.Param))
    >>> hspg_jax.resolve_groups(nnx.state(model, nnx.Param), spec).num_groups
    6
  """
  return analyze_channels(model, inputs, **kw).spec
