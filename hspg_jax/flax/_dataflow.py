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
  ``a + b`` where both are; ``BN(x) = (x - mean) * rsqrt(var + eps) * scale +
  bias`` is zero where ``scale`` and ``bias`` both are, whatever ``x`` is;
* ``deps``: for per-channel vectors not (yet) tied to a producer (a bias, the
  BN factor ``rsqrt(var + eps) * scale``), the state-leaf slices they are made
  of, all of which must be cut when the channel is removed.

When a per-channel vector meets producer channels in an elementwise op, its
deps are *attached* to the channel set (they become group members); when two
channel sets meet (a residual add, a product), they are *linked* (one family).
Where channels reach a *consumer* (a conv / dense contracting them with a
kernel leaf) a *use* is recorded: the consumer kernel's input slice to cut, and
the zero condition there. Anything the analysis cannot follow exactly (an
unknown primitive, a reduction or reshape mixing the channel axis, an
elementwise partner that could not be cut, a partial per-channel parameter,
the model output) *poisons* the channel sets involved (they stay ungrouped) and
*pins* the state leaves involved (no family may cut them). The result is
conservative: a family is reported only if zeroing its groups provably zeroes
the channel at every consumer and every leaf it touches can be cut.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
import numpy as np

Atom = tuple[int, int, int]  # (state leaf index, leaf axis, start along that axis)
DNF = frozenset  # frozenset[frozenset[Atom]]: alternatives, any one suffices
NEVER: DNF = frozenset()
ALWAYS: DNF = frozenset([frozenset()])
_MAX_ALTERNATIVES = 8


def _minimize(d) -> DNF:
  alts = sorted(set(d), key=len)
  kept = []
  for a in alts:
    if not any(k <= a for k in kept):
      kept.append(a)
  # Dropping alternatives only forgets ways to be zero: conservative.
  return frozenset(kept[:_MAX_ALTERNATIVES])


def dnf_or(a: DNF, b: DNF) -> DNF:
  """Zero if either is zero (a product)."""
  return _minimize(a | b)


def dnf_and(a: DNF, b: DNF) -> DNF:
  """Zero if both are zero (a sum, a max)."""
  return _minimize(frozenset(x | y for x in a for y in b))


def _shift_atoms(atoms, k):
  return frozenset((leaf, ax, s + k) for leaf, ax, s in atoms)


def _shift_dnf(d: DNF, k: int) -> DNF:
  return frozenset(_shift_atoms(a, k) for a in d) if k else d


@dataclasses.dataclass(frozen=True)
class Seg:
  """A run of ``length`` channels along a value's tracked axis."""

  length: int
  chan: tuple[int, int] | None = None
  zero: DNF = NEVER
  deps: frozenset = frozenset()
  fixed: bool = False  # channels of a value we cannot cut (an untracked activation)

  def sub(self, i: int, n: int) -> Seg:
    chan = None if self.chan is None else (self.chan[0], self.chan[1] + i)
    return Seg(n, chan, _shift_dnf(self.zero, i), _shift_atoms(self.deps, i), self.fixed)


@dataclasses.dataclass(frozen=True)
class AV:
  """Abstract value of one jaxpr variable."""

  shape: tuple[int, ...]
  axis: int | None = None
  segs: tuple[Seg, ...] = ()
  const: frozenset = frozenset()  # axes along which the value is constant
  src: tuple[int, tuple] | None = None  # a view of state leaf: (leaf, leaf axis per axis)
  zero: bool = False  # exactly zero everywhere
  scalar: float | None = None  # value of a rank-0 literal / constant

  def is_const(self, a: int) -> bool:
    return len(self.shape) == 0 or self.shape[a] == 1 or a in self.const

  @property
  def has_chan(self) -> bool:
    return any(s.chan is not None for s in self.segs)


def _seg_starts(segs):
  start = 0
  for s in segs:
    yield start, s
    start += s.length


def _take(segs, lo, hi):
  """Sub-segments covering ``[lo, hi)``."""
  out = []
  for start, s in _seg_starts(segs):
    a, b = max(lo, start), min(hi, start + s.length)
    if a < b:
      out.append(s.sub(a - start, b - a))
  return tuple(out)


def _refine(seg_lists):
  """Cuts every list at the union of boundaries -> [(length, [seg per list])]."""
  bounds = set()
  for segs in seg_lists:
    for start, s in _seg_starts(segs):
      bounds.update((start, start + s.length))
  bounds = sorted(bounds)
  return [(b - a, [_take(segs, a, b)[0] for segs in seg_lists])
          for a, b in zip(bounds[:-1], bounds[1:])]


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
           "pow": "top", "atan2": "top", "nextafter": "top", "eq": "top", "ne": "top",
           "lt": "top", "le": "top", "gt": "top", "ge": "top", "and": "top", "or": "top",
           "xor": "top", "shift_left": "top", "shift_right_logical": "top",
           "shift_right_arithmetic": "top"}
_REDUCE = {"reduce_sum": True, "reduce_max": True, "reduce_min": True, "reduce_prod": True,
           "argmax": False, "argmin": False, "reduce_and": False, "reduce_or": False,
           "reduce_xor": False}
_WINDOW = {"reduce_window_sum": "sum", "reduce_window_max": "max", "reduce_window_min": "max"}
_CUMULATIVE = {"cumsum": True, "cumprod": True, "cummax": True, "cummin": True,
               "cumlogsumexp": False}


class Unsupported(Exception):
  """Raised in strict mode where the analysis would fall back."""


@dataclasses.dataclass
class ChannelSet:
  length: int
  producer: int  # kernel leaf index
  kind: str  # "conv" or "dense"


class Analysis:
  """Runs the interpretation; results are read by :meth:`families`.

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
    self.uses: list[tuple[int, int, int, DNF, int]] = []  # cid, off, len, zero, consumer leaf
    # (leaf, axis, start, length, cid, offset): consumer input slices
    self.dependents: list[tuple[int, int, int, int, int, int]] = []
    self.fixed_cuts: list[tuple[int, int, int, int]] = []  # leaf, ax, start, len: never cut

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

  def drop(self, av: AV, reason: str, *, allowed: bool = False):
    """``av`` is used in a way the analysis does not follow."""
    cids = sorted({s.chan[0] for s in av.segs if s.chan is not None})
    if self.strict and not allowed and (cids or av.src is not None):
      names = ", ".join(sorted({self.producer_name(c) for c in cids}))
      leaf = f" (state leaf {self.paths[av.src[0]]!r})" if av.src is not None else ""
      raise Unsupported(f"{reason}; it touches the channels of [{names}]{leaf}")
    for c in cids:
      self.poison(c, reason)
    for s in av.segs:
      for leaf, _, _ in s.deps:
        self.pin(leaf, reason)
    if av.src is not None:
      self.pin(av.src[0], reason)

  def families(self) -> list[FamilyInfo]:
    """Families of linked channel sets, with why any is left ungrouped."""
    return _finalize(self)

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
    zero = bool(arr.size) and arr.dtype.kind in "biufc" and not np.any(arr)
    scalar = float(arr) if arr.ndim == 0 and arr.dtype.kind in "biuf" else None
    const = frozenset(range(arr.ndim)) if arr.size and arr.dtype.kind in "biufc" and np.all(
        arr == arr.flat[0]) else frozenset()
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
      outs = self.eqn(eqn, avs)
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
    if name in _BINARY:
      return [self.elementwise(name, avs, out_shapes[0], _BINARY[name])]
    if name == "select_n":
      return [self.elementwise(name, avs, out_shapes[0], "and", zero_from=range(1, len(avs)))]
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
      return [self.slice(avs[0], out_shapes[0], p)]
    if name == "pad":
      return [self.pad(avs, out_shapes[0], p["padding_config"])]
    if name == "rev":
      return [self.remap(avs[0], out_shapes[0], {i: i for i in range(len(avs[0].shape))
                                                 if i not in set(p["dimensions"])}, name,
                         keep_src=False)]
    if not avs:  # iota, constants, random bits: nothing of ours flows in
      return [AV(s) for s in out_shapes]
    return self.unknown(name, avs, out_shapes)

  def unknown(self, name, avs, out_shapes):
    for av in avs:
      self.drop(av, f"unsupported op {name!r}")
    return [AV(s) for s in out_shapes]

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

  def consume(self, act: AV, axis: int, leaf: int, leaf_axis: int, what: str):
    """``act``'s channels along ``axis`` are contracted with ``leaf[leaf_axis]``."""
    if act.axis is not None and act.axis != axis:
      self.drop(act, f"{what}: the channel axis is mixed spatially")
      act = AV(act.shape)
    if act.axis is None:
      # Channels nobody can remove (e.g. the model input): this kernel slice stays.
      self.fixed_cuts.append((leaf, leaf_axis, 0, self.shapes[leaf][leaf_axis]))
      return
    for start, s in _seg_starts(act.segs):
      if s.chan is not None:
        self.uses.append((s.chan[0], s.chan[1], s.length, s.zero, leaf))
        self.dependents.append((leaf, leaf_axis, start, s.length, s.chan[0], s.chan[1]))
      else:
        self.fixed_cuts.append((leaf, leaf_axis, start, s.length))
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
    ok = (kernel is not None and p["feature_group_count"] == 1 and p["batch_group_count"] == 1
          and None not in (kernel[1][dn.rhs_spec[0]], kernel[1][dn.rhs_spec[1]]))
    if not ok:
      why = ("grouped/depthwise conv" if kernel is not None
             else "conv whose kernel is not a parameter leaf as stored")
      self.drop(lhs, f"unsupported op conv_general_dilated ({why})")
      self.drop(rhs, f"unsupported op conv_general_dilated ({why})")
      return AV(out_shape)
    leaf, dims = kernel
    out_axis, in_axis = dims[dn.rhs_spec[0]], dims[dn.rhs_spec[1]]
    what = f"conv {self.paths[leaf]!r}"
    self.consume(lhs, dn.lhs_spec[1], leaf, in_axis, what)
    return self.produce(leaf, out_axis, out_shape, dn.out_spec[1], "conv")

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

  def as_segs(self, av: AV, axis: int, length: int, where: str) -> tuple[Seg, ...]:
    """``av``'s segments along the result's tracked ``axis``."""
    if av.axis == axis and len(av.shape) and av.shape[axis] == length:
      return av.segs
    if av.is_const(axis):
      if av.axis is not None:
        self.drop(av, f"{where}: channels broadcast along another axis")
      return (Seg(length, zero=ALWAYS if av.zero else NEVER),)
    if av.src is not None and av.src[1][axis] is not None:
      leaf, dims = av.src
      atom = (leaf, dims[axis], 0)
      zero = frozenset([frozenset([atom])]) if self.is_param[leaf] else NEVER
      return (Seg(length, None, zero, frozenset([atom])),)
    self.drop(av, f"{where}: combined with channels along another axis")
    return (Seg(length, fixed=True),)

  def elementwise(self, name, avs, out_shape, kind, zero_from=None):
    ndim = len(out_shape)
    zero_from = set(range(len(avs)) if zero_from is None else zero_from)
    # The result tracks the channel axis of a producer-carrying operand if any,
    # else of a per-channel vector.
    axis = next((av.axis for av in avs if av.has_chan and len(av.shape) == ndim), None)
    if axis is None:
      axis = next((av.axis for av in avs if av.axis is not None and len(av.shape) == ndim
                   and av.shape[av.axis] == out_shape[av.axis]), None)
    const = frozenset(a for a in range(ndim) if all(av.is_const(a) for av in avs))
    if axis is None:
      zeros = [av.zero for i, av in enumerate(avs) if i in zero_from]
      zero = {"and": all, "or": any, "first": lambda z: z[0] if z else False,
              "top": lambda z: False}[kind](zeros)
      for av in avs:
        if av.src is not None:  # its values flow on untracked (e.g. kernel * mask)
          self.pin(av.src[0], f"op {name!r} on a parameter outside channel tracking")
      return AV(out_shape, const=const, zero=bool(zero))
    length = out_shape[axis]
    where = f"op {name!r}"
    seg_lists = [self.as_segs(av, axis, length, where) for av in avs]
    out = []
    for n, parts in _refine(seg_lists):
      zs = [s.zero for i, s in enumerate(parts) if i in zero_from]
      if kind == "top" or not zs:
        zero = NEVER
      elif kind == "first":
        zero = zs[0]
      else:
        zero = zs[0]
        for z in zs[1:]:
          zero = dnf_and(zero, z) if kind == "and" else dnf_or(zero, z)
      chans = [s.chan for s in parts if s.chan is not None]
      if chans:
        rep = chans[0]
        for c in chans[1:]:
          self.link(rep, c, n, where)
        for s in parts:
          if s.fixed:
            self.poison(rep[0], f"{where}: combined with channels that cannot be cut "
                                "(an input or an ungrouped activation)")
          for atom in s.deps:
            self.attach(rep, n, atom, where)
        out.append(Seg(n, rep, zero))
      else:
        deps = frozenset().union(*(s.deps for s in parts))
        fixed = any(s.fixed for s in parts)
        if fixed:  # these parameter slices now act on channels nobody removes
          for dep_leaf, _, _ in deps:
            self.pin(dep_leaf, f"{where}: applied to channels that are never removed")
        out.append(Seg(n, None, zero, deps, fixed))
    return AV(out_shape, axis, tuple(out), const)

  # --- structure ---------------------------------------------------------------------

  def remap(self, av: AV, out_shape, axis_map: dict, name: str, keep_src: bool = True) -> AV:
    """Moves axes ``in -> axis_map[in]``; axes not in the map disappear."""
    axis = None
    segs = ()
    if av.axis is not None:
      if av.axis in axis_map and out_shape[axis_map[av.axis]] == av.shape[av.axis]:
        axis, segs = axis_map[av.axis], av.segs
      else:
        self.drop(av, f"op {name!r} moves or merges the channel axis")
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
    return AV(tuple(out_shape), axis, segs, const, src, av.zero, av.scalar)

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
    out = self.remap(av, b, axis_map, "reshape")
    # Size-1 output axes are trivially constant; other new axes are not.
    return dataclasses.replace(out, const=out.const | {j for j, m in enumerate(b) if m == 1})

  def broadcast(self, av: AV, out_shape, bdims) -> AV:
    axis_map = {i: d for i, d in enumerate(bdims)}
    out = self.remap(av, out_shape, axis_map, "broadcast_in_dim")
    const = set(out.const) | {j for j in range(len(out_shape)) if j not in bdims}
    const |= {d for i, d in enumerate(bdims) if av.shape[i] == 1}
    return dataclasses.replace(out, const=frozenset(const))

  def reduce(self, av: AV, out_shape, axes, name, zero_preserving) -> AV:
    if av.axis is not None and av.axis in axes:
      self.drop(av, f"op {name!r} reduces over the channel axis")
      return AV(out_shape)
    kept = [i for i in range(len(av.shape)) if i not in axes]
    out = self.remap(av, out_shape, {i: j for j, i in enumerate(kept)}, name, keep_src=False)
    if not zero_preserving:
      out = dataclasses.replace(out, segs=tuple(dataclasses.replace(s, zero=NEVER)
                                                for s in out.segs), zero=False)
    return out

  def window(self, av: AV, out_shape, p, name) -> AV:
    wd, ws, pad = p["window_dimensions"], p["window_strides"], p["padding"]
    bd, wdl = p["base_dilation"], p["window_dilation"]
    a = av.axis
    if a is not None and (wd[a] != 1 or ws[a] != 1 or tuple(pad[a]) != (0, 0)
                          or bd[a] != 1 or wdl[a] != 1):
      self.drop(av, f"op {name!r} pools over the channel axis")
      return AV(out_shape)
    windowed = {i for i in range(len(wd)) if wd[i] != 1 or ws[i] != 1 or tuple(pad[i]) != (0, 0)}
    out = self.remap(av, out_shape, {i: i for i in range(len(av.shape))}, name, keep_src=False)
    # A max over a window that holds at least one real (zero) element is zero.
    exact = _WINDOW[name] == "sum" or (all(b == 1 for b in bd) and all(
        lo < w and hi < w for (lo, hi), w in zip(pad, wd)))
    segs = out.segs if exact else tuple(dataclasses.replace(s, zero=NEVER) for s in out.segs)
    return dataclasses.replace(out, segs=segs, const=out.const - windowed,
                               zero=out.zero and exact)

  def cumulative(self, av: AV, axis, name, zero_preserving) -> AV:
    if av.axis == axis:
      self.drop(av, f"op {name!r} accumulates over the channel axis")
      return AV(av.shape)
    out = self.remap(av, av.shape, {i: i for i in range(len(av.shape))}, name, keep_src=False)
    if not zero_preserving:
      out = dataclasses.replace(out, segs=tuple(dataclasses.replace(s, zero=NEVER)
                                                for s in out.segs), zero=False)
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

  def slice(self, av: AV, out_shape, p) -> AV:
    start, limit, strides = p["start_indices"], p["limit_indices"], p["strides"]
    a = av.axis
    full = tuple(out_shape) == av.shape
    if full:
      return av
    if av.src is not None:
      if av.axis is None:
        self.pin(av.src[0], "slice of a parameter")
      av = dataclasses.replace(av, src=None)
    if a is not None:
      if strides is not None and strides[a] != 1:
        self.drop(av, "strided slice of the channel axis")
        return AV(out_shape)
      segs = _take(av.segs, start[a], limit[a])
      return AV(tuple(out_shape), a, segs, av.const, None, av.zero)
    return AV(tuple(out_shape), const=av.const, zero=av.zero)

  def pad(self, avs, out_shape, config) -> AV:
    av, value = avs
    a = av.axis
    if a is not None and tuple(config[a]) != (0, 0, 0):
      self.drop(av, "pad of the channel axis")
      return AV(out_shape)
    padded = {i for i, c in enumerate(config) if tuple(c) != (0, 0, 0)}
    out = self.remap(av, out_shape, {i: i for i in range(len(av.shape))}, "pad", keep_src=False)
    segs = out.segs if value.zero else tuple(dataclasses.replace(s, zero=NEVER) for s in out.segs)
    return dataclasses.replace(out, segs=segs, const=out.const - padded,
                               zero=out.zero and value.zero)


@dataclasses.dataclass(frozen=True)
class FamilyInfo:
  """One family of linked channel sets, as found by :meth:`Analysis.families`.

  Attributes:
    cids: its channel sets (first = first producer traced).
    size: channels (groups) in the family.
    producers: kernel leaf index of every channel set.
    members: ``(leaf, axis)`` of every state leaf cut in full along ``axis``.
    dependents: ``(leaf, axis, start, length, offset)``: consumer slices, channel
      ``offset + j`` of the family is position ``start + j`` of ``leaf`` on ``axis``.
    reasons: why the family is left ungrouped (empty when it is grouped).
  """

  cids: tuple[int, ...]
  size: int
  producers: tuple[int, ...]
  members: tuple[tuple[int, int], ...]
  dependents: tuple[tuple[int, int, int, int, int], ...]
  reasons: tuple[str, ...]


def _finalize(an: Analysis) -> list[FamilyInfo]:
  # Channel sets cutting the same leaf slice are the same channels.
  for cids in an.members.values():
    first, *rest = sorted(cids)
    for c in rest:
      an.union(first, c)
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
  for leaf, axis, start, n, cid, off in an.dependents:
    if leaf in an.pinned:
      flag(cid, f"{an.paths[leaf]!r} cannot be cut: {an.pinned[leaf]}")

  # Every position of a cut (leaf, axis) must map to one channel of one family.
  cuts: dict[tuple[int, int], set] = {}
  for (leaf, axis), cids in an.members.items():
    for c in cids:
      cuts.setdefault((leaf, axis), set()).add((0, an.sets[c].length, an.find(c), 0))
  for leaf, axis, start, n, cid, off in an.dependents:
    cuts.setdefault((leaf, axis), set()).add((start, n, an.find(cid), off))
  for leaf, axis, start, n in an.fixed_cuts:
    for s0, n0, root, _ in cuts.get((leaf, axis), ()):
      if s0 < start + n and start < s0 + n0:
        flag(root, f"{an.paths[leaf]!r} axis {axis} also takes channels that are never removed "
                   "(e.g. a layer applied to the input and to its own output)")
  for (leaf, axis), entries in cuts.items():
    es = sorted(entries)
    for i, (s1, n1, r1, o1) in enumerate(es):
      for s2, n2, r2, o2 in es[i + 1:]:
        if s2 < s1 + n1 and (r1 != r2 or s1 - o1 != s2 - o2):
          why = f"{an.paths[leaf]!r} axis {axis} would be cut by overlapping channel sets"
          flag(r1, why)
          flag(r2, why)

  member_keys: dict[int, set] = {}
  for (leaf, axis), cids in an.members.items():
    for c in cids:
      member_keys.setdefault(an.find(c), set()).add((leaf, axis))
  for cid, off, n, zero, consumer in an.uses:
    root = an.find(cid)
    keys = member_keys.get(root, set())
    ok = any(all((leaf, axis) in keys and start == off for leaf, axis, start in alt)
             for alt in zero)
    if not ok:
      flag(cid, f"not zero-invariant at the input of {an.paths[consumer]!r}: the channel can be "
                "nonzero with the group zero (a constant, a statistic or a non-zero-preserving op "
                "in between)")

  by_root: dict[int, list[int]] = {}
  for c in range(len(an.sets)):
    by_root.setdefault(an.find(c), []).append(c)
  out = []
  for root in sorted(by_root):
    cids = tuple(by_root[root])
    members = tuple(sorted(member_keys.get(root, ())))
    deps = tuple(sorted({(leaf, axis, start, n, off) for leaf, axis, start, n, cid, off
                         in an.dependents if an.find(cid) == root}))
    why = list(dict.fromkeys(reasons.get(root, [])))
    if not why and not any(an.is_param[leaf] for leaf, _ in members):
      why.append("no nnx.Param among the leaves it would cut")
    out.append(FamilyInfo(cids, an.sets[root].length, tuple(an.sets[c].producer for c in cids),
                          members, deps, tuple(why)))
  return out


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

