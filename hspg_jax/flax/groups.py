"""Zero-invariant groups of a Flax NNX model, derived from its dataflow.

:func:`analyze_channels` traces the model's eval-mode forward with
``jax.make_jaxpr`` and follows every channel from the conv / dense layer that
produces it to the layers that consume it (see ``_dataflow`` for the
abstract interpretation). The result is one group per output channel of each
conv / dense layer, holding every parameter slice that must vanish with it:
its kernel filter and bias, and the BatchNorm scale and bias that follow.
Channels summed by a residual add (identity or projection shortcuts) or
multiplied together (a gate) share one family; channels of a concatenation
map back to their producers; a depthwise conv's filters join the family of
the channels they filter; a layer applied to several inputs ties them into one
family; a conv output flattened into a dense layer maps each channel to its
strided set of dense inputs; a grouped conv's groups are kept aligned
(:attr:`ChannelGraph.ties`, :attr:`ChannelGraph.equal_blocks`). Zero stays
zero through ReLU-like and clipped activations (ReLU6, hard tanh, hard swish,
leaky ReLU, ELU, GELU, SiLU, ...), pooling, dropout and per-channel
normalizations (BatchNorm, GroupNorm with ``group_size=1``, InstanceNorm,
LayerNorm over non-channel axes). Channels that reach the model output (the
classifier's) are never grouped.

Zero-invariance is checked, not assumed: a family is grouped only if zeroing
all its members makes the channel exactly zero at every consumer, and only if
pruning can rebuild every layer whose arrays it cuts. Whatever the analysis
cannot follow leaves the layers involved ungrouped -- a conservative
fallback, listed with the reason in :attr:`ChannelGraph.ungrouped` -- or, with
``strict=True``, raises. Declined, with the reason: statistics across
channels (LayerNorm or RMSNorm over channels, GroupNorm with several channels
per group: a zero channel still shifts the others' mean and variance), slices
of the channel axis at fixed offsets (splits, shifts, rolls), ops that map
zero elsewhere (sigmoid, softplus, an added constant), a depthwise conv with a
channel multiplier, arrays of the channel width baked into the model, layers
whose size attributes pruning cannot update, and unknown primitives.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
from flax import nnx

from hspg_jax import groups as groups_lib
from hspg_jax.flax import _dataflow
from hspg_jax.flax import _families
from hspg_jax.flax import _layers
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
    flat_dependents: ``(state path, axis, start, length, offset, outer, mid,
      inner)``: consumer slices of channels flattened into a larger axis (a
      conv's output reshaped into a dense layer's input): the leaf's ``axis``
      is viewed as ``(outer, mid, inner)`` and family channel ``offset + j`` is
      ``mid`` position ``start + j``, for every ``outer`` and ``inner`` index.
  """

  name: str
  size: int
  producers: tuple[str, ...]
  members: tuple[tuple[str, int], ...]
  dependents: tuple[tuple[str, int, int, int, int], ...]
  flat_dependents: tuple[tuple[str, int, int, int, int, int, int, int], ...] = ()


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
    inputs: the example input's ``ShapeDtypeStruct``; pruning checks the pruned
      model on a random input of this shape and dtype.
    apply_fn: the forward used, or None for ``model(inputs)``.
    ties: tuples of ``(family, group)`` that pruning removes together or not at
      all (None stands for a channel that is never removed): the channels a
      grouped conv reads with one kernel input position, since its groups share
      the kernel's input axis.
    equal_blocks: ``(family, G)``: pruning removes as many groups from each of
      the ``G`` consecutive blocks of the family (a grouped conv's outputs).
  """

  spec: Any
  structure: groups_lib.GroupStructure
  families: tuple[ChannelFamily, ...]
  ungrouped: tuple[tuple[str, str], ...]
  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  inputs: Any = dataclasses.field(default=None, repr=False, compare=False)
  apply_fn: Any = dataclasses.field(default=None, repr=False, compare=False)
  ties: tuple[tuple[tuple[str, int] | None, ...], ...] = ()
  equal_blocks: tuple[tuple[str, int], ...] = ()

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
  result = _families.finalize(analysis)

  params = nnx.state(model, nnx.Param)
  p_leaves, p_def = jax.tree_util.tree_flatten(params)
  if len(p_leaves) != traced.num_params:
    raise ValueError("nnx.state(model, nnx.Param) changed while tracing")
  spec_leaves: list = [None] * len(p_leaves)
  families, ungrouped, names = [], [], {}
  module = lambda leaf: _trace.module_path(traced.paths[leaf])  # noqa: E731
  modules = _layers.modules_by_path(model, groups_lib.path_str)
  blind = _layers.widths_without_arrays(modules)
  for info in result.families:
    producers = tuple(dict.fromkeys(module(leaf) for leaf in info.producers))
    reasons = info.reasons or _rebuild_problems(info, traced, modules, blind)
    if reasons:
      ungrouped.extend((p, "; ".join(reasons)) for p in producers)
      continue
    name = producers[0] + (f"+{len(producers) - 1}" if len(producers) > 1 else "")
    names[info.root] = name
    for leaf, axis in info.members:
      if is_param[leaf]:
        spec_leaves[leaf] = groups_lib.GroupAxis(axis, name)
    families.append(ChannelFamily(
        name, info.size, producers,
        tuple((traced.paths[leaf], axis) for leaf, axis in info.members),
        tuple((traced.paths[leaf], axis, s, k, o) for leaf, axis, s, k, o in info.dependents),
        tuple((traced.paths[d[0]],) + tuple(d[1:]) for d in info.flat_dependents)))
  unsupported = sorted({why for _, why in ungrouped if "unsupported op" in why})
  if unsupported:
    warnings.warn("analyze_channels: some layers are left ungrouped (conservative fallback): "
                  + "; ".join(unsupported), stacklevel=2)
  spec = jax.tree_util.tree_unflatten(p_def, spec_leaves)
  structure = groups_lib.resolve(params, spec)
  ties, equal_blocks = _constraints(result, names)
  return ChannelGraph(spec, structure, tuple(families), tuple(ungrouped), traced.paths,
                      traced.shapes, _trace.as_abstract(inputs), apply_fn, ties, equal_blocks)


def _rebuild_problems(info, traced, modules, blind) -> tuple[str, ...]:
  """Reasons pruning could not rebuild a layer whose leaves this family cuts (or sees)."""
  keys = set(info.members) | {d[:2] for d in info.dependents + info.flat_dependents}
  out = [why for width, why in blind if info.unit_split and info.size == width]
  for leaf, axis in sorted(keys):
    path = traced.paths[leaf]
    mpath, m = _layers.owner(modules, path)
    why = _layers.cut_problem(mpath, m, path.rsplit("/", 1)[-1], traced.shapes[leaf][axis])
    if why:
      out.append(why)
  return tuple(dict.fromkeys(out))


def _constraints(result, names):
  """Ties and equal blocks between grouped families (by family name)."""
  ties = []
  for items in result.ties:
    named = tuple(None if it is None or it[0] not in names else (names[it[0]], it[1])
                  for it in items)
    if len({it for it in named if it is not None}) > 1 or (
        None in named and any(it is not None for it in named)):
      ties.append(named)
  equal = tuple((names[root], g) for root, g in result.equal_blocks if root in names)
  return tuple(ties), equal


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
