"""Families of linked channel sets, checked once the whole dataflow is known."""

from __future__ import annotations

import dataclasses

from hspg_jax.flax._dataflow import NEVER
from hspg_jax.flax._dataflow import Analysis


@dataclasses.dataclass(frozen=True)
class FamilyInfo:
  """One family of linked channel sets, as found by :func:`finalize`.

  Attributes:
    root: the family's representative channel set (constraints refer to it).
    cids: its channel sets (first = first producer traced).
    size: channels (groups) in the family.
    producers: kernel leaf index of every channel set.
    members: ``(leaf, axis)`` of every state leaf cut in full along ``axis``.
    dependents: ``(leaf, axis, start, length, offset)``: consumer slices, channel
      ``offset + j`` of the family is position ``start + j`` of ``leaf`` on ``axis``.
    flat_dependents: ``(leaf, axis, start, length, offset, outer, mid, inner)``:
      as ``dependents``, on the leaf axis viewed as ``(outer, mid, inner)``.
    reasons: why the family is left ungrouped (empty when it is grouped).
    unit_split: its channels are reshaped to ``(..., C, 1)`` somewhere.
  """

  root: int
  cids: tuple[int, ...]
  size: int
  producers: tuple[int, ...]
  members: tuple[tuple[int, int], ...]
  dependents: tuple[tuple[int, int, int, int, int], ...]
  flat_dependents: tuple[tuple[int, ...], ...]
  reasons: tuple[str, ...]
  unit_split: bool = False


@dataclasses.dataclass(frozen=True)
class Result:
  """Families, and the constraints pruning must respect between their channels.

  Attributes:
    families: every family, grouped or not.
    ties: tuples of ``(root, channel)`` (None for a channel never removed) that
      are removed together or not at all: the channels a grouped conv reads with
      one kernel input position.
    equal_blocks: ``(root, G)``: each of the ``G`` consecutive blocks of the
      family's channels loses as many channels as the others (a grouped conv's
      outputs).
  """

  families: list[FamilyInfo]
  ties: list[tuple]
  equal_blocks: list[tuple[int, int]]


def normalization_reason(why: str) -> str:
  return (f"normalized with a statistic taken across its channels ({why}), as in LayerNorm, "
          "RMSNorm or GroupNorm with group_size > 1: a zero channel still changes the mean "
          "and variance the other channels are normalized with, so removing it would change "
          "their outputs (normalizations per channel, such as BatchNorm or GroupNorm with "
          "group_size=1, keep zero channels removable)")


def finalize(an: Analysis) -> Result:
  # Channel sets cutting the same leaf slice are the same channels.
  for cids in an.members.values():
    first, *rest = sorted(cids)
    for c in rest:
      an.union(first, c)
  # Channel sets read by the same kernel positions (one layer applied to each) must be
  # removed together: one family, when each covers those positions entirely.
  readers: dict[tuple, list[int]] = {}
  for cut in an.cuts:
    if cut.cid is not None and not cut.tied and cut.layout is None and cut.offset == 0:
      readers.setdefault((cut.leaf, cut.axis, cut.start, cut.length), []).append(cut.cid)
  for (_, _, _, n), cids in readers.items():
    if all(an.sets[c].length == n for c in cids):
      for c in cids[1:]:
        an.union(cids[0], c)
  reasons: dict[int, list[str]] = {}

  def flag(cid, why):
    reasons.setdefault(an.find(cid), []).append(why)

  for cid, whys in an.poisoned.items():
    for why in whys:
      flag(cid, why)
  axes_of_leaf: dict[int, set[int]] = {}
  for (leaf, axis) in an.members:
    axes_of_leaf.setdefault(leaf, set()).add(axis)
  for (leaf, axis), cids in an.members.items():
    if len(axes_of_leaf[leaf]) > 1:
      for c in cids:
        flag(c, f"{an.paths[leaf]!r} would be grouped along several axes")
    if leaf in an.pinned:
      for c in cids:
        flag(c, f"{an.paths[leaf]!r} cannot be cut: {an.pinned[leaf]}")
  for cut in an.cuts:
    if cut.cid is not None and cut.leaf in an.pinned:
      flag(cut.cid, f"{an.paths[cut.leaf]!r} cannot be cut: {an.pinned[cut.leaf]}")
  _check_cuts(an, flag)
  member_keys = _check_uses(an, flag)

  # A statistic across channels that met those channels again: say so, and only that.
  normalized: dict[int, set[str]] = {}
  for cid, whys in an.normalized.items():
    normalized.setdefault(an.find(cid), set()).update(whys)
  for root, whys in normalized.items():
    if any(w in reasons.get(root, ()) for w in whys):
      reasons[root] = [normalization_reason(w) for w in sorted(whys)]

  by_root: dict[int, list[int]] = {}
  for c in range(len(an.sets)):
    by_root.setdefault(an.find(c), []).append(c)
  out = []
  for root in sorted(by_root):
    cids = tuple(by_root[root])
    members = tuple(sorted(member_keys.get(root, ())))
    plain, flat = set(), set()
    for cut in an.cuts:
      if cut.cid is None or an.find(cut.cid) != root:
        continue
      if cut.layout is None or cut.layout[0] == cut.layout[2] == 1:
        plain.add((cut.leaf, cut.axis, cut.start, cut.length, cut.offset))
      else:
        flat.add((cut.leaf, cut.axis, cut.start, cut.length, cut.offset) + cut.layout)
    why = list(dict.fromkeys(reasons.get(root, [])))
    if not why and not any(an.is_param[leaf] for leaf, _ in members):
      why.append("no nnx.Param among the leaves it would cut")
    out.append(FamilyInfo(root, cids, an.sets[root].length,
                          tuple(an.sets[c].producer for c in cids), members,
                          tuple(sorted(plain)), tuple(sorted(flat)), tuple(why),
                          any(c in an.unit_split for c in cids)))
  ties = [tuple(None if item is None else (an.find(item[0]), item[1]) for item in items)
          for _, items in sorted(an.ties.items())]
  equal = sorted({(an.find(cid), g) for cid, g in an.equal_blocks})
  return Result(out, ties, equal)


def _check_cuts(an: Analysis, flag):
  """Every position of a cut (leaf, axis) must map to one channel of one family."""
  entries: dict[tuple[int, int], set] = {}
  for (leaf, axis), cids in an.members.items():
    n = an.shapes[leaf][axis]
    for c in cids:
      entries.setdefault((leaf, axis), set()).add((0, n, an.find(c), 0, (1, n, 1), False))
  for cut in an.cuts:
    root = None if cut.cid is None else an.find(cut.cid)
    n = an.shapes[cut.leaf][cut.axis]
    entries.setdefault((cut.leaf, cut.axis), set()).add(
        (cut.start, cut.length, root, cut.offset, cut.layout or (1, n, 1), cut.tied))
  for (leaf, axis), es in entries.items():
    roots = {e[2] for e in es if e[2] is not None}
    name = f"{an.paths[leaf]!r} axis {axis}"
    if len({e[4] for e in es}) > 1:
      for r in roots:
        flag(r, f"{name} is cut both as flattened channels and directly")
      continue
    if any(e[5] for e in es):
      if not all(e[5] for e in es):
        for r in roots:
          flag(r, f"{name} is the shared kernel of a grouped conv and is also cut otherwise")
      continue  # grouped conv: the ties keep the groups aligned
    es = sorted(es, key=lambda e: (e[0], e[1], -1 if e[2] is None else e[2], e[3]))
    for i, (s1, n1, r1, o1, _, _) in enumerate(es):
      for s2, n2, r2, o2, _, _ in es[i + 1:]:
        if s2 >= s1 + n1:
          continue
        if r1 is None or r2 is None:
          if r1 != r2:
            flag(r1 if r2 is None else r2,
                 f"{name} also takes channels that are never removed (e.g. a layer applied "
                 "to the input and to its own output)")
        elif r1 != r2 or s1 - o1 != s2 - o2:
          why = f"{name} would be cut by overlapping channel sets"
          flag(r1, why)
          flag(r2, why)


def _check_uses(an: Analysis, flag) -> dict[int, set]:
  """Zero-invariance: where a channel is consumed, the group's members zero it."""
  member_keys: dict[int, set] = {}
  for (leaf, axis), cids in an.members.items():
    for c in cids:
      member_keys.setdefault(an.find(c), set()).add((leaf, axis))
  for cid, off, n, zero, consumer, lost in an.uses:
    keys = member_keys.get(an.find(cid), set())
    ok = any(all((leaf, axis) in keys and start == off for leaf, axis, start in alt)
             for alt in zero)
    if ok:
      continue
    if zero == NEVER:
      detail = lost or "the channel can be nonzero with the group zero"
    else:
      outside = sorted({an.paths[leaf] for alt in zero for leaf, axis, start in alt
                        if (leaf, axis) not in keys or start != off})
      detail = (f"it is zero only where {', '.join(map(repr, outside))} is too, which is not "
                "cut with the group")
    flag(cid, f"not zero-invariant at the input of {an.paths[consumer]!r}: {detail}")
  return member_keys
