"""Structured pruning: remove zero groups to get a genuinely smaller NNX model.

:func:`prune` cuts every state leaf the :class:`~hspg_jax.flax.ChannelGraph`
names: the producers' filters and biases, the BatchNorm scales, biases and
running statistics (members), and the consumers' input slices (dependents),
then rebuilds the model from the same graph definition with the smaller arrays
and updates the layers' size attributes (``in_features``, ``out_features``,
``num_features``). Because each removed group is exactly zero and
zero-invariant, the pruned model's eval-mode outputs equal the dense model's
up to float summation order.

Cost is counted analytically: :func:`count_macs` adds up the
multiply-accumulates of every ``conv_general_dilated`` and ``dot_general`` in
the traced eval forward (``prod(out) * kernel_h * kernel_w * in_channels`` for
a conv, ``prod(out) * contracted`` for a dot); FLOPs are about twice that.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from hspg_jax import groups as groups_lib
from hspg_jax import metrics
from hspg_jax.flax import _dataflow
from hspg_jax.flax import _trace
from hspg_jax.flax.groups import ChannelGraph

__all__ = ["PruneReport", "count_macs", "count_params", "prune", "prune_report"]


def count_params(model: nnx.Module) -> int:
  """Number of scalars in the model's ``nnx.Param`` leaves."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))))


def count_macs(model: nnx.Module, inputs, *, apply_fn=None) -> int:
  """Multiply-accumulates of the eval forward on ``inputs`` (array, struct or shape).

  Counts every conv and dot product in the traced jaxpr; nothing is computed.

  Example:
    >>> from flax import nnx
    >>> import hspg_jax.flax
    >>> hspg_jax.flax.count_macs(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), (2, 4))
    24
  """
  return _dataflow.count_macs(_trace.trace_eval(model, inputs, apply_fn).jaxpr)


def _check_graph(paths, shapes, graph: ChannelGraph):
  have = dict(zip(paths, shapes))
  for path, shape in zip(graph.paths, graph.shapes):
    if have.get(path) != shape:
      raise ValueError(
          f"state leaf {path!r}: the model has shape {have.get(path)}, the ChannelGraph was "
          f"built for {shape}; run analyze_channels on this model")


def keep_indices(model: nnx.Module, graph: ChannelGraph) -> dict[tuple[str, int], np.ndarray]:
  """``{(state path, axis): indices kept}`` for every leaf axis pruning cuts."""
  params = nnx.state(model, nnx.Param)
  zero = {k: np.asarray(v) for k, v in metrics.zero_group_masks(params, graph.structure).items()}
  remove = {}
  for fam in graph.families:
    r = zero[fam.name].copy()
    if r.all():
      r[0] = False  # keep one (zero) channel rather than build zero-size arrays
    remove[fam.name] = r
  shapes = dict(zip(graph.paths, graph.shapes))
  keep: dict[tuple[str, int], np.ndarray] = {}

  def mask(path, axis):
    if (path, axis) not in keep:
      keep[(path, axis)] = np.ones(shapes[path][axis], bool)
    return keep[(path, axis)]

  for fam in graph.families:
    r = remove[fam.name]
    for path, axis in fam.members:
      mask(path, axis)[:] &= ~r
    for path, axis, start, n, off in fam.dependents:
      mask(path, axis)[start:start + n] &= ~r[off:off + n]
  return {k: np.flatnonzero(v) for k, v in keep.items()}


def prune(model: nnx.Module, graph: ChannelGraph) -> nnx.Module:
  """A new, smaller model without the exactly-zero groups of ``model``.

  Args:
    model: the trained model; its ``nnx.Param`` groups that are exactly zero
      (all members) are removed. Not modified.
    graph: from :func:`~hspg_jax.flax.analyze_channels` on this model (or one
      with the same structure and shapes).

  Returns:
    A model of the same class and graph whose affected layers have fewer
    channels; its eval-mode outputs equal ``model``'s to float tolerance. A
    family whose groups are all zero keeps one (zero) channel.

  Raises:
    ValueError: if ``graph`` does not match the model's state, or the pruned
      model's output shape differs from the dense one's.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import hspg_jax.flax
    >>> model = nnx.Sequential(nnx.Linear(4, 6, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(6, 2, rngs=nnx.Rngs(1)))
    >>> graph = hspg_jax.flax.analyze_channels(model, (1, 4))
    >>> k, b = model.layers[0].kernel, model.layers[0].bias
    >>> k[...] = k[...].at[:, :4].set(0.0); b[...] = b[...].at[:4].set(0.0)
    >>> small = hspg_jax.flax.prune(model, graph)
    >>> small.layers[0].kernel.shape, small.layers[2].kernel.shape
    ((4, 2), (2, 2))
    >>> x = jnp.ones((3, 4))
    >>> bool(jnp.allclose(model(x), small(x), atol=1e-6))
    True
  """
  graphdef, state = nnx.split(model)
  path_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  paths = [groups_lib.path_str(p) for p, _ in path_leaves]
  _check_graph(paths, [tuple(np.shape(x)) for _, x in path_leaves], graph)
  keep = keep_indices(model, graph)
  by_path: dict[str, list] = {}
  for (path, axis), idx in keep.items():
    by_path.setdefault(path, []).append((axis, idx))
  leaves = []
  for path, (_, x) in zip(paths, path_leaves):
    for axis, idx in by_path.get(path, ()):
      if len(idx) != np.shape(x)[axis]:
        x = x[(slice(None),) * axis + (idx,)]
    leaves.append(x)
  small = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))
  _sync_sizes(small)
  if graph.inputs is not None:
    dense_out = jax.tree_util.tree_map(
        lambda v: v.aval.shape,
        _trace.trace_eval(model, graph.inputs, graph.apply_fn).jaxpr.jaxpr.outvars)
    small_out = jax.tree_util.tree_map(
        lambda v: v.aval.shape,
        _trace.trace_eval(small, graph.inputs, graph.apply_fn).jaxpr.jaxpr.outvars)
    if dense_out != small_out:
      raise ValueError(f"pruned model's output shapes {small_out} differ from {dense_out}")
  return small


def _sync_sizes(model: nnx.Module):
  """Updates size attributes so they describe the cut arrays."""
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.Conv):
      shape = tuple(m.kernel.shape)
      m.in_features = shape[-2] * m.feature_group_count
      m.out_features = shape[-1]
      m.kernel_shape = shape
    elif isinstance(m, nnx.Linear):
      m.in_features, m.out_features = tuple(m.kernel.shape)
    elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm)):
      ref = next(v for v in (getattr(m, "scale", None), getattr(m, "mean", None),
                             getattr(m, "bias", None)) if v is not None)
      m.num_features = tuple(ref.shape)[-1]


@dataclasses.dataclass(frozen=True)
class PruneReport:
  """Parameters and multiply-accumulates before and after pruning."""

  params_before: int
  params_after: int
  macs_before: int
  macs_after: int

  @property
  def param_ratio(self) -> float:
    """``params_before / params_after`` (compression)."""
    return self.params_before / self.params_after

  @property
  def mac_ratio(self) -> float:
    """``macs_before / macs_after`` (the FLOPs ratio)."""
    return self.macs_before / self.macs_after

  def __str__(self) -> str:
    return (f"{'':8}{'dense':>14}{'pruned':>14}{'ratio':>8}\n"
            f"{'params':8}{self.params_before:>14,}{self.params_after:>14,}"
            f"{self.param_ratio:>8.2f}\n"
            f"{'MACs':8}{self.macs_before:>14,}{self.macs_after:>14,}{self.mac_ratio:>8.2f}")


def prune_report(dense: nnx.Module, pruned: nnx.Module, inputs, *, apply_fn=None) -> PruneReport:
  """Counts parameters and analytic MACs (:func:`count_macs`) of both models."""
  return PruneReport(count_params(dense), count_params(pruned),
                     count_macs(dense, inputs, apply_fn=apply_fn),
                     count_macs(pruned, inputs, apply_fn=apply_fn))
