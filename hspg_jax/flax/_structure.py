"""Structural ops of the channel dataflow: axes moved, reshaped, reduced, sliced, joined.

A mixin of :class:`~hspg_jax.flax._dataflow.Analysis`: each method maps the
abstract value of an operand to that of the result, following the tracked
(channel) axis, and drops what it cannot follow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hspg_jax.flax._values import AV
from hspg_jax.flax._values import forget_zero as _forget_zero
from hspg_jax.flax._values import take as _take

_WINDOW = {"reduce_window_sum": "sum", "reduce_window_max": "max", "reduce_window_min": "max"}


class StructureOps:
  """Structural ops; needs ``drop``, ``pin``, ``shapes``, ``unit_split``, ``as_segs``,
  ``elementwise``."""


  def remap(self, av: AV, out_shape, axis_map: dict, name: str, keep_src: bool = True) -> AV:
    """Moves axes ``in -> axis_map[in]``; axes not in the map disappear."""
    axis = None
    segs = ()
    layout = None
    if av.axis is not None:
      if av.axis in axis_map and out_shape[axis_map[av.axis]] == av.shape[av.axis]:
        axis, segs, layout = axis_map[av.axis], av.segs, av.layout
      else:
        single = av.shape[av.axis] == 1
        self.drop(av, f"op {name!r} drops the single-channel axis" if single
                  else f"op {name!r} moves or merges the channel axis", stat=not single)
        av = dataclasses.replace(av, src=None)
    src = None
    if av.src is not None:
      leaf, dims = av.src
      new = [None] * len(out_shape)
      for i, d in enumerate(dims):
        if i in axis_map and out_shape[axis_map[i]] == av.shape[i]:
          new[axis_map[i]] = d
      lost = any(self.shapes[leaf][d] > 1 for d in dims if d is not None and d not in new)
      if keep_src and not lost:
        src = (leaf, tuple(new))
      elif lost or axis is None:  # its values flow on untracked
        self.pin(leaf, f"op {name!r} on a parameter outside channel tracking")
    const = frozenset(axis_map[a] for a in range(len(av.shape))
                      if a in axis_map and av.is_const(a))
    return AV(tuple(out_shape), axis, segs, const, src, av.zero, av.scalar, layout)

  def reshape(self, av: AV, out_shape) -> AV:
    a, b = av.shape, tuple(out_shape)
    stride_a = [int(np.prod(a[i + 1:])) for i in range(len(a))]
    stride_b = [int(np.prod(b[j + 1:])) for j in range(len(b))]
    axis_map = {}
    for i, n in enumerate(a):
      if n > 1:
        for j, m in enumerate(b):
          if m == n and stride_b[j] == stride_a[i]:
            axis_map[i] = j
    c = av.axis
    if c in axis_map and len(b) == len(a) + 1 and axis_map[c] + 1 < len(b) and (
        b[axis_map[c] + 1] == 1 and axis_map[c] + 1 not in axis_map.values()):
      self.unit_split.update(s.chan[0] for s in av.segs if s.chan is not None)
    if c is not None and c not in axis_map:
      if a[c] == 1:
        # A single channel: put it on the last unit axis between its mapped neighbours
        # (where a channels-last feature shape such as BatchNorm's (1, 1, 1, C) has it).
        lo = max((axis_map[i] for i in axis_map if i < c), default=-1)
        hi = min((axis_map[i] for i in axis_map if i > c), default=len(b))
        units = [j for j in range(lo + 1, hi) if b[j] == 1]
        if units:
          axis_map[c] = units[-1]
      else:
        flat = self.flatten(av, b, stride_a, stride_b)
        if flat is not None:
          return flat
        split = [j for j in range(len(b)) if stride_b[j] >= stride_a[c]
                 and stride_b[j] * b[j] <= stride_a[c] * a[c] and b[j] > 1]
        if int(np.prod([b[j] for j in split])) == a[c]:
          self.drop(av, f"op 'reshape' splits the {a[c]}-channel axis into "
                        f"{' x '.join(str(b[j]) for j in split)}", stat=True)
          av = dataclasses.replace(av, axis=None, segs=(), layout=None)
    out = self.remap(av, b, axis_map, "reshape")
    # Size-1 output axes are trivially constant; other new axes are not.
    return dataclasses.replace(out, const=out.const | {j for j, m in enumerate(b) if m == 1})

  def flatten(self, av: AV, b, stride_a, stride_b) -> AV | None:
    """Input axes ``i0..i1`` (the channel axis among them) merged into one output axis."""
    a, c = av.shape, av.axis
    for j, m in enumerate(b):
      for i0 in range(c + 1):
        for i1 in range(c, len(a)):
          if (i0, i1) == (c, c) or stride_a[i1] != stride_b[j]:
            continue
          if int(np.prod(a[i0:i1 + 1])) != m:
            continue
          outer0, inner0 = av.layout or (1, 1)
          outer = int(np.prod(a[i0:c])) * outer0
          inner = int(np.prod(a[c + 1:i1 + 1])) * inner0
          if av.src is not None:
            self.pin(av.src[0], "op 'reshape' on a parameter outside channel tracking")
          return AV(tuple(b), j, av.segs, frozenset(k for k, n in enumerate(b) if n == 1),
                    layout=(outer, inner))
    return None

  def broadcast(self, av: AV, out_shape, bdims) -> AV:
    axis_map = {i: d for i, d in enumerate(bdims)}
    out = self.remap(av, out_shape, axis_map, "broadcast_in_dim")
    const = set(out.const) | {j for j in range(len(out_shape)) if j not in bdims}
    const |= {d for i, d in enumerate(bdims) if av.shape[i] == 1}
    return dataclasses.replace(out, const=frozenset(const))

  def reduce(self, av: AV, out_shape, axes, name, zero_preserving) -> AV:
    if av.axis is not None and av.axis in axes:
      self.drop(av, f"op {name!r} reduces over the channel axis", stat=True)
      return AV(out_shape)
    kept = [i for i in range(len(av.shape)) if i not in axes]
    out = self.remap(av, out_shape, {i: j for j, i in enumerate(kept)}, name, keep_src=False)
    if not zero_preserving:
      out = _forget_zero(out, f"op {name!r} does not keep a zero channel at zero")
    return out

  def window(self, av: AV, out_shape, p, name) -> AV:
    wd, ws, pad = p["window_dimensions"], p["window_strides"], p["padding"]
    bd, wdl = p["base_dilation"], p["window_dilation"]
    a = av.axis
    if a is not None and (wd[a] != 1 or ws[a] != 1 or tuple(pad[a]) != (0, 0)
                          or bd[a] != 1 or wdl[a] != 1):
      self.drop(av, f"op {name!r} pools over the channel axis", stat=True)
      return AV(out_shape)
    windowed = {i for i in range(len(wd)) if wd[i] != 1 or ws[i] != 1 or tuple(pad[i]) != (0, 0)}
    out = self.remap(av, out_shape, {i: i for i in range(len(av.shape))}, name, keep_src=False)
    # A max over a window that holds at least one real (zero) element is zero.
    exact = _WINDOW[name] == "sum" or (all(b == 1 for b in bd) and all(
        lo < w and hi < w for (lo, hi), w in zip(pad, wd)))
    if not exact:
      out = _forget_zero(out, f"op {name!r} has windows of padding only")
    return dataclasses.replace(out, const=out.const - windowed)

  def cumulative(self, av: AV, axis, name, zero_preserving) -> AV:
    if av.axis == axis:
      self.drop(av, f"op {name!r} accumulates over the channel axis", stat=True)
      return AV(av.shape)
    out = self.remap(av, av.shape, {i: i for i in range(len(av.shape))}, name, keep_src=False)
    if not zero_preserving:
      out = _forget_zero(out, f"op {name!r} does not keep a zero channel at zero")
    return dataclasses.replace(out, const=out.const - {axis})

  def concatenate(self, avs, out_shape, dim) -> AV:
    along = any(av.axis == dim for av in avs)
    if along:
      segs = []
      for av in avs:
        segs.extend(self.as_segs(av, dim, av.shape[dim], "concatenate"))
      const = frozenset(a for a in range(len(out_shape))
                        if a != dim and all(av.is_const(a) for av in avs))
      return AV(tuple(out_shape), dim, tuple(segs), const)
    if any(av.axis is not None for av in avs):
      # Joined along another axis: channel j of every part is channel j of the result.
      parts = [dataclasses.replace(av, shape=tuple(out_shape)) for av in avs]
      out = self.elementwise("concatenate", parts, out_shape, "and")
      return dataclasses.replace(out, const=out.const - {dim})
    for av in avs:
      if av.src is not None:
        self.pin(av.src[0], "concatenate of a parameter")
    const = frozenset(a for a in range(len(out_shape))
                      if a != dim and all(av.is_const(a) for av in avs))
    return AV(tuple(out_shape), const=const, zero=all(av.zero for av in avs))

  def slice(self, av: AV, out_shape, start, limit, strides) -> AV:
    a = av.axis
    if tuple(out_shape) == av.shape:
      return av
    if av.src is not None:
      if av.axis is None:
        self.pin(av.src[0], "slice of a parameter")
      av = dataclasses.replace(av, src=None)
    if a is None or (start[a] == 0 and limit[a] == av.shape[a]):
      return self.remap(av, out_shape, {i: i for i in range(len(av.shape))}, "slice")
    n = av.shape[a]
    if av.layout is not None or (strides is not None and strides[a] != 1):
      self.drop(av, f"strided slice of the {n}-channel axis")
      return AV(out_shape)
    # The pruned model slices at the same offsets (or ones computed from its width),
    # which would then select other channels: channels here cannot be removed.
    self.drop(av, f"a slice [{start[a]}:{limit[a]}] of the {n}-channel axis (a split, shift "
                  "or roll of channels): the pruned model would slice at offsets that no "
                  "longer select the same channels")
    return AV(tuple(out_shape), a, _take(av.segs, start[a], limit[a]), av.const, None, av.zero)

  def split(self, av: AV, out_shapes, axis, sizes) -> list[AV]:
    outs, lo = [], 0
    for shape, n in zip(out_shapes, sizes):
      start = [0] * len(av.shape)
      limit = list(av.shape)
      start[axis], limit[axis] = lo, lo + n
      outs.append(self.slice(av, shape, start, limit, None))
      lo += n
    return outs

  def pad(self, avs, out_shape, config) -> AV:
    av, value = avs
    a = av.axis
    if a is not None and tuple(config[a]) != (0, 0, 0):
      self.drop(av, "pad of the channel axis")
      return AV(out_shape)
    padded = {i for i, c in enumerate(config) if tuple(c) != (0, 0, 0)}
    out = self.remap(av, out_shape, {i: i for i in range(len(av.shape))}, "pad", keep_src=False)
    if not value.zero:
      out = _forget_zero(out, "op 'pad' with a nonzero value")
    return dataclasses.replace(out, const=out.const - padded, zero=out.zero and value.zero)
