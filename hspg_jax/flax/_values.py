"""Abstract values of the channel dataflow: segments, zero conditions, cuts."""

from __future__ import annotations

import dataclasses


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
  # Channels of a value we cannot cut (an untracked activation); a string says why.
  fixed: bool | str = False
  true: DNF = NEVER  # a boolean segment is True where these hold (a comparison)
  lost: str | None = None  # what made the channel nonzero with its group zero (messages)

  def sub(self, i: int, n: int) -> Seg:
    chan = None if self.chan is None else (self.chan[0], self.chan[1] + i)
    return dataclasses.replace(self, length=n, chan=chan, zero=_shift_dnf(self.zero, i),
                               deps=_shift_atoms(self.deps, i), true=_shift_dnf(self.true, i))


@dataclasses.dataclass(frozen=True)
class AV:
  """Abstract value of one jaxpr variable."""

  shape: tuple[int, ...]
  axis: int | None = None
  segs: tuple[Seg, ...] = ()
  const: frozenset = frozenset()  # axes along which the value is constant
  src: tuple[int, tuple] | None = None  # a view of state leaf: (leaf, leaf axis per axis)
  zero: bool = False  # exactly zero everywhere
  scalar: float | None = None  # value of a constant that is the same everywhere
  # (outer, inner): the tracked axis is a flattened (outer, channels, inner) block,
  # e.g. (H * W, 1) after reshaping NHWC activations to (N, H * W * C).
  layout: tuple[int, int] | None = None
  mixed: frozenset = frozenset()  # (cid, why): a statistic across those channels flows in

  def is_const(self, a: int) -> bool:
    return len(self.shape) == 0 or self.shape[a] == 1 or a in self.const

  @property
  def has_chan(self) -> bool:
    return any(s.chan is not None for s in self.segs)

  @property
  def width(self) -> int:
    """Channels along the tracked axis (its size, unless flattened)."""
    return sum(s.length for s in self.segs)


@dataclasses.dataclass(frozen=True)
class Cut:
  """Positions ``start .. start + length`` of ``leaf`` along ``axis`` follow channels.

  ``cid`` is None for channels that are never removed; otherwise position
  ``start + j`` is channel ``offset + j`` of channel set ``cid``. With a layout,
  the leaf axis is viewed as ``(outer, mid, inner)`` and positions index
  ``mid``. ``tied`` cuts come from a grouped conv, whose groups share the
  kernel's input positions (see ``Analysis.ties``).
  """

  leaf: int
  axis: int
  start: int
  length: int
  cid: int | None
  offset: int = 0
  layout: tuple[int, int, int] | None = None  # (outer, mid, inner)
  tied: bool = False


def seg_starts(segs):
  start = 0
  for s in segs:
    yield start, s
    start += s.length


def take(segs, lo, hi):
  """Sub-segments covering ``[lo, hi)``."""
  out = []
  for start, s in seg_starts(segs):
    a, b = max(lo, start), min(hi, start + s.length)
    if a < b:
      out.append(s.sub(a - start, b - a))
  return tuple(out)


def refine(seg_lists):
  """Cuts every list at the union of boundaries -> [(length, [seg per list])]."""
  bounds = set()
  for segs in seg_lists:
    for start, s in seg_starts(segs):
      bounds.update((start, start + s.length))
  bounds = sorted(bounds)
  return [(b - a, [take(segs, a, b)[0] for segs in seg_lists])
          for a, b in zip(bounds[:-1], bounds[1:])]


def forget_zero(av: AV, why: str) -> AV:
  segs = tuple(dataclasses.replace(s, zero=NEVER, true=NEVER,
                                   lost=why if s.zero != NEVER else s.lost) for s in av.segs)
  return dataclasses.replace(av, segs=segs, zero=False)
