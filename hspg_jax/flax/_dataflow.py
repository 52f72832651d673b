"""Channel dataflow over a jaxpr: which channels are removable, and with what.

An abstract interpretation of the eval-mode jaxpr. Every value gets at most one
*tracked axis* (its channel axis), cut into segments. A segment knows

* ``chan``: which producer channels it carries, ``(cid, offset)``; a *producer*
  is a conv / dense whose kernel is a state leaf, and each call of one creates a
  channel set ``cid`` of its output channels;
* ``zero``: when it is exactly zero, as a DNF over *atoms* ``(leaf, axis,
  start)`` (slices of ``nnx.Param`` leaves): the segment's channel ``j`` is zero
  whenever, for some alternative, every atom's slice ``start + j`` is zero. A
  conv output is zero where its filter is; ``a * b`` is zero where either is;
  ``a + b`` where both are; ``max(a, c)`` where ``a`` is and ``c <= 0``;
  ``BN(x) = (x - mean) * rsqrt(var + eps) * scale + bias`` is zero where
  ``scale`` and ``bias`` both are, whatever ``x`` is; a comparison with a
  constant has a known truth value where its operand is zero, so that
  ``where(x > 1, 1, x)`` (hard tanh) keeps a zero channel at zero;
* ``deps``: for per-channel vectors not (yet) tied to a producer (a bias, the
  BN factor ``rsqrt(var + eps) * scale``), the state-leaf slices they are made
  of, all of which must be cut when the channel is removed.

When a per-channel vector meets producer channels in an elementwise op, its
deps are *attached* to the channel set (they become group members); when two
channel sets meet (a residual add, a product), they are *linked* (one family).
A depthwise conv keeps its input's channels (its filters join their family);
a grouped conv records which channels must be removed together so that its
groups stay aligned. Where channels reach a *consumer* (a conv / dense
contracting them with a kernel leaf, possibly after a flatten that makes each
channel a strided set of the dense inputs) a *use* is recorded: the consumer
kernel's input slice to cut, and the zero condition there. Anything the
analysis cannot follow exactly (an unknown primitive, a reduction or reshape
mixing the channel axis, a slice of the channel axis at fixed offsets, an
elementwise partner that could not be cut, a partial per-channel parameter,
the model output) *poisons* the channel sets involved (they stay ungrouped)
and *pins* the state leaves involved (no family may cut them). The result is
conservative: a family is reported only if zeroing its groups provably zeroes
the channel at every consumer and every leaf it touches can be cut.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from hspg_jax.flax._structure import _WINDOW
from hspg_jax.flax._structure import StructureOps
from hspg_jax.flax._values import ALWAYS
from hspg_jax.flax._values import AV
from hspg_jax.flax._values import NEVER
from hspg_jax.flax._values import Atom
from hspg_jax.flax._values import Cut
from hspg_jax.flax._values import Seg
from hspg_jax.flax._values import dnf_and
from hspg_jax.flax._values import dnf_or
from hspg_jax.flax._values import refine as _refine
from hspg_jax.flax._values import seg_starts as _seg_starts
from hspg_jax.flax._values import take as _take


# --- primitive tables ---------------------------------------------------------------

# Calls of a sub-jaxpr, followed inside.
_CALLS = ("pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
          "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")
_VIEW = ("convert_element_type", "copy", "copy_p", "reduce_precision", "sharding_constraint",
         "optimization_barrier")
# f(0) == 0: a zero channel stays zero.
_UNARY_ZERO = ("neg", "abs", "sign", "floor", "ceil", "round", "sqrt", "cbrt", "sin", "tan",
               "asin", "atan", "sinh", "tanh", "asinh", "atanh", "erf", "erf_inv", "expm1",
               "log1p", "real", "imag", "conj", "square", "stop_gradient")
# f(0) != 0 (or undefined): the channel keeps its identity but not its zero.
_UNARY_NONZERO = ("exp", "exp2", "log", "cos", "cosh", "acos", "acosh", "logistic", "rsqrt",
                  "erfc", "lgamma", "digamma", "is_finite", "not", "population_count", "clz")
_BINARY = {"add": "and", "sub": "and", "max": "and", "min": "and", "add_any": "and",
           "mul": "or", "div": "first", "rem": "first",
           "pow": "top", "atan2": "top", "nextafter": "top", "and": "top", "or": "top",
           "xor": "top", "shift_left": "top", "shift_right_logical": "top",
           "shift_right_arithmetic": "top"}
_COMPARE = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
            "gt": operator.gt, "ge": operator.ge}
_REDUCE = {"reduce_sum": True, "reduce_max": True, "reduce_min": True, "reduce_prod": True,
           "argmax": False, "argmin": False, "reduce_and": False, "reduce_or": False,
           "reduce_xor": False}
_CUMULATIVE = {"cumsum": True, "cumprod": True, "cummax": True, "cummin": True,
               "cumlogsumexp": False}
# Ops that may see channels flattened into a larger axis (see AV.layout).
_LAYOUT_OK = frozenset(_VIEW + _UNARY_ZERO + _UNARY_NONZERO + tuple(_BINARY) + tuple(_COMPARE)
                       + tuple(_REDUCE) + ("integer_pow", "select_n", "clamp", "dot_general",
                                           "transpose", "broadcast_in_dim", "squeeze",
                                           "reshape", "slice"))


class Unsupported(Exception):
  """Raised in strict mode where the analysis would fall back."""


@dataclasses.dataclass
class ChannelSet:
  length: int
  producer: int  # kernel leaf index
  kind: str  # "conv" or "dense"


class Analysis(StructureOps):
  """Runs the interpretation; results are read by ``_families.finalize``.

  Args:
    paths: path of every state leaf (for messages).
    shapes: shape of every state leaf.
    is_param: whether each leaf is an ``nnx.Param`` (only those are atoms).
    strict: raise :class:`Unsupported` instead of falling back.
  """

  def __init__(self, paths: Sequence[str], shapes: Sequence[tuple], is_param: Sequence[bool],
               strict: bool = False):
    self.paths = list(paths)
    self.shapes = [tuple(s) for s in shapes]
    self.is_param = list(is_param)
    self.strict = strict
    self.sets: list[ChannelSet] = []
    self.parent: list[int] = []
    self.poisoned: dict[int, list[str]] = {}
    self.pinned: dict[int, str] = {}
    self.members: dict[tuple[int, int], set[int]] = {}  # (leaf, axis) -> cids
    # (cid, offset, length, zero, consumer leaf, lost): zero-invariance checks
    self.uses: list[tuple] = []
    self.cuts: list[Cut] = []  # consumer input slices, and slices never cut (cid None)
    # (kernel leaf, axis, position) -> [(cid, channel) | None]: a grouped conv's groups
    # share kernel input positions, so their channels go together or not at all.
    self.ties: dict[tuple[int, int, int], list] = {}
    self.equal_blocks: list[tuple[int, int]] = []  # (cid, G): a grouped conv's outputs
    self.normalized: dict[int, set[str]] = {}  # cid -> why its statistic was taken
    # cids reshaped to (..., C, 1): what GroupNorm(group_size=1) does with its num_groups
    self.unit_split: set[int] = set()
    self._stats: list[tuple[int, str]] = []  # statistics across channels in this equation

  # --- channel sets -------------------------------------------------------------------

  def new_set(self, leaf: int, axis: int, length: int, kind: str) -> int:
    cid = len(self.sets)
    self.sets.append(ChannelSet(length, leaf, kind))
    self.parent.append(cid)
    self.members.setdefault((leaf, axis), set()).add(cid)
    return cid

  def find(self, cid: int) -> int:
    while self.parent[cid] != cid:
      self.parent[cid] = self.parent[self.parent[cid]]
      cid = self.parent[cid]
    return cid

  def union(self, a: int, b: int):
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      self.parent[max(ra, rb)] = min(ra, rb)

  def producer_name(self, cid: int) -> str:
    return self.paths[self.sets[cid].producer].rsplit("/", 1)[0]

  def poison(self, cid: int, reason: str):
    self.poisoned.setdefault(cid, []).append(reason)

  def pin(self, leaf: int, reason: str):
    self.pinned.setdefault(leaf, reason)

  def link(self, a: tuple[int, int], b: tuple[int, int], length: int, where: str):
    """Channels ``a`` and ``b`` meet index by index: one family if aligned."""
    if a == b:
      return
    (ca, oa), (cb, ob) = a, b
    if oa == ob == 0 and length == self.sets[ca].length == self.sets[cb].length:
      self.union(ca, cb)
    else:
      why = f"{where}: channels combined with a different alignment"
      self.poison(ca, why)
      self.poison(cb, why)

  def attach(self, chan: tuple[int, int], length: int, atom: Atom, where: str):
    """A per-channel state slice joins the channels' group (it is cut with them)."""
    cid, off = chan
    leaf, axis, start = atom
    if off == start == 0 and length == self.sets[cid].length == self.shapes[leaf][axis]:
      self.members.setdefault((leaf, axis), set()).add(cid)
    else:
      self.poison(cid, f"{where}: {self.paths[leaf]!r} covers only part of the channels "
                       "(or several producers); a group spec cannot cut it per family")

  def drop(self, av: AV, reason: str, *, allowed: bool = False, stat: bool = False):
    """``av`` is used in a way the analysis does not follow.

    ``stat``: the op computes something across the channels (a reduction, a
    reshape mixing them); values derived from it carry the channels in
    ``AV.mixed``, so that a normalization is recognised (and named) when that
    statistic meets the same channels again.
    """
    cids = sorted({s.chan[0] for s in av.segs if s.chan is not None})
    if self.strict and not allowed and (cids or av.src is not None):
      names = ", ".join(sorted({self.producer_name(c) for c in cids}))
      leaf = f" (state leaf {self.paths[av.src[0]]!r})" if av.src is not None else ""
      raise Unsupported(f"{reason}; it touches the channels of [{names}]{leaf}")
    for c in cids:
      self.poison(c, reason)
      if stat:
        self._stats.append((c, reason))
    for s in av.segs:
      for leaf, _, _ in s.deps:
        self.pin(leaf, reason)
    if av.src is not None:
      self.pin(av.src[0], reason)

  # --- entry --------------------------------------------------------------------------

  def run(self, closed_jaxpr, num_leaves: int):
    jaxpr = closed_jaxpr.jaxpr
    in_avs = []
    for i, v in enumerate(jaxpr.invars):
      shape = tuple(v.aval.shape)
      if i < num_leaves:
        in_avs.append(self.leaf_av(i, shape))
      else:
        in_avs.append(AV(shape))  # the model input: untracked
    consts = [self.const_av(c) for c in closed_jaxpr.consts]
    outs = self.eval_jaxpr(jaxpr, consts, in_avs)
    for av in outs:
      self.drop(av, "reaches the model output", allowed=True)

  def leaf_av(self, leaf: int, shape) -> AV:
    dims = tuple(range(len(shape)))
    if len(shape) == 1:  # per-channel vectors are tracked from the start
      zero = frozenset([frozenset([(leaf, 0, 0)])]) if self.is_param[leaf] else NEVER
      seg = Seg(shape[0], None, zero, frozenset([(leaf, 0, 0)]))
      return AV(shape, 0, (seg,), src=(leaf, dims))
    return AV(shape, src=(leaf, dims))

  @staticmethod
  def const_av(c) -> AV:
    try:
      arr = np.asarray(c)
    except Exception:  # noqa: BLE001 - e.g. a PRNG key array
      return AV(tuple(np.shape(c)))
    if arr.dtype.kind == "V" and jnp.issubdtype(arr.dtype, jnp.floating):
      arr = arr.astype(np.float32)  # bfloat16, float8...: NumPy sees raw bytes otherwise
    numeric = bool(arr.size) and arr.dtype.kind in "biufc"
    zero = numeric and not np.any(arr)
    uniform = numeric and bool(np.all(arr == arr.flat[0]))
    scalar = float(arr.flat[0]) if uniform and arr.dtype.kind in "biuf" else None
    const = frozenset(range(arr.ndim)) if uniform else frozenset()
    return AV(arr.shape, const=const, zero=zero, scalar=scalar)

  def eval_jaxpr(self, jaxpr, const_avs, in_avs):
    env = {}

    def read(v):
      if hasattr(v, "val"):  # a Literal
        return self.const_av(v.val)
      return env[v]

    for v, av in zip(jaxpr.constvars, const_avs):
      env[v] = av
    for v, av in zip(jaxpr.invars, in_avs):
      env[v] = av
    for eqn in jaxpr.eqns:
      avs = [read(v) for v in eqn.invars]
      outer_stats, self._stats = self._stats, []
      outs = self.eqn(eqn, avs)
      if eqn.primitive.name not in _CALLS:  # a call's outputs are tagged inside
        tag = frozenset(self._stats).union(*(av.mixed for av in avs))
        if tag:
          outs = [dataclasses.replace(o, mixed=o.mixed | tag) for o in outs]
      self._stats = outer_stats
      for v, av in zip(eqn.outvars, outs):
        env[v] = av
    return [read(v) for v in jaxpr.outvars]

  # --- equations ----------------------------------------------------------------------

  def eqn(self, eqn, avs):
    name = eqn.primitive.name
    out_shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
    p = eqn.params
    if name in _CALLS:
      sub = next((p[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in p), None)
      if sub is not None:
        inner = getattr(sub, "jaxpr", sub)
        consts = [self.const_av(c) for c in getattr(sub, "consts", ())]
        if len(inner.invars) == len(avs):
          return self.eval_jaxpr(inner, consts, avs)
    if name not in _LAYOUT_OK:
      avs = [self.plain(av, f"op {name!r}") for av in avs]
    if name in _VIEW:
      return [av if av.shape == s else self.unknown(name, [av], [s])[0]
              for av, s in zip(avs, out_shapes)]
    if name == "conv_general_dilated":
      return [self.conv(eqn, avs, out_shapes[0])]
    if name == "dot_general":
      return [self.dot(eqn, avs, out_shapes[0])]
    if name in _UNARY_ZERO:
      return [self.elementwise(name, avs, out_shapes[0], "first")]
    if name in _UNARY_NONZERO:
      return [self.elementwise(name, avs, out_shapes[0], "top")]
    if name == "integer_pow":
      return [self.elementwise(name, avs, out_shapes[0], "first" if p["y"] > 0 else "top")]
    if name in ("max", "min"):
      return [self.elementwise(name, self.absorbing(name, avs), out_shapes[0], "and")]
    if name in _BINARY:
      return [self.elementwise(name, avs, out_shapes[0], _BINARY[name])]
    if name in _COMPARE:
      return [self.compare(name, avs, out_shapes[0])]
    if name == "select_n":
      kind = "select" if len(avs) == 3 else "and"
      return [self.elementwise(name, avs, out_shapes[0], kind, zero_from=range(1, len(avs)))]
    if name == "clamp":
      lo, hi = avs[0].scalar, avs[2].scalar
      kind = "first" if lo is not None and hi is not None and lo <= 0 <= hi else "top"
      return [self.elementwise(name, avs, out_shapes[0], kind, zero_from=[1])]
    if name == "reshape" and p.get("dimensions") is None:
      return [self.reshape(avs[0], out_shapes[0])]
    if name == "broadcast_in_dim":
      return [self.broadcast(avs[0], out_shapes[0], p["broadcast_dimensions"])]
    if name == "transpose":
      perm = tuple(p["permutation"])
      return [self.remap(avs[0], out_shapes[0], {perm[j]: j for j in range(len(perm))}, name)]
    if name == "squeeze":
      dims = {d % len(avs[0].shape) for d in p["dimensions"]}
      kept = [i for i in range(len(avs[0].shape)) if i not in dims]
      return [self.remap(avs[0], out_shapes[0], {i: j for j, i in enumerate(kept)}, name)]
    if name in _REDUCE:
      return [self.reduce(avs[0], out_shapes[0], set(p["axes"]), name, _REDUCE[name])]
    if name in _WINDOW:
      return [self.window(avs[0], out_shapes[0], p, name)]
    if name in _CUMULATIVE:
      return [self.cumulative(avs[0], p["axis"], name, _CUMULATIVE[name])]
    if name == "concatenate":
      return [self.concatenate(avs, out_shapes[0], p["dimension"])]
    if name == "slice":
      return [self.slice(avs[0], out_shapes[0], p["start_indices"], p["limit_indices"],
                         p["strides"])]
    if name == "split":
      return self.split(avs[0], out_shapes, p["axis"], p["sizes"])
    if name == "pad":
      return [self.pad(avs, out_shapes[0], p["padding_config"])]
    if name == "rev":
      av, dims = avs[0], set(p["dimensions"])
      if av.axis in dims:
        self.drop(av, "op 'rev' reverses the channel axis")
        av = AV(av.shape, src=av.src, mixed=av.mixed)
      return [self.remap(av, out_shapes[0], {i: i for i in range(len(av.shape))
                                             if i not in dims}, name, keep_src=False)]
    if not avs:  # iota, constants, random bits: nothing of ours flows in
      return [AV(s) for s in out_shapes]
    return self.unknown(name, avs, out_shapes)

  def unknown(self, name, avs, out_shapes):
    for av in avs:
      self.drop(av, f"unsupported op {name!r}")
    return [AV(s) for s in out_shapes]

  def plain(self, av: AV, where: str) -> AV:
    """``av`` with its tracked axis given up if it holds flattened channels."""
    if av.layout is None:
      return av
    self.drop(av, f"{where} on channels flattened into a larger axis (only a dense layer "
                  "consuming them, and ops elementwise over them, are followed)")
    return AV(av.shape, const=av.const, zero=av.zero, mixed=av.mixed)

  # --- producers and consumers ---------------------------------------------------------

  def _kernel(self, av: AV):
    """``(leaf, dims)`` if ``av`` is a full view of a state leaf, else None."""
    if av.src is None:
      return None
    leaf, dims = av.src
    covered = {d for d in dims if d is not None}
    if any(n > 1 and d not in covered for d, n in enumerate(self.shapes[leaf])):
      return None
    return leaf, dims

  def _untrack(self, act: AV, axis: int, what: str) -> AV:
    if act.axis is not None and act.axis != axis:
      self.drop(act, f"{what}: the channel axis is mixed spatially")
      return AV(act.shape)
    return act

  def consume(self, act: AV, axis: int, leaf: int, leaf_axis: int, what: str):
    """``act``'s channels along ``axis`` are contracted with ``leaf[leaf_axis]``."""
    act = self._untrack(act, axis, what)
    if act.axis is None:
      # Channels nobody can remove (e.g. the model input): this kernel slice stays.
      self.cuts.append(Cut(leaf, leaf_axis, 0, self.shapes[leaf][leaf_axis], None))
      return
    layout = None
    if act.layout is not None:
      outer, inner = act.layout
      layout = (outer, act.width, inner)
    for start, s in _seg_starts(act.segs):
      if s.chan is not None:
        self.uses.append((s.chan[0], s.chan[1], s.length, s.zero, leaf, s.lost))
        self.cuts.append(Cut(leaf, leaf_axis, start, s.length, s.chan[0], s.chan[1], layout))
      else:
        self.cuts.append(Cut(leaf, leaf_axis, start, s.length, None, 0, layout))
        for dep_leaf, _, _ in s.deps:
          self.pin(dep_leaf, f"{what}: used on channels that are never removed")

  def produce(self, leaf: int, leaf_axis: int, shape, axis: int, kind: str) -> AV:
    length = shape[axis]
    cid = self.new_set(leaf, leaf_axis, length, kind)
    zero = frozenset([frozenset([(leaf, leaf_axis, 0)])]) if self.is_param[leaf] else NEVER
    return AV(shape, axis, (Seg(length, (cid, 0), zero),))

  def conv(self, eqn, avs, out_shape):
    lhs, rhs = avs
    p = eqn.params
    dn = p["dimension_numbers"]
    kernel = self._kernel(rhs)
    groups = p["feature_group_count"]
    ok = (kernel is not None and p["batch_group_count"] == 1
          and None not in (kernel[1][dn.rhs_spec[0]], kernel[1][dn.rhs_spec[1]]))
    if not ok:
      why = ("conv with batch_group_count > 1" if kernel is not None
             else "conv whose kernel is not a parameter leaf as stored (e.g. a masked or computed "
                  "kernel)")
      self.drop(lhs, f"unsupported op conv_general_dilated ({why})")
      self.drop(rhs, f"unsupported op conv_general_dilated ({why})")
      return AV(out_shape)
    leaf, dims = kernel
    out_axis, in_axis = dims[dn.rhs_spec[0]], dims[dn.rhs_spec[1]]
    in_ch, out_ch = dn.lhs_spec[1], dn.out_spec[1]
    what = f"conv {self.paths[leaf]!r}"
    lhs = self.plain(lhs, what)
    if groups == 1:
      self.consume(lhs, in_ch, leaf, in_axis, what)
      return self.produce(leaf, out_axis, out_shape, out_ch, "conv")
    per_in, per_out = lhs.shape[in_ch] // groups, out_shape[out_ch] // groups
    if per_in == 1 and per_out == 1:
      return self.depthwise(lhs, in_ch, leaf, out_axis, out_shape, out_ch, what)
    if per_in == 1:
      self.drop(lhs, f"{what} is depthwise with channel multiplier {per_out}: removing one of "
                     f"its input channels would remove {per_out} of its outputs and change its "
                     "group count")
    else:
      self.consume_grouped(lhs, in_ch, leaf, in_axis, groups, what)
    out = self.produce(leaf, out_axis, out_shape, out_ch, "conv")
    self.equal_blocks.append((out.segs[0].chan[0], groups))
    return out

  def depthwise(self, act: AV, axis: int, leaf: int, out_axis: int, out_shape, out_ch: int,
                what: str) -> AV:
    """Output channel ``c`` is input channel ``c`` filtered: it keeps its identity."""
    act = self._untrack(act, axis, what)
    n = out_shape[out_ch]
    if act.axis is None:
      self.cuts.append(Cut(leaf, out_axis, 0, n, None))
      return AV(out_shape, out_ch, (Seg(n, fixed=True),))
    segs = []
    for start, s in _seg_starts(act.segs):
      atom = (leaf, out_axis, start)
      if s.chan is None:
        self.cuts.append(Cut(leaf, out_axis, start, s.length, None))
        for dep_leaf, _, _ in s.deps:
          self.pin(dep_leaf, f"{what}: applied to channels that are never removed")
        segs.append(Seg(s.length, fixed=True))
        continue
      cid, off = s.chan
      zero = s.zero
      if off == start == 0 and s.length == self.sets[cid].length == n:
        # The filters join the producer's family (graph-based pruning tools do the same).
        self.members.setdefault((leaf, out_axis), set()).add(cid)
        if self.is_param[leaf]:
          zero = dnf_or(zero, frozenset([frozenset([atom])]))
      else:  # channels of several producers: cut the filters as a consumer's input
        self.cuts.append(Cut(leaf, out_axis, start, s.length, cid, off))
      segs.append(Seg(s.length, s.chan, zero, lost=s.lost))
    return AV(out_shape, out_ch, tuple(segs))

  def consume_grouped(self, act: AV, axis: int, leaf: int, leaf_axis: int, groups: int,
                      what: str):
    """A grouped conv: group ``g`` reads input positions ``g * k + j`` with kernel row ``j``."""
    act = self._untrack(act, axis, what)
    k = act.shape[axis] // groups
    for g in range(groups):
      segs = (_take(act.segs, g * k, (g + 1) * k) if act.axis is not None
              else (Seg(k, fixed=True),))
      for start, s in _seg_starts(segs):
        if s.chan is not None:
          cid, off = s.chan
          self.uses.append((cid, off, s.length, s.zero, leaf, s.lost))
          self.cuts.append(Cut(leaf, leaf_axis, start, s.length, cid, off, tied=True))
        else:
          for dep_leaf, _, _ in s.deps:
            self.pin(dep_leaf, f"{what}: used on channels that are never removed")
        for j in range(s.length):
          item = None if s.chan is None else (s.chan[0], s.chan[1] + j)
          self.ties.setdefault((leaf, leaf_axis, start + j), []).append(item)

  def dot(self, eqn, avs, out_shape):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = avs
    kl, kr = self._kernel(lhs), self._kernel(rhs)
    simple = not lb and not rb and len(lc) == 1
    if simple and kr is not None and kl is None and len(rhs.shape) == 2:
      act, act_c, kernel, k_c, k_is_rhs = lhs, lc[0], kr, rc[0], True
    elif simple and kl is not None and kr is None and len(lhs.shape) == 2:
      act, act_c, kernel, k_c, k_is_rhs = rhs, rc[0], kl, lc[0], False
    else:
      for av in avs:
        self.drop(av, "unsupported op dot_general (not activation x 2-D parameter kernel)")
      return AV(out_shape)
    leaf, dims = kernel
    k_free = 1 - k_c
    act_free = [i for i in range(len(act.shape)) if i != act_c]
    # Output axes: lhs free axes, then rhs free axes.
    out_k = len(act_free) if k_is_rhs else 0
    act_out = {a: (i if k_is_rhs else i + 1) for i, a in enumerate(act_free)}
    if act.axis is not None and act.axis != act_c:
      # Contracting a non-channel axis: channels pass through; the kernel is no producer.
      self.pin(leaf, "dense kernel applied along a non-channel axis")
      return self.remap(act, out_shape, act_out, "dot_general", keep_src=False)
    what = f"dense {self.paths[leaf]!r}"
    self.consume(act, act_c, leaf, dims[k_c], what)
    return self.produce(leaf, dims[k_free], out_shape, out_k, "dense")

  # --- elementwise -------------------------------------------------------------------

  def as_segs(self, av: AV, axis: int, length: int, where: str,
              layout=None) -> tuple[Seg, ...]:
    """``av``'s segments along the result's tracked ``axis``."""
    if av.axis == axis and av.layout == layout and av.width == length:
      return av.segs
    if av.is_const(axis):
      if av.axis is not None:
        if av.axis == axis:
          self.drop(av, f"{where}: its single channel is broadcast across {length} channels")
        else:
          self.drop(av, f"{where}: channels broadcast along another axis")
      return (Seg(length, zero=ALWAYS if av.zero else NEVER),)
    if layout is None and av.src is not None and av.src[1][axis] is not None:
      leaf, dims = av.src
      atom = (leaf, dims[axis], 0)
      zero = frozenset([frozenset([atom])]) if self.is_param[leaf] else NEVER
      return (Seg(length, None, zero, frozenset([atom])),)
    if layout is not None or av.layout is not None:
      self.drop(av, f"{where}: combined with channels flattened into a larger axis")
    elif av.axis is None and av.src is None and len(av.shape) and av.shape[axis] == length:
      # e.g. a NumPy array baked into the model: the pruned model would keep its width
      return (Seg(length, fixed=f"{where}: combined with a fixed {length}-wide array along the "
                                "channel axis (a constant of the model, or a value that does "
                                "not follow these channels), which pruning cannot cut"),)
    else:
      self.drop(av, f"{where}: combined with channels along another axis")
    return (Seg(length, fixed=True),)

  def absorbing(self, name, avs):
    """``max(x, c)`` with ``c <= 0`` (``min`` with ``c >= 0``) is zero where ``x`` is."""
    out = []
    for av in avs:
      c = av.scalar
      if av.axis is None and c is not None and (c <= 0 if name == "max" else c >= 0):
        av = dataclasses.replace(av, zero=True)
      out.append(av)
    return out

  def compare(self, name, avs, out_shape) -> AV:
    """A comparison with a constant is known (True or False) where its operand is zero."""
    a, b = avs
    for i, (x, c) in enumerate(((a, b), (b, a))):
      value = 0.0 if c.zero else c.scalar
      if x.axis is not None and c.axis is None and value is not None:
        args = (0.0, value) if i == 0 else (value, 0.0)
        kind = "cmp_true" if _COMPARE[name](*args) else "cmp_false"
        return self.elementwise(name, avs, out_shape, kind, zero_from=[i])
    return self.elementwise(name, avs, out_shape, "top")

  def elementwise(self, name, avs, out_shape, kind, zero_from=None):
    ndim = len(out_shape)
    zero_from = set(range(len(avs)) if zero_from is None else zero_from)
    # The result tracks the channel axis of a producer-carrying operand if any,
    # else of a per-channel vector.
    tracked = [av for av in avs if av.axis is not None and len(av.shape) == ndim]
    src = next((av for av in tracked if av.has_chan and av.width > 1), None)
    src = src or next((av for av in tracked if av.has_chan), None)
    if src is None:
      src = next((av for av in tracked if av.shape[av.axis] == out_shape[av.axis]), None)
    const = frozenset(a for a in range(ndim) if all(av.is_const(a) for av in avs))
    if src is None:
      zeros = [av.zero for i, av in enumerate(avs) if i in zero_from]
      if kind in ("cmp_true", "cmp_false", "select"):
        kind = "top" if kind != "select" else "and"
      zero = {"and": all, "or": any, "first": lambda z: z[0] if z else False,
              "top": lambda z: False}[kind](zeros)
      for av in avs:
        if av.src is not None:  # its values flow on untracked (e.g. kernel * mask)
          self.pin(av.src[0], f"op {name!r} on a parameter outside channel tracking")
      return AV(out_shape, const=const, zero=bool(zero))
    axis, layout = src.axis, src.layout
    length = src.width if layout is not None else out_shape[axis]
    where = f"op {name!r}"
    # A statistic across channels meeting those channels: a normalization.
    chans = {s.chan[0] for av in avs for s in av.segs if s.chan is not None}
    for av in avs:
      own = {s.chan[0] for s in av.segs if s.chan is not None}
      for cid, why in av.mixed:
        if cid in chans and cid not in own:
          self.normalized.setdefault(cid, set()).add(why)
    seg_lists = [self.as_segs(av, axis, length, where, layout) for av in avs]
    out = []
    for n, parts in _refine(seg_lists):
      zero, true = self._combine(kind, parts, zero_from)
      lost = None
      if zero == NEVER:
        lost = self._why_lost(name, kind, parts, zero_from)
      chans = [s.chan for s in parts if s.chan is not None]
      if chans:
        rep = chans[0]
        for c in chans[1:]:
          self.link(rep, c, n, where)
        for s in parts:
          if s.fixed:
            self.poison(rep[0], s.fixed if isinstance(s.fixed, str) else (
                f"{where}: combined with channels that cannot be cut (an input or an "
                "ungrouped activation)"))
          for atom in s.deps:
            self.attach(rep, n, atom, where)
        out.append(Seg(n, rep, zero, true=true, lost=lost))
      else:
        deps = frozenset().union(*(s.deps for s in parts))
        fixed = next((s.fixed for s in parts if s.fixed), False)
        if fixed:  # these parameter slices now act on channels nobody removes
          for dep_leaf, _, _ in deps:
            self.pin(dep_leaf, f"{where}: applied to channels that are never removed")
        out.append(Seg(n, None, zero, deps, fixed, true, lost))
    return AV(out_shape, axis, tuple(out), const, layout=layout)

  @staticmethod
  def _combine(kind, parts, zero_from):
    """(zero, true) of one refined segment."""
    zs = [s.zero for i, s in enumerate(parts) if i in zero_from]
    if kind == "top" or not zs:
      return NEVER, NEVER
    if kind == "first":
      return zs[0], NEVER
    if kind == "cmp_false":  # False (zero) where the compared channel is zero
      return zs[0], NEVER
    if kind == "cmp_true":
      return NEVER, zs[0]
    zero = zs[0]
    for z in zs[1:]:
      zero = dnf_or(zero, z) if kind == "or" else dnf_and(zero, z)
    if kind == "select":  # select_n(pred, on_false, on_true)
      pred, on_false, on_true = parts
      zero = dnf_or(zero, dnf_or(dnf_and(pred.zero, on_false.zero),
                                 dnf_and(pred.true, on_true.zero)))
    return zero, NEVER

  def _why_lost(self, name, kind, parts, zero_from):
    """Why a segment that was zero with its group is not any more (for messages)."""
    inputs = [s for i, s in enumerate(parts) if i in zero_from]
    if not any(s.zero != NEVER for s in inputs):
      return next((s.lost for s in parts if s.lost), None)
    if kind == "top":
      if name in _UNARY_NONZERO:
        return f"op {name!r} maps zero to a nonzero value"
      return f"op {name!r} does not keep a zero channel at zero"
    for s in inputs:
      if s.zero != NEVER:
        continue
      if s.lost:
        return s.lost
      if s.deps:
        leaves = ", ".join(sorted({repr(self.paths[leaf]) for leaf, _, _ in s.deps}))
        return f"op {name!r} combines it with {leaves}, which does not vanish with the group"
      if s.fixed:
        return (f"op {name!r} combines it with channels that are never removed (the model "
                "input or an ungrouped activation)")
      if s.chan is not None:
        return (f"op {name!r} combines it with channels of {self.producer_name(s.chan[0])!r} "
                "that are not zero with the group")
      return f"op {name!r} combines it with a nonzero constant"
    return f"op {name!r}"

def count_macs(closed_jaxpr) -> int:
  """Multiply-accumulates of every conv and dot_general in a jaxpr (recursively)."""
  total = 0

  def walk(jaxpr):
    nonlocal total
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name == "conv_general_dilated":
        out = eqn.outvars[0].aval.shape
        rhs = eqn.invars[1].aval.shape
        o = eqn.params["dimension_numbers"].rhs_spec[0]
        total += int(np.prod(out)) * int(np.prod(rhs)) // rhs[o]
      elif name == "dot_general":
        out = eqn.outvars[0].aval.shape
        lhs = eqn.invars[0].aval.shape
        (lc, _), _ = eqn.params["dimension_numbers"]
        total += int(np.prod(out)) * int(np.prod([lhs[i] for i in lc]))
      for v in eqn.params.values():
        for sub in (v if isinstance(v, (tuple, list)) else (v,)):
          inner = getattr(sub, "jaxpr", None)
          if inner is not None and hasattr(inner, "eqns"):
            walk(inner)
          elif hasattr(sub, "eqns"):
            walk(sub)

  walk(closed_jaxpr.jaxpr)
  return total
