"""Structured pruning: remove zero groups to get a genuinely smaller NNX model.

:func:`prune` cuts every state leaf the :class:`~hspg_jax.flax.ChannelGraph`
names: the producers' filters and biases, the BatchNorm scales, biases and
running statistics (members), and the consumers' input slices (dependents),
then rebuilds the model from the same graph definition with the smaller arrays
and updates the layers' size attributes (``in_features``, ``out_features``,
``num_features``, ``num_groups``, ``kernel_shape``, a depthwise conv's
``feature_group_count``...). Because each removed group is exactly zero and
zero-invariant, the pruned model's eval-mode outputs equal the dense model's
up to float summation order; :func:`prune` checks that on a probe input before
returning the pruned model.

The dense model with its zero groups *is* the masked model: every member of a
removed group is exactly zero (a BatchNorm's scale and bias included, so its
running statistics for that channel no longer matter), so the check compares
the dense model's eval outputs with the pruned model's.

Cost is counted analytically: :func:`count_macs` adds up the
multiply-accumulates of every ``conv_general_dilated`` and ``dot_general`` in
the traced eval forward (``prod(out) * kernel_h * kernel_w * in_channels`` for
a conv, ``prod(out) * contracted`` for a dot); FLOPs are about twice that.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hspg_jax import groups as groups_lib
from hspg_jax.flax import _dataflow
from hspg_jax.flax import _layers
from hspg_jax.flax import _trace
from hspg_jax.flax.groups import ChannelGraph

__all__ = ["PruneReport", "count_macs", "count_params", "prune", "prune_report", "with_state"]


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


def removal_masks(model: nnx.Module, graph: ChannelGraph, only=None) -> dict[str, np.ndarray]:
  """``{family: bool mask of the groups pruning removes}``.

  A group is removed when it is exactly zero, unless a constraint keeps it: a
  family keeps at least one channel, ``graph.ties`` are removed together or not
  at all, and the blocks of ``graph.equal_blocks`` lose as many groups each.
  ``only``: restrict removal to these family names.
  """
  zero = _zero_groups(model, graph)
  remove = {f.name: zero[f.name].copy() if only is None or f.name in only
            else np.zeros(f.size, bool) for f in graph.families}
  changed = True
  while changed:  # only ever un-removes, so this ends
    changed = False
    for r in remove.values():
      if r.size and r.all():
        r[0] = False  # keep one (zero) channel rather than build zero-size arrays
        changed = True
    for tie in graph.ties:
      if not all(it is not None and remove[it[0]][it[1]] for it in tie):
        for it in tie:
          if it is not None and remove[it[0]][it[1]]:
            remove[it[0]][it[1]] = False
            changed = True
    for name, g in graph.equal_blocks:
      blocks = remove[name].reshape(g, -1)
      least = int(blocks.sum(axis=1).min())
      for row in blocks:
        extra = np.flatnonzero(row)[least:]
        if extra.size:
          row[extra] = False
          changed = True
  return remove


def _zero_groups(model: nnx.Module, graph: ChannelGraph) -> dict[str, np.ndarray]:
  """``{family: True where every member's slice is exactly zero}`` (on the host).

  Exactly zero, entry by entry (a squared norm would also call 1e-30 zero).
  """
  leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
  out = {}
  for fam in graph.structure.families:
    zero = np.ones(fam.num_groups, bool)
    for m in fam.members:
      a = np.moveaxis(np.asarray(leaves[m.index]), m.axis, 0)
      zero &= ~np.any(a.reshape(a.shape[0], -1) != 0, axis=1)
    out[fam.name] = zero
  return out


def keep_indices(model: nnx.Module, graph: ChannelGraph,
                 remove=None) -> dict[tuple[str, int], np.ndarray]:
  """``{(state path, axis): indices kept}`` for every leaf axis pruning cuts."""
  remove = removal_masks(model, graph) if remove is None else remove
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
    for path, axis, start, n, off, outer, mid, inner in fam.flat_dependents:
      m = mask(path, axis).reshape(outer, mid, inner)  # a view: writes go through
      m[:, start:start + n, :] &= ~r[off:off + n][None, :, None]
  return {k: np.flatnonzero(v) for k, v in keep.items()}


def _cut(model: nnx.Module, graph: ChannelGraph, remove) -> nnx.Module:
  graphdef, state = nnx.split(model)
  path_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  by_path: dict[str, list] = {}
  for (path, axis), idx in keep_indices(model, graph, remove).items():
    by_path.setdefault(path, []).append((axis, idx))
  leaves = []
  for p, x in path_leaves:
    cuts = [(axis, idx) for axis, idx in by_path.get(groups_lib.path_str(p), ())
            if len(idx) != np.shape(x)[axis]]
    if cuts:  # on the host: no compile per shape
      a = np.asarray(x)
      for axis, idx in cuts:
        a = np.take(a, idx, axis=axis)
      x = _like(a, x)
    leaves.append(x)
  small = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))
  _layers.sync_sizes(small)
  return small


def with_state(graphdef, *states) -> nnx.Module:
  """Merges ``graphdef`` with states whose leaves were cut as :func:`prune` cuts them.

  Use it to rebuild a pruned model without the dense weights: take the graph
  definition of the dense architecture (``nnx.eval_shape`` builds it without
  initialising anything), and the saved pruned arrays; the layers' size
  attributes (``in_features``, ``num_features``, ...) are updated to the arrays.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp, hspg_jax.flax
    >>> abstract = nnx.eval_shape(lambda: nnx.Linear(4, 6, rngs=nnx.Rngs(0)))
    >>> gd, _ = nnx.split(abstract)
    >>> small = hspg_jax.flax.with_state(gd, {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)})
    >>> small.out_features, small(jnp.ones((1, 4))).shape
    (2, (1, 2))
  """
  model = nnx.merge(graphdef, *states)
  _layers.sync_sizes(model)
  return model


def _like(a: np.ndarray, x):
  """``a`` where ``x`` lives (its device or replicated sharding), as a jax array."""
  try:
    return jax.device_put(a, x.sharding)
  except Exception:  # noqa: BLE001 - e.g. a sharding the smaller shape does not divide
    return jnp.asarray(a)


def prune(model: nnx.Module, graph: ChannelGraph, *, check_inputs=None, rtol: float | None = None,
          atol: float | None = None) -> nnx.Module:
  """A new, smaller model without the exactly-zero groups of ``model``, checked.

  The pruned model's eval-mode outputs are compared with the dense model's
  (which, its zero groups being exactly zero, is the masked model) on a probe
  input: one forward of each. It is returned only if they agree to
  ``atol + rtol * max|dense output|``.

  Args:
    model: the trained model; its ``nnx.Param`` groups that are exactly zero
      (all members) are removed. Not modified.
    graph: from :func:`~hspg_jax.flax.analyze_channels` on this model (or one
      with the same structure and shapes).
    check_inputs: the probe input (a pytree of arrays, as the model takes);
      default: standard normal values (zeros for integers) of the shape and dtype
      of the example input ``graph`` was built with, from a fixed seed.
    rtol: relative tolerance of the check; default ``max(1e-4, 16 * eps)`` of the
      output dtype (1e-4 in float32).
    atol: absolute tolerance of the check; default ``1e-6``.

  Returns:
    A model of the same class and graph whose affected layers have fewer
    channels. A family whose groups are all zero keeps one (zero) channel; a
    grouped conv's groups stay aligned (see ``ChannelGraph.ties``). When no
    group is exactly zero, the copy has the same arrays and is returned without
    running the check.

  Raises:
    ValueError: if ``graph`` does not match the model's state, if there is no
      probe input, or if the pruned model's outputs differ from the dense
      model's (or it fails to run): the message names the families and layers
      whose removal alone reproduces the difference.

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
  path_leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
  _check_graph([groups_lib.path_str(p) for p, _ in path_leaves],
               [tuple(np.shape(x)) for _, x in path_leaves], graph)
  remove = removal_masks(model, graph)
  small = _cut(model, graph, remove)
  if not any(r.any() for r in remove.values()):
    return small  # nothing removed: the same arrays in the same graph
  if check_inputs is None:
    if graph.inputs is None:
      raise ValueError("prune: the ChannelGraph has no example input to check the pruned "
                       "model on; pass check_inputs=")
    check_inputs = probe_inputs(graph.inputs)
  dense_out = _eval_outputs(model, check_inputs, graph.apply_fn)
  failure = _compare(dense_out, small, check_inputs, graph.apply_fn, rtol, atol)
  if failure is not None:
    raise ValueError(_failure_message(model, graph, remove, dense_out, check_inputs, failure,
                                      rtol, atol))
  return small


def probe_inputs(inputs, seed: int = 0):
  """Deterministic random arrays of the shapes and dtypes of ``inputs`` (structs or arrays).

  Floating inputs are standard normal, booleans fair coins, integers zeros.
  """
  rng = np.random.default_rng(seed)

  def make(s):
    dtype = jnp.dtype(s.dtype)
    if jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating):
      return jnp.asarray(rng.standard_normal(s.shape), dtype)
    if dtype == jnp.bool_:
      return jnp.asarray(rng.random(s.shape) < 0.5)
    return jnp.zeros(s.shape, dtype)

  return jax.tree_util.tree_map(make, _trace.as_abstract(inputs))


def _eval_outputs(model: nnx.Module, inputs, apply_fn):
  """Eval-mode outputs of one jitted forward (the model's mode is untouched)."""
  apply_fn = apply_fn or _trace.default_apply
  graphdef, state = nnx.split(model)

  def forward(state, x):
    m = nnx.merge(graphdef, state)
    m.eval()
    return apply_fn(m, x)

  # Full float32 matmuls: TF32 on GPUs would differ by more than summation order.
  with jax.default_matmul_precision("float32"):
    lowered = jax.jit(forward).lower(state, inputs)
  compiled = None
  if jax.default_backend() == "cpu":
    try:  # one call: compiling fast matters more than running fast
      compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
    except Exception:  # noqa: BLE001 - an XLA without the option: compile as usual
      compiled = None
  compiled = compiled or lowered.compile()
  return jax.device_get(compiled(state, inputs))


def _compare(dense_out, small, inputs, apply_fn, rtol, atol):
  """None if ``small`` reproduces ``dense_out``, else a description of the difference."""
  try:
    out = _eval_outputs(small, inputs, apply_fn)
  except Exception as e:  # noqa: BLE001 - any failure of the pruned forward is reported
    return f"the pruned model fails to run ({type(e).__name__}: {e})"
  d_leaves, d_def = jax.tree_util.tree_flatten(dense_out)
  s_leaves, s_def = jax.tree_util.tree_flatten(out)
  if d_def != s_def or [np.shape(a) for a in d_leaves] != [np.shape(b) for b in s_leaves]:
    return (f"the pruned model's outputs have shapes {[np.shape(b) for b in s_leaves]}, the "
            f"dense model's {[np.shape(a) for a in d_leaves]}")
  for a, b in zip(d_leaves, s_leaves):
    floating = jnp.issubdtype(a.dtype, jnp.inexact)
    r = (max(1e-4, 16 * float(jnp.finfo(a.dtype).eps)) if floating else 0.0) \
        if rtol is None else rtol
    t = 1e-6 if atol is None else atol
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not a.size:
      continue
    err = float(np.max(np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))))
    scale = float(np.max(np.where(np.isnan(a), 0.0, np.abs(a))))
    if not err <= t + r * scale:  # also catches NaN
      return (f"max |dense - pruned| = {err:.3g} exceeds the tolerance atol + rtol * "
              f"max|dense| = {t:g} + {r:g} * {scale:.3g}")
  return None


def _failure_message(model, graph, remove, dense_out, inputs, failure, rtol, atol) -> str:
  """Names the families whose removal alone reproduces the difference."""
  cut = [f for f in graph.families if remove[f.name].any()]
  culprits = []
  for fam in cut:
    alone = removal_masks(model, graph, only={fam.name})
    if not alone[fam.name].any():
      continue
    small = _cut(model, graph, alone)
    if _compare(dense_out, small, inputs, graph.apply_fn, rtol, atol) is not None:
      culprits.append(fam)
  blamed = culprits or cut

  def layers(fam):
    paths = [p for p, _ in fam.members] + [d[0] for d in fam.dependents + fam.flat_dependents]
    return ", ".join(dict.fromkeys(_trace.module_path(p) for p in paths))

  which = "; ".join(f"family {f.name!r} (layers {layers(f)})" for f in blamed)
  lead = ("removing the zero groups of " + ("each of these alone reproduces it: "
                                           if culprits else "these together causes it: "))
  return (f"prune: the pruned model does not match the masked dense model on the probe input: "
          f"{failure}; {lead}{which}. The model computes something the channel analysis did "
          "not follow there (e.g. fixed channel offsets, or a layer whose sizes pruning cannot "
          "update); leave those groups nonzero, or pass check_inputs= / rtol= / atol= if the "
          "probe input or tolerance does not suit the model. The dense model is unchanged.")


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
