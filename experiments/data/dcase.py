"""DCASE Task 1 data sets from the user's files: layout readers and validation.

Two on-disk layouts are understood; any data set written in one of them (later
DCASE years, the built-in synthetic set, the user's own recordings) loads through
:func:`load` by pointing at its root:

``dcase2017`` (TUT Acoustic Scenes 2017)::

  root/meta.txt                       audio/b020_90_100.wav<TAB>beach<TAB>b020  (no header)
  root/evaluation_setup/fold{N}_train.txt      path<TAB>label
  root/evaluation_setup/fold{N}_evaluate.txt   path<TAB>label
  root/evaluation_setup/fold{N}_test.txt       path
  root/audio/*.wav

``dcase2018`` (TUT Urban Acoustic Scenes 2018, Task 1A)::

  root/meta.csv    filename<TAB>scene_label<TAB>identifier<TAB>source_label  (header)
  root/evaluation_setup/fold1_{train,evaluate,test}.txt   (no header)
  root/audio/*.wav

Fold files may have one column (path) or more (path, label, ...); an optional
``filename`` header row and the ``.csv`` extension of later DCASE years are
accepted. A fold file's label must agree with the meta file. Evaluation sets
without folds (``evaluation_setup/test.txt``) load with ``fold=None``.

Every problem names the file and the line. By default all problems are gathered
and raised together as one :class:`DataError`; with ``on_error="skip"`` the
affected clips are dropped, counted in :attr:`DcaseDataset.report` and a warning
says how many. Structural problems (no meta file, a missing or empty split) are
always errors: a data set is never silently shorter than its files say.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "AudioSpec",
    "Clip",
    "DataError",
    "DcaseDataset",
    "KNOWN_CLASSES",
    "LoadReport",
    "Problem",
    "SPLITS",
    "detect_layout",
    "load",
]

KNOWN_CLASSES: dict[str, tuple[str, ...]] = {
    "dcase2017": (
        "beach", "bus", "cafe/restaurant", "car", "city_center", "forest_path",
        "grocery_store", "home", "library", "metro_station", "office", "park",
        "residential_area", "train", "tram"),
    "dcase2018": (
        "airport", "shopping_mall", "metro_station", "street_pedestrian",
        "public_square", "street_traffic", "tram", "bus", "metro", "park"),
}

META_FILES = {"dcase2017": "meta.txt", "dcase2018": "meta.csv"}
SPLITS = ("train", "evaluate", "test")
_REQUIRED_SPLITS = ("train", "evaluate")
_HEADER_2018 = ("filename", "scene_label")
_ON_ERROR = ("raise", "skip")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One thing wrong with the data: where it is and what it is."""

  file: str
  line: int | None
  message: str

  def __str__(self):
    where = f"{self.file}:{self.line}" if self.line is not None else self.file
    return f"{where}: {self.message}"


class DataError(ValueError):
  """Raised for bad input; ``problems`` lists every :class:`Problem` found."""

  def __init__(self, problems: Sequence[Problem] | Problem, hint: str = ""):
    if isinstance(problems, Problem):
      problems = [problems]
    self.problems = list(problems)
    lines = [str(p) for p in self.problems[:25]]
    if len(self.problems) > 25:
      lines.append(f"... and {len(self.problems) - 25} more")
    head = (f"{len(self.problems)} problem(s) in the data set:\n  " if len(self.problems) > 1
            else "")
    msg = head + "\n  ".join(lines)
    if hint:
      msg += f"\n{hint}"
    super().__init__(msg)


@dataclasses.dataclass(frozen=True)
class AudioSpec:
  """What every clip must look like; None fields are inferred from the data.

  Inference takes the most common value over all clips, so one odd file stands
  out against the rest ("sample rate 44100 Hz, expected 48000 Hz").

  Attributes:
    sample_rate: Hz.
    channels: Channel count.
    duration: Seconds.
    duration_tolerance: Allowed relative deviation of the duration.
  """

  sample_rate: int | None = None
  channels: int | None = None
  duration: float | None = None
  duration_tolerance: float = 0.01


@dataclasses.dataclass(frozen=True)
class Clip:
  """One audio clip listed in the meta file.

  Attributes:
    path: Path as written in the meta file, relative to the root.
    file: Absolute path of the audio file.
    label: Scene label (None for unlabelled test lists).
    identifier: Recording location / session id (clips sharing it must not be
      split between train and evaluation).
    source_label: Recording device (DCASE2018+), or None.
    line: Line of the meta file the clip comes from (1-based).
  """

  path: str
  file: Path
  label: str | None
  identifier: str | None
  source_label: str | None
  line: int


@dataclasses.dataclass
class LoadReport:
  """What ``on_error="skip"`` left out, and why."""

  skipped: list[Problem] = dataclasses.field(default_factory=list)
  dropped_from_splits: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def summary(self) -> str:
    if not self.skipped:
      return "no clips skipped"
    drops = ", ".join(f"{k}: -{v}" for k, v in self.dropped_from_splits.items() if v)
    return (f"skipped {len(self.skipped)} problem line(s) (on_error='skip')"
            + (f"; split entries dropped: {drops}" if drops else "")
            + "".join(f"\n  {p}" for p in self.skipped[:25]))


@dataclasses.dataclass
class DcaseDataset:
  """A validated data set: class list, clips and the splits of one fold.

  Attributes:
    root: Data set root.
    layout: ``"dcase2017"`` or ``"dcase2018"``.
    classes: Class names; a label's index in this tuple is its integer label.
    fold: Fold number, or None for fold-less evaluation sets.
    clips: Valid clips of the meta file, by their meta path.
    splits: ``{"train": [...], "evaluate": [...], "test": [...]}`` lists of clips
      ("test" only when the fold has a test list).
    audio: The audio spec every clip was checked against (None if unchecked).
    report: What was skipped with ``on_error="skip"``.
  """

  root: Path
  layout: str
  classes: tuple[str, ...]
  fold: int | None
  clips: dict[str, Clip]
  splits: dict[str, list[Clip]]
  audio: AudioSpec | None
  report: LoadReport

  def files(self, split: str) -> list[Path]:
    """Absolute audio paths of a split, in fold-file order."""
    return [c.file for c in self._split(split)]

  def labels(self, split: str) -> np.ndarray:
    """Integer labels (indices into ``classes``) of a split, int32."""
    index = {c: i for i, c in enumerate(self.classes)}
    return np.array([index[c.label] for c in self._split(split)], np.int32)

  def _split(self, split: str) -> list[Clip]:
    if split not in self.splits:
      raise KeyError(f"{self.root}: no split {split!r} (have {sorted(self.splits)})")
    return self.splits[split]

  def summary(self) -> str:
    sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
    fold = f"fold {self.fold}" if self.fold is not None else "no folds"
    return (f"{self.root} ({self.layout} layout, {len(self.classes)} classes, "
            f"{len(self.clips)} clips, {fold}: {sizes})")


def detect_layout(root) -> str:
  """``"dcase2017"`` if ``root/meta.txt`` exists, ``"dcase2018"`` for ``meta.csv``."""
  root = Path(root)
  if not root.is_dir():
    raise DataError(Problem(str(root), None, "data root is not a directory"))
  found = [layout for layout, name in META_FILES.items() if (root / name).is_file()]
  if not found:
    raise DataError(Problem(str(root), None,
                            "no meta.txt (DCASE2017 layout) or meta.csv (DCASE2018 layout)"))
  if len(found) > 1:
    raise DataError(Problem(str(root), None,
                            "both meta.txt and meta.csv exist; pass layout= to choose"))
  return found[0]


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
  """(line number, tab-separated fields) for every non-blank line."""
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise DataError(Problem(str(path), _text_line(path, e.start), f"not UTF-8 text: {e}")) from e
  rows = []
  for n, raw in enumerate(text.splitlines(), start=1):
    line = raw.strip("\r\n")
    if not line.strip():
      continue
    rows.append((n, [f.strip() for f in line.split("\t")]))
  return rows


def _text_line(path: Path, byte_offset: int) -> int:
  """1-based line of a byte offset (for decode errors)."""
  return path.read_bytes()[:byte_offset].count(b"\n") + 1


def _bad_path(rel: str) -> str | None:
  p = Path(rel)
  if p.is_absolute() or ".." in p.parts:
    return f"path {rel!r} must be relative to the data root and stay inside it"
  return None


def _field(fields: list[str], index: int | None) -> str | None:
  return fields[index] if index is not None and index < len(fields) else None


def _read_meta(root: Path, layout: str, problems: list[Problem]) -> list[Clip]:
  meta = root / META_FILES[layout]
  rows = _read_rows(meta)
  if not rows:
    raise DataError(Problem(str(meta), 1, "meta file is empty"))
  cols = {"filename": 0, "scene_label": 1, "identifier": 2, "source_label": None}
  if layout == "dcase2018":
    n, header = rows[0]
    if tuple(header[:2]) != _HEADER_2018:
      raise DataError(Problem(str(meta), n, f"expected a header starting with "
                              f"'filename<TAB>scene_label', got {header[:2]}"))
    cols = {k: (header.index(k) if k in header else None) for k in cols}
    rows = rows[1:]
    min_fields = len(header)
  else:
    if rows[0][1][0] == "filename":  # tolerate a header row
      rows = rows[1:]
    min_fields = 2
  clips, seen = [], {}
  for n, fields in rows:
    if len(fields) < min_fields:
      problems.append(Problem(str(meta), n, f"expected at least {min_fields} tab-separated "
                              f"fields, got {len(fields)}: {fields}"))
      continue
    rel = fields[cols["filename"]]
    bad = _bad_path(rel)
    if bad:
      problems.append(Problem(str(meta), n, bad))
      continue
    if rel in seen:
      problems.append(Problem(str(meta), n, f"{rel} listed twice (first on line {seen[rel]})"))
      continue
    seen[rel] = n
    label = _field(fields, cols["scene_label"])
    if not label:
      problems.append(Problem(str(meta), n, f"{rel}: empty scene label"))
      continue
    clips.append(Clip(path=rel, file=root / rel, label=label,
                      identifier=_field(fields, cols["identifier"]),
                      source_label=_field(fields, cols["source_label"]), line=n))
  return clips


def _resolve_classes(classes, layout: str, clips: list[Clip]) -> tuple[str, ...]:
  if isinstance(classes, str):
    if classes not in KNOWN_CLASSES:
      raise ValueError(f"unknown class list {classes!r}; known: {sorted(KNOWN_CLASSES)}")
    return KNOWN_CLASSES[classes]
  if classes is not None:
    classes = tuple(classes)
    if len(set(classes)) != len(classes):
      raise ValueError(f"duplicate names in classes={classes}")
    return classes
  labels = sorted({c.label for c in clips})
  known = KNOWN_CLASSES[layout]
  # The known list when (nearly) every label is in it: then a label outside it
  # is a typo worth an error, not a new class. Otherwise the data defines them.
  if labels and sum(lab in known for lab in labels) >= 0.8 * len(labels):
    return known
  return tuple(labels)


def _fold_file(setup: Path, fold: int | None, split: str) -> Path | None:
  stem = f"fold{fold}_{split}" if fold is not None else split
  for ext in (".txt", ".csv"):
    if (setup / (stem + ext)).is_file():
      return setup / (stem + ext)
  return None


def _read_fold(path: Path, clips: dict[str, Clip], classes: tuple[str, ...],
               problems: list[Problem]) -> list[tuple[int, str]]:
  """(line, meta path) for every valid row of a fold file."""
  rows = _read_rows(path)
  if rows and rows[0][1][0] == "filename":
    rows = rows[1:]
  out, seen = [], {}
  class_set = set(classes)
  for n, fields in rows:
    rel = fields[0]
    if rel in seen:
      problems.append(Problem(str(path), n, f"{rel} listed twice (first on line {seen[rel]})"))
      continue
    seen[rel] = n
    clip = clips.get(rel)
    if clip is None:
      problems.append(Problem(str(path), n, f"{rel} is not in the meta file"))
      continue
    if len(fields) > 1 and fields[1]:
      label = fields[1]
      if label not in class_set:
        problems.append(Problem(str(path), n, f"label {label!r} is not in the class list "
                                f"{list(classes)}"))
        continue
      if label != clip.label:
        problems.append(Problem(str(path), n, f"{rel}: label {label!r} disagrees with the "
                                f"meta file ({clip.label!r} on line {clip.line})"))
        continue
    out.append((n, rel))
  return out


def _wav_truncation(path: Path) -> str | None:
  """A message if a RIFF/WAVE file holds fewer data bytes than its header says.

  libsndfile silently reports only the frames present, so a truncated copy
  would otherwise look like a shorter clip.
  """
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      head = f.read(12)
      if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
      pos = 12
      while pos + 8 <= size:
        f.seek(pos)
        cid, csize = struct.unpack("<4sI", f.read(8))
        if cid == b"data":
          have = size - pos - 8
          if csize != 0xFFFFFFFF and have < csize:
            return f"truncated: header announces {csize} data bytes, file holds {have}"
          return None
        pos += 8 + csize + (csize & 1)
  except OSError:
    return None
  return None


def _probe_audio(clip: Clip) -> tuple[Clip, tuple[int, int, int] | None, str | None]:
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  if not clip.file.is_file():
    return clip, None, f"{clip.path}: audio file not found ({clip.file})"
  try:
    info = sf.info(str(clip.file))
  except Exception as e:  # pylint: disable=broad-except  # libsndfile errors vary by format
    return clip, None, f"{clip.path}: unreadable audio: {e}"
  trunc = _wav_truncation(clip.file)
  if trunc:
    return clip, None, f"{clip.path}: {trunc}"
  if info.frames <= 0:
    return clip, None, f"{clip.path}: no audio frames"
  return clip, (int(info.samplerate), int(info.channels), int(info.frames)), None


def _check_audio(clips: list[Clip], spec: AudioSpec, meta: Path, problems: list[Problem],
                 progress: bool) -> AudioSpec:
  from concurrent.futures import ThreadPoolExecutor  # pylint: disable=g-import-not-at-top

  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  # Header reads are I/O bound: threads hide the latency of slow disks.
  with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 4)) as pool:
    results = list(tqdm(pool.map(_probe_audio, clips), total=len(clips), desc="checking audio",
                        unit="clip", disable=not progress or len(clips) < 200))
  found = [(c, info) for c, info, err in results if info is not None]
  for clip, _, err in results:
    if err:
      problems.append(Problem(str(meta), clip.line, err))

  def majority(values):
    return collections.Counter(values).most_common(1)[0][0] if values else None

  sr = spec.sample_rate or majority([i[0] for _, i in found])
  ch = spec.channels or majority([i[1] for _, i in found])
  if spec.duration is not None:
    dur = spec.duration
  else:
    frames = majority([i[2] for _, i in found if i[0] == sr])
    dur = frames / sr if frames else None
  resolved = dataclasses.replace(spec, sample_rate=sr, channels=ch, duration=dur)

  def why(given):
    return "" if given is not None else " (the most common value in the data)"

  for clip, (csr, cch, cframes) in found:
    if csr != sr:
      problems.append(Problem(str(meta), clip.line, f"{clip.path}: sample rate {csr} Hz, "
                              f"expected {sr} Hz{why(spec.sample_rate)}"))
    elif cch != ch:
      problems.append(Problem(str(meta), clip.line, f"{clip.path}: {cch} channel(s), "
                              f"expected {ch}{why(spec.channels)}"))
    elif dur and abs(cframes / csr - dur) > spec.duration_tolerance * dur:
      problems.append(Problem(str(meta), clip.line, f"{clip.path}: {cframes / csr:.3f} s long, "
                              f"expected {dur:.3f} s{why(spec.duration)} (truncated?)"))
  return resolved


def load(root, *, layout: str | None = None, fold: int | None = 1,
         classes: str | Sequence[str] | None = None, on_error: str = "raise",
         check_audio: bool = True, audio: AudioSpec | None = None,
         progress: bool = True) -> DcaseDataset:
  """Reads and validates a data set in the DCASE2017 or DCASE2018 layout.

  Args:
    root: Data set root (the directory holding ``meta.txt`` or ``meta.csv``).
    layout: ``"dcase2017"`` or ``"dcase2018"``; None detects it from the meta file.
    fold: Which ``evaluation_setup/fold{N}_*`` files to read; None reads the
      fold-less ``evaluation_setup/{train,evaluate,test}.txt`` of evaluation sets.
    classes: The class list: a sequence of names, a known set's name
      (``"dcase2017"``, ``"dcase2018"``), or None to use the layout's known list
      when (nearly) all labels belong to it and the sorted labels otherwise.
    on_error: ``"raise"`` (default) gathers every problem into one
      :class:`DataError`; ``"skip"`` drops the affected clips, records them in
      ``report`` and warns with the count.
    check_audio: Open every audio header (existence, readability, truncation,
      sample rate, channels, duration). Costs a file open per clip.
    audio: Expected audio properties; unset fields are inferred (majority).
    progress: Show a progress bar while checking many files.

  Returns:
    A :class:`DcaseDataset`.

  Raises:
    DataError: naming the file and line of each problem.
  """
  if on_error not in _ON_ERROR:
    raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
  root = Path(root).expanduser().resolve()
  layout = layout or detect_layout(root)
  if layout not in META_FILES:
    raise ValueError(f"layout must be one of {sorted(META_FILES)}, got {layout!r}")
  meta = root / META_FILES[layout]
  if not meta.is_file():
    raise DataError(Problem(str(meta), None, f"meta file missing ({layout} layout)"))

  problems: list[Problem] = []  # each one costs a clip (or a split row)
  clips = _read_meta(root, layout, problems)
  class_list = _resolve_classes(classes, layout, clips)
  class_set = set(class_list)
  valid = []
  for clip in clips:
    if clip.label not in class_set:
      problems.append(Problem(str(meta), clip.line, f"{clip.path}: label {clip.label!r} is not "
                              f"in the class list {list(class_list)}"))
    else:
      valid.append(clip)
  spec = None
  if check_audio:
    spec = _check_audio(valid, audio or AudioSpec(), meta, problems, progress)
  bad_lines = {p.line for p in problems if p.file == str(meta)}
  by_path = {c.path: c for c in valid if c.line not in bad_lines}

  setup = root / "evaluation_setup"
  split_rows, structural = {}, []
  all_meta = {c.path: c for c in clips}  # rows naming skipped clips are dropped, not "unknown"
  for split in SPLITS:
    path = _fold_file(setup, fold, split)
    if path is None:
      # Development folds need train and evaluate; a fold-less evaluation set
      # needs at least one list (checked below).
      if fold is not None and split in _REQUIRED_SPLITS:
        have = sorted(p.name for p in setup.iterdir()) if setup.is_dir() else []
        stem = f"fold{fold}_{split}" if fold is not None else split
        structural.append(Problem(str(setup / f"{stem}.txt"), None,
                                  f"split file missing (evaluation_setup holds {have}; "
                                  "fold=None reads fold-less evaluation sets)"))
      continue
    split_rows[split] = (path, _read_fold(path, all_meta, class_list, problems))
  if fold is None and not split_rows:
    structural.append(Problem(str(setup), None, "no train.txt, evaluate.txt or test.txt "
                              "(pass fold=N for development sets with fold files)"))
  if structural:
    raise DataError(structural + problems)

  if problems and on_error == "raise":
    raise DataError(sorted(problems, key=lambda p: (p.file, p.line or 0)),
                    hint="Fix the files, or pass on_error='skip' to leave these clips out "
                    "(they are counted and reported).")
  report = LoadReport(skipped=problems)
  splits = {}
  for split, (path, rows) in split_rows.items():
    kept = [by_path[rel] for _, rel in rows if rel in by_path]
    report.dropped_from_splits[split] = len(rows) - len(kept)
    if not kept:
      why = (f"all {len(rows)} entries were skipped" if rows else "it lists no clips")
      # The skipped problems go along: they are why the split is empty.
      raise DataError([Problem(str(path), 1, f"split {split!r} is empty: {why}")] + problems)
    splits[split] = kept
  if problems:
    warnings.warn(f"{root}: {report.summary()}", stacklevel=2)
  return DcaseDataset(root=root, layout=layout, classes=class_list, fold=fold, clips=by_path,
                      splits=splits, audio=spec, report=report)
