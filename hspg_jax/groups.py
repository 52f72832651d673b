"""Pytree-defined parameter groups.

A *group spec* has the tree structure of the params (like an ``optax.masked``
mask). Each spec leaf says how the matching parameter leaf is cut into groups:

* ``None``: the leaf is not regularised (a ``None`` may also stand for a whole
  subtree, e.g. ``{"encoder": 0, "head": None}``);
* an ``int`` axis: the leaf is cut along ``axis``; group ``i`` is the slice
  ``leaf[..., i, ...]`` on that axis (a conv kernel in HWIO layout uses ``-1``,
  one group per output channel);
* ``GroupAxis(axis, family)``: as above, and every leaf naming the same
  ``family`` shares ONE set of groups. Group ``i`` of the family is the union of
  slice ``i`` of every member, and its norm sums the squares over all members.
  This is how a conv's output channel ``i``, its bias ``i`` and the following
  BatchNorm's scale ``i`` and bias ``i`` become one zero-invariant group.

Specs can also be written as rules over parameter paths (:class:`GroupRules`),
in the style of big_vision's regex parameter selection.

Everything here is static structure: :func:`resolve` reads only tree
structure and shapes, so it runs identically outside and inside ``jit`` and a
bad spec fails with the offending parameter path in the message.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "GroupAxis",
    "GroupRules",
    "GroupStructure",
    "Family",
    "Member",
    "resolve",
    "path_str",
]


@dataclasses.dataclass(frozen=True)
class GroupAxis:
  """A spec leaf: cut the parameter along ``axis``, in family ``family``.

  Attributes:
    axis: the axis whose index is the group index (negative counts from the end).
    family: leaves with the same family name share one set of groups. ``None``
      makes the leaf a family of its own, named by its path.
  """

  axis: int
  family: str | None = None

  def __post_init__(self):
    axis, family = self.axis, self.family
    if isinstance(axis, str) and (family is None or _is_int(family)):
      swapped = f"GroupAxis({family!r}, {axis!r})" if family is not None else (
          f"GroupAxis(<axis>, {axis!r})")
      raise TypeError(
          f"GroupAxis(axis, family): axis must be an int, got the string {axis!r}. "
          f"The arguments look swapped: write {swapped}.")
    if not _is_int(axis):
      raise TypeError(
          f"GroupAxis(axis, family): axis must be an int (the axis whose index is the "
          f"group index, e.g. -1 for a conv kernel's output channels), got {axis!r}")
    if family is not None and not isinstance(family, str):
      raise TypeError(
          f"GroupAxis(axis, family): family must be a string or None, got {family!r}")


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


SpecLeaf = Union[None, int, GroupAxis]


@dataclasses.dataclass(frozen=True)
class Member:
  """One parameter leaf taking part in a family."""

  index: int  # position among the flattened parameter leaves
  path: str
  axis: int  # normalised to be non-negative
  shape: tuple[int, ...]

  @property
  def group_size(self) -> int:
    """Number of scalars each group takes from this leaf."""
    return int(np.prod(self.shape)) // self.shape[self.axis]


@dataclasses.dataclass(frozen=True)
class Family:
  """A set of ``num_groups`` groups spread over one or more member leaves."""

  name: str
  num_groups: int
  members: tuple[Member, ...]

  @property
  def group_size(self) -> int:
    """Number of scalars in each group of the family."""
    return sum(m.group_size for m in self.members)


@dataclasses.dataclass(frozen=True)
class GroupStructure:
  """Groups resolved against a concrete params tree (static, hashable)."""

  treedef: Any
  paths: tuple[str, ...]
  families: tuple[Family, ...]

  @property
  def num_groups(self) -> int:
    return sum(f.num_groups for f in self.families)

  @property
  def family_names(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.families)

  def family(self, name: str) -> Family:
    for f in self.families:
      if f.name == name:
        return f
    raise KeyError(f"no group family named {name!r}; families: {self.family_names}")

  def table(self) -> str:
    """A printable table: family, groups, group size, members (path[axis])."""
    rows = [("family", "groups", "size", "members")]
    for f in self.families:
      members = ", ".join(f"{m.path}[{m.axis}]" for m in f.members)
      rows.append((f.name, str(f.num_groups), str(f.group_size), members))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows
    ]
    lines.append(f"{len(self.families)} families, {self.num_groups} groups")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()


def path_str(path) -> str:
  """``a/b/kernel`` for a jax key path.

  A trailing ``.value`` attribute (how Flax NNX ``Variable`` boxes flatten) is
  dropped, so an NNX ``State`` and a plain nested dict give the same paths.
  """
  path = tuple(path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _is_spec_leaf(x) -> bool:
  return x is None or isinstance(x, (int, np.integer, GroupAxis))


@dataclasses.dataclass(frozen=True)
class GroupRules:
  """A group spec written as ``(regex, spec_leaf)`` rules over parameter paths.

  Paths are ``/``-joined key names (``block1/conv/kernel``). The first rule
  whose regex matches the whole path (``re.fullmatch``) decides the leaf; leaves
  no rule matches are not regularised. A ``GroupAxis`` family name may use the
  regex's groups (``r"\\1"``) so one rule can couple each conv with its own
  BatchNorm::

      GroupRules([
          (r"(.*)/conv/kernel", GroupAxis(-1, r"\\1")),
          (r"(.*)/bn/(scale|bias)", GroupAxis(0, r"\\1")),
      ])

  Rules are not callable on purpose: ``optax.inject_hyperparams`` treats every
  callable argument as a schedule.
  """

  rules: Sequence[tuple[str, SpecLeaf]]

  def __post_init__(self):
    compiled = []
    for i, rule in enumerate(self.rules):
      if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
        raise ValueError(f"GroupRules rule {i} must be a (regex, spec_leaf) pair, got {rule!r}")
      pattern, leaf = rule
      if not _is_spec_leaf(leaf):
        raise ValueError(
            f"GroupRules rule {i} ({pattern!r}): spec leaf must be None, an int axis "
            f"or GroupAxis, got {leaf!r}"
        )
      try:
        compiled.append((re.compile(pattern), leaf))
      except re.error as e:
        raise ValueError(f"GroupRules rule {i}: bad regex {pattern!r}: {e}") from e
    object.__setattr__(self, "_compiled", tuple(compiled))

  def spec(self, params):
    """The group spec pytree these rules give for ``params``.

    A rule whose regex matches no parameter path is most likely a typo, so it
    is reported with a warning that names it.
    """
    matched = set()

    def leaf_spec(path, _):
      p = path_str(path)
      for i, (regex, leaf) in enumerate(self._compiled):
        m = regex.fullmatch(p)
        if m is None:
          continue
        matched.add(i)
        if isinstance(leaf, GroupAxis) and leaf.family is not None:
          return GroupAxis(leaf.axis, m.expand(leaf.family))
        return leaf
      return None

    spec = jax.tree_util.tree_map_with_path(leaf_spec, params)
    paths = _param_paths(params) if len(matched) < len(self._compiled) else []
    for i, (regex, _) in enumerate(self._compiled):
      if i not in matched and not any(regex.fullmatch(p) for p in paths):
        warnings.warn(f"GroupRules rule {i} ({regex.pattern!r}) matches no parameter path",
                      stacklevel=3)
    return spec


GroupSpec = Any  # a spec pytree, GroupRules or GroupStructure


def _param_paths(params) -> list[str]:
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def check_spec(groups, where: str = "groups", hint: str = "") -> None:
  """Checks the type of a group spec before any params are seen (at construction).

  Raises:
    TypeError: naming the spec path, when a spec leaf is not ``None``, an int
      axis or :class:`GroupAxis` (e.g. a learning rate passed where the spec
      belongs).
  """
  if isinstance(groups, (GroupRules, GroupStructure)):
    return
  leaves = jax.tree_util.tree_flatten_with_path(groups, is_leaf=_is_spec_leaf)[0]
  for path, leaf in leaves:
    if _is_spec_leaf(leaf) and not isinstance(leaf, (bool, np.bool_)):
      continue
    at = f" at {path_str(path)!r}" if path else ""
    raise TypeError(
        f"{where}: a group spec leaf{at} must be None, an int axis or GroupAxis, got "
        f"{leaf!r} ({type(leaf).__name__}). Pass a spec pytree, GroupRules or "
        f"GroupStructure.{' ' + hint if hint else ''}")


def resolve(params, groups: GroupSpec) -> GroupStructure:
  """Resolves a group spec against ``params`` (shapes and structure only).

  Spec leaves are matched to parameter leaves by path (``a/b/kernel``), so the
  spec may use other container types than params: a plain dict spec works for
  an NNX ``State``, and a spec whose leaves sit in NNX ``Variable`` boxes works
  for the pure arrays ``nnx.Optimizer`` passes to Optax.

  Args:
    params: the parameter pytree (arrays, tracers or ``jax.ShapeDtypeStruct``).
    groups: a spec pytree, :class:`GroupRules`, or an already resolved
      :class:`GroupStructure` (checked against ``params``).

  Returns:
    The :class:`GroupStructure`, with ``params``' tree definition; families
    appear in order of their first member.

  Raises:
    ValueError: naming the parameter path, when the spec's paths do not match
      params', an axis is out of range, a spec leaf has the wrong type, or
      members of one family have different group counts.
  """
  path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = tuple(path_str(p) for p, _ in path_leaves)
  shapes = tuple(tuple(np.shape(x)) for _, x in path_leaves)

  if isinstance(groups, GroupStructure):
    if groups.paths != paths:
      _raise_path_mismatch(paths, dict.fromkeys(groups.paths, 0),
                           what="GroupStructure (resolve it again)")
    for f in groups.families:
      for m in f.members:
        if shapes[m.index] != m.shape:
          raise ValueError(
              f"param {m.path!r}: shape {shapes[m.index]} differs from the shape "
              f"{m.shape} the GroupStructure was resolved for"
          )
    if groups.treedef != treedef:
      groups = dataclasses.replace(groups, treedef=treedef)
    return groups
  structure = _resolve(groups, params, treedef, paths, shapes)
  _check_grouped_leaves(structure, params, [x for _, x in path_leaves])
  if isinstance(groups, GroupRules) and not structure.families:
    shown = ", ".join(repr(p) for p in paths[:12]) + (" ..." if len(paths) > 12 else "")
    rules = ", ".join(repr(r.pattern) for r, _ in groups._compiled)  # pylint: disable=protected-access
    raise ValueError(
        f"GroupRules matched no parameter to a group (rules: {rules}); HSPG would run as "
        f"plain SGD. Parameter paths are: {shown}. Rules match the whole path "
        "(re.fullmatch), e.g. r'.*/conv/kernel'.")
  return structure


def _nnx_variable_type(x):
  """The Flax NNX ``Variable`` subclass boxing ``x`` (None for other leaves).

  Recognised by class name, so that the core does not import flax.
  """
  for cls in type(x).__mro__:
    if cls.__name__ == "Variable" and cls.__module__.startswith("flax"):
      return type(x)
  return None


def _check_grouped_leaves(structure: GroupStructure, params, leaves) -> None:
  """Raises for grouped leaves that cannot be trainable parameters."""
  grouped = {m.index: m for f in structure.families for m in f.members}
  if not grouped:
    return
  for index, m in grouped.items():
    dtype = getattr(leaves[index], "dtype", None)
    if dtype is None:
      dtype = np.result_type(leaves[index])
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f"param {m.path!r} has dtype {np.dtype(dtype).name}: only floating-point "
          "parameters can be cut into groups; give it None in the group spec")
  boxes = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: _nnx_variable_type(x) is not None)[0]
  kinds = {path_str(p): _nnx_variable_type(x) for p, x in boxes}
  for m in grouped.values():
    kind = kinds.get(m.path)
    if kind is not None and not any(c.__name__ == "Param" for c in kind.__mro__):
      raise ValueError(
          f"param {m.path!r} is an nnx.{kind.__name__}, not an nnx.Param, and the group "
          "spec puts it in a group. Optimise and group trainable parameters only: use "
          "nnx.state(model, nnx.Param) (or nnx.Optimizer(model, tx, wrt=nnx.Param)).")
  for f in structure.families:
    if f.group_size == 0:
      detail = ", ".join(f"{m.path!r} {m.shape}" for m in f.members)
      raise ValueError(
          f"group family {f.name!r}: every member has size 0 across its group axis "
          f"({detail}), so its groups would be empty")


def _raise_path_mismatch(paths, by_path: dict, what="group spec"):
  missing = [p for p in paths if p not in by_path and _none_prefix(p, by_path) is None]
  extra = [p for p in by_path if p not in set(paths)
           and not (by_path[p] is None and any(q.startswith(p + "/") for q in paths))]
  lines = [f"{what} does not match the params tree."]
  if missing:
    lines.append(f"  params without a spec leaf: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
  if extra:
    lines.append(f"  spec paths not in params:   {extra[:8]}{' ...' if len(extra) > 8 else ''}")
  if not missing and not extra:
    lines.append("  the leaves are in a different order")
  lines.append("Give one spec leaf (None, int axis or GroupAxis) per parameter leaf, "
               "or use GroupRules.")
  raise ValueError("\n".join(lines))


def _none_prefix(path, by_path):
  """The spec path covering ``path`` with a ``None`` leaf (a whole subtree), if any."""
  parts = path.split("/")
  for i in range(len(parts) - 1, 0, -1):
    prefix = "/".join(parts[:i])
    if prefix in by_path and by_path[prefix] is None:
      return prefix
  return None


def _resolve(groups, params, treedef, paths, shapes) -> GroupStructure:
  spec = groups.spec(params) if isinstance(groups, GroupRules) else groups
  spec_path_leaves = jax.tree_util.tree_flatten_with_path(spec, is_leaf=_is_spec_leaf)[0]
  by_path = {}
  for path, leaf in spec_path_leaves:
    key = path_str(path)
    if key in by_path:
      raise ValueError(f"group spec has two leaves for the path {key!r}")
    by_path[key] = leaf
  spec_leaves, used = [], set()
  for p in paths:
    key = p if p in by_path else _none_prefix(p, by_path)
    if key is None:
      _raise_path_mismatch(paths, by_path)
    used.add(key)
    spec_leaves.append(by_path[key])
  if used != set(by_path):
    _raise_path_mismatch(paths, by_path)

  members: dict[str, list[Member]] = {}
  for index, (path, shape, leaf) in enumerate(zip(paths, shapes, spec_leaves)):
    if leaf is None:
      continue
    if isinstance(leaf, GroupAxis):
      axis, family = leaf.axis, leaf.family
    elif isinstance(leaf, (int, np.integer)) and not isinstance(leaf, bool):
      axis, family = int(leaf), None
    else:
      raise ValueError(
          f"param {path!r}: group spec leaf must be None, an int axis or GroupAxis, got {leaf!r}"
      )
    ndim = len(shape)
    if ndim == 0:
      raise ValueError(f"param {path!r}: a scalar cannot be cut into groups (spec {leaf!r})")
    if not -ndim <= axis < ndim:
      raise ValueError(
          f"param {path!r}: group axis {axis} out of range for shape {shape} (ndim {ndim})"
      )
    axis %= ndim
    if shape[axis] == 0:
      raise ValueError(f"param {path!r}: group axis {axis} has size 0 (shape {shape})")
    name = family if family is not None else path
    members.setdefault(name, []).append(Member(index, path, axis, shape))

  families = []
  for name, ms in members.items():
    counts = {m.shape[m.axis] for m in ms}
    if len(counts) != 1:
      detail = ", ".join(f"{m.path!r}: {m.shape[m.axis]}" for m in ms)
      raise ValueError(
          f"group family {name!r}: members have different group counts along their "
          f"group axes ({detail})"
      )
    families.append(Family(name, counts.pop(), tuple(ms)))
  return GroupStructure(treedef, paths, tuple(families))


# --- per-group reductions (traceable) -------------------------------------------------


def check_same_leaves(params_leaves: Sequence, updates_leaves: Sequence):
  """Raises unless updates have one leaf of the same shape per parameter leaf."""
  if len(params_leaves) != len(updates_leaves) or any(
      np.shape(a) != np.shape(b) for a, b in zip(params_leaves, updates_leaves)):
    raise ValueError(
        f"updates do not match params: {len(updates_leaves)} update leaves for "
        f"{len(params_leaves)} parameter leaves, or different shapes")


def _canonical(x, member: Member):
  """``x`` reshaped (a free bitcast) to ``(G, post)``, ``(pre, G)`` or ``(pre, G, post)``
  with the reduced axes returned: XLA CPU reduces these forms about twice as fast
  as the same reduction over several axes of a 4-D kernel."""
  shape = member.shape
  pre = int(np.prod(shape[:member.axis], dtype=np.int64))
  post = int(np.prod(shape[member.axis + 1:], dtype=np.int64))
  groups = shape[member.axis]
  if pre == 1:
    return x.reshape(groups, post), (1,)
  if post == 1:
    return x.reshape(pre, groups), (0,)
  return x.reshape(pre, groups, post), (0, 2)


def member_reduce(x, member: Member):
  """Sums ``x`` over every axis but the member's group axis -> shape ``(G,)``."""
  if x.ndim <= 1:
    return x
  y, axes = _canonical(x, member)
  return jnp.sum(y, axis=axes)


def expand(vec, member: Member):
  """Reshapes a per-group vector ``(G,)`` to broadcast against the member leaf."""
  shape = [1] * len(member.shape)
  shape[member.axis] = member.shape[member.axis]
  return jnp.reshape(vec, shape)


def accumulation_dtype(dtype):
  """The dtype group reductions accumulate in: float32, or wider if the leaf is."""
  return jnp.promote_types(dtype, jnp.float32)


def promote(x):
  """``x`` in its accumulation dtype (float16/bfloat16 -> float32)."""
  return x.astype(accumulation_dtype(x.dtype))


def family_sums(structure: GroupStructure, leaves: Sequence, fn) -> list:
  """For each family, ``sum_members member_reduce(fn(*leaf_i))``: a list of ``(G,)``.

  ``leaves`` is a sequence of flattened pytrees (e.g. ``[params]`` or
  ``[params, updates]``); ``fn`` maps the corresponding leaves of each to the
  elementwise quantity to sum (``jnp.square``, a product, ...). The leaves are
  promoted to float32 (or wider) *before* ``fn`` sees them, so squares and
  products of float16/bfloat16 entries neither underflow nor overflow.
  """
  out = []
  for fam in structure.families:
    total = None
    for m in fam.members:
      s = member_reduce(fn(*(promote(tree[m.index]) for tree in leaves)), m)
      total = s if total is None else total + s
    out.append(total)
  return out


def safe_square(x):
  """``x**2``, except that a nonzero ``x`` whose square underflows counts ``tiny``.

  ``x`` is already in its accumulation dtype. Summed over a group, the result is
  zero exactly when every entry is zero (float32 squares underflow below about
  1e-19), and it equals the sum of squares wherever that does not underflow.
  """
  return jnp.maximum(x * x, jnp.minimum(jnp.abs(x), jnp.finfo(x.dtype).tiny))


def family_sq_norms(structure: GroupStructure, leaves: Sequence) -> list:
  """Squared group norms ``||x_g||^2`` per family, from flattened param leaves.

  Accumulated in float32 or wider; a group's value is 0 exactly when every
  entry of the group is 0 (see :func:`safe_square`).
  """
  return family_sums(structure, [leaves], safe_square)


def family_norms(structure: GroupStructure, leaves: Sequence) -> list:
  """Group norms ``||x_g||_2`` per family, accurate across the whole float range.

  Scales each group by its largest magnitude before squaring (two passes), so
  neither tiny nor huge entries are lost; 0 exactly for all-zero groups.
  """
  out = []
  for fam in structure.families:
    peak = None
    for m in fam.members:
      a = member_max(jnp.abs(promote(leaves[m.index])), m)
      peak = a if peak is None else jnp.maximum(peak, a)
    scale = jnp.where((peak > 0) & jnp.isfinite(peak), peak, 1.0)
    total = None
    for m in fam.members:
      s = member_reduce(jnp.square(promote(leaves[m.index]) / expand(scale, m)), m)
      total = s if total is None else total + s
    norm = jnp.sqrt(total) * scale
    out.append(jnp.where(jnp.isinf(peak), jnp.inf, norm))
  return out


def member_max(x, member: Member):
  """Max of ``x >= 0`` over every axis but the group axis -> ``(G,)`` (0 if empty)."""
  if x.ndim <= 1:
    return x
  y, axes = _canonical(x, member)
  return jnp.max(y, axis=axes, initial=0.0)


def map_members(structure: GroupStructure, per_family: Sequence, fn, leaves: Sequence) -> list:
  """Rebuilds the grouped leaves from per-family vectors.

  Returns a copy of ``leaves`` in which the leaf of each member ``m`` of family
  ``k`` is replaced by ``fn(m, expand(per_family[k], m))``; ungrouped leaves are
  kept as they are.
  """
  out = list(leaves)
  for fam, value in zip(structure.families, per_family):
    for m in fam.members:
      out[m.index] = fn(m, expand(value, m))
  return out
