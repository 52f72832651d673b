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
``filename`` header row, a UTF-8 byte-order mark and the ``.csv`` extension of
later DCASE years are accepted. Every file is tab-separated; a file whose fields
are separated by commas or spaces is named as such, once. A fold file's label
must agree with the meta file. Evaluation sets without folds
(``evaluation_setup/test.txt``) load with ``fold=None``.

Splits. A development fold has two labelled splits, ``train`` and ``evaluate``
(the validation fold: accuracy on it is *validation* accuracy). The fold's
``test`` list is not a split: in DCASE development sets it repeats the evaluate
clips without labels (it is what a challenge system is asked to label). It is
read, checked and kept in :attr:`DcaseDataset.test_list`, never mixed into the
training or evaluation splits. A clip, or a recording identifier (location), on
both the train and the evaluate side is an error by default
(``overlap="warn"`` accepts it with a warning).

Every problem names the file and the line, the meta file's problems first. By
default all problems are gathered and raised together as one :class:`DataError`;
with ``on_error="skip"`` the affected clips are dropped, counted in
:attr:`DcaseDataset.report` and one warning says how many. Structural problems
(no meta file, a missing or empty split, a file with the wrong separator) are
always errors: a data set is never silently shorter than its files say.

Audio. Every clip is checked against the set's own majority format (so one odd
file stands out), and the set as a whole against the layout's documented format
(:data:`DOCUMENTED_AUDIO`: 44.1 kHz for DCASE2017, 48 kHz for DCASE2018, stereo,
10 s); a set that differs as a whole gets one :class:`AudioFormatWarning`. A set
that declares its own format (the synthetic set's ``synthetic.json``, or
``audio=AudioSpec(...)``) is compared with that instead.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "AudioFormatWarning",
    "AudioSpec",
    "Clip",
    "DOCUMENTED_AUDIO",
    "DataError",
    "DataWarning",
    "DcaseDataset",
    "KNOWN_CLASSES",
    "LoadReport",
    "Problem",
    "SPLITS",
    "SkippedDataWarning",
    "SplitOverlapWarning",
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
# The labelled splits a fold provides. The fold's unlabelled "test" list is kept
# apart (DcaseDataset.test_list), see the module docstring.
SPLITS = ("train", "evaluate")
TEST_LIST = "test"
_HEADER_2018 = ("filename", "scene_label")
_ON_ERROR = ("raise", "skip")
_OVERLAP = ("raise", "warn")
_SEPARATORS = ((",", "commas"), (";", "semicolons"), (None, "spaces"))


class DataWarning(UserWarning):
  """Base class of the data layer's warnings (filter them by category)."""


class SkippedDataWarning(DataWarning):
  """``on_error="skip"`` left clips out (the message counts and lists them)."""


class AudioFormatWarning(DataWarning):
  """The set as a whole differs from its layout's documented audio format."""


class SplitOverlapWarning(DataWarning):
  """Train and evaluate share clips or recordings (only with ``overlap="warn"``)."""


@dataclasses.dataclass(frozen=True)
class Problem:
  """One thing wrong with the data: where it is and what it is."""

  file: str
  line: int | None
  message: str

  def __str__(self):
    where = f"{self.file}:{self.line}" if self.line is not None else self.file
    return f"{where}: {self.message}"


# What to do about a DataError, in the words of the Python API and of the CLI.
_REMEDIES = {
    "skip": ("Fix the files, or pass on_error='skip' to leave these clips out (they are "
             "counted and reported).",
             "Fix the files, or pass --skip-bad to leave these clips out (they are counted "
             "and reported)."),
    "fold_none": ("Fold-less evaluation sets (evaluation_setup/test.txt) load with fold=None.",
                  "Fold-less evaluation sets (evaluation_setup/test.txt) load with --fold none."),
    "fold_n": ("Development sets load a fold's files with fold=N (N >= 1).",
               "Development sets load a fold's files with --fold N (N >= 1)."),
    "overlap": ("Pass overlap='warn' if sharing clips or recordings between train and "
                "evaluate is intended.",
                "Pass --allow-overlap if sharing clips or recordings between train and "
                "evaluate is intended."),
}


class DataError(ValueError):
  """Raised for bad input; ``problems`` lists every :class:`Problem` found.

  Attributes:
    problems: Every problem, each naming its file and line.
    hint: Free text appended to the message.
    remedies: Keys of the remedies the message suggests; :meth:`message` words
      them for the Python API (``on_error='skip'``) or the command line
      (``--skip-bad``).
  """

  def __init__(self, problems: Sequence[Problem] | Problem, hint: str = "",
               remedies: Sequence[str] = ()):
    if isinstance(problems, Problem):
      problems = [problems]
    self.problems = list(problems)
    self.hint = hint
    self.remedies = tuple(remedies)
    super().__init__(self.message())

  def message(self, cli: bool = False) -> str:
    """The full message; ``cli=True`` names command-line flags in the advice."""
    lines = [str(p) for p in self.problems[:25]]
    if len(self.problems) > 25:
      lines.append(f"... and {len(self.problems) - 25} more")
    head = (f"{len(self.problems)} problem(s) in the data set:\n  " if len(self.problems) > 1
            else "")
    msg = head + "\n  ".join(lines)
    advice = [self.hint] if self.hint else []
    advice += [_REMEDIES[r][int(cli)] for r in self.remedies]
    return "\n".join([msg] + advice)


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

  def describe(self) -> str:
    parts = []
    if self.sample_rate is not None:
      parts.append(f"{self.sample_rate} Hz")
    if self.channels is not None:
      parts.append(f"{self.channels} channel(s)")
    if self.duration is not None:
      parts.append(f"{self.duration:g} s")
    return ", ".join(parts)


# The formats the DCASE task descriptions document for their development sets.
DOCUMENTED_AUDIO = {
    "dcase2017": AudioSpec(sample_rate=44100, channels=2, duration=10.0),
    "dcase2018": AudioSpec(sample_rate=48000, channels=2, duration=10.0),
}
_DOCUMENTED_NAME = {"dcase2017": "TUT Acoustic Scenes 2017",
                    "dcase2018": "TUT Urban Acoustic Scenes 2018"}


@dataclasses.dataclass(frozen=True)
class Clip:
  """One audio clip listed in the meta file.

  Attributes:
    path: Path as written in the meta file, relative to the root.
    file: Absolute path of the audio file.
    label: Scene label.
    identifier: Recording location / session id (clips sharing it must not be
      split between train and evaluation).
    source_label: Recording device (DCASE2018+), or None.
    line: Line of the meta file the clip comes from (1-based).
    meta: The meta file (for problems about the clip found later, e.g. while
      computing its features).
  """

  path: str
  file: Path
  label: str | None
  identifier: str | None
  source_label: str | None
  line: int
  meta: Path | None = None

  def problem(self, message: str) -> Problem:
    """A problem about this clip, located at its meta-file line."""
    return Problem(str(self.meta) if self.meta else str(self.file),
                   self.line if self.meta else None, f"{self.path}: {message}")


@dataclasses.dataclass
class LoadReport:
  """What ``on_error="skip"`` left out, and why.

  Attributes:
    skipped: One :class:`Problem` per bad line (a bad meta row counts once, even
      when fold files name its clip).
    dropped_from_splits: Rows removed from each list, for any reason (their
      own problem, a skipped clip, an overlap); keys ``"train"``,
      ``"evaluate"`` and ``"test_list"``.
  """

  skipped: list[Problem] = dataclasses.field(default_factory=list)
  dropped_from_splits: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def summary(self) -> str:
    if not self.skipped:
      return "no clips skipped"
    drops = ", ".join(f"{k}: -{v}" for k, v in self.dropped_from_splits.items() if v)
    return (f"skipped {len(self.skipped)} problem line(s)"
            + (f"; entries dropped from the fold lists: {drops}" if drops else "")
            + "".join(f"\n  {p}" for p in self.skipped[:25])
            + (f"\n  ... and {len(self.skipped) - 25} more" if len(self.skipped) > 25 else ""))


@dataclasses.dataclass
class DcaseDataset:
  """A validated data set: class list, clips and the splits of one fold.

  Attributes:
    root: Data set root.
    layout: ``"dcase2017"`` or ``"dcase2018"``.
    classes: Class names; a label's index in this tuple is its integer label.
    fold: Fold number, or None for fold-less evaluation sets.
    clips: Valid clips of the meta file, by their meta path.
    splits: The labelled splits, ``{"train": [...], "evaluate": [...]}`` (a
      fold-less evaluation set may have only one of them).
    audio: The audio spec every clip was checked against (None if unchecked).
    report: What was skipped with ``on_error="skip"``.
    test_list: The fold's ``test`` list (None if the fold has none). In DCASE
      development folds it repeats the evaluate clips without labels: it is
      not a held-out test set, and it is never part of ``splits``.
  """

  root: Path
  layout: str
  classes: tuple[str, ...]
  fold: int | None
  clips: dict[str, Clip]
  splits: dict[str, list[Clip]]
  audio: AudioSpec | None
  report: LoadReport
  test_list: list[Clip] | None = None

  def files(self, split: str) -> list[Path]:
    """Absolute audio paths of a split, in fold-file order."""
    return [c.file for c in self._split(split)]

  def labels(self, split: str) -> np.ndarray:
    """Integer labels (indices into ``classes``) of a split, int32."""
    index = {c: i for i, c in enumerate(self.classes)}
    return np.array([index[c.label] for c in self._split(split)], np.int32)

  def _split(self, split: str) -> list[Clip]:
    if split not in self.splits:
      more = ""
      if split == TEST_LIST:
        more = ("; the fold's test list is DcaseDataset.test_list (in DCASE development "
                "folds it repeats the evaluate clips without labels: not a test set)")
      raise KeyError(f"{self.root}: no split {split!r} (have {sorted(self.splits)}){more}")
    return self.splits[split]

  @property
  def test_list_is_evaluate(self) -> bool:
    """Whether the test list names exactly the evaluate clips (as in DCASE)."""
    return (self.test_list is not None and "evaluate" in self.splits
            and {c.path for c in self.test_list} == {c.path for c in self.splits["evaluate"]})

  def describe_test_list(self) -> str:
    """What the test list is, in words ("" when the fold has none)."""
    if self.test_list is None:
      return ""
    name = f"fold{self.fold}_test" if self.fold is not None else "test"
    if not self.test_list:
      return f"{name} list is empty"
    if self.test_list_is_evaluate:
      return (f"{name} lists the {len(self.test_list)} evaluate clips again without labels "
              "(not a held-out test set)")
    return f"{name} lists {len(self.test_list)} clips (kept apart from train and evaluate)"

  def summary(self) -> str:
    sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
    fold = f"fold {self.fold}" if self.fold is not None else "no folds"
    test = self.describe_test_list()
    return (f"{self.root} ({self.layout} layout, {len(self.classes)} classes, "
            f"{len(self.clips)} clips, {fold}: {sizes}{'; ' + test if test else ''})")


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


def _read_lines(path: Path) -> list[tuple[int, str]]:
  """(line number, text) for every non-blank line; a UTF-8 byte-order mark is dropped."""
  try:
    # utf-8-sig: spreadsheet programs and Windows editors start files with a BOM,
    # which would otherwise glue itself to the first path or header field.
    text = path.read_text(encoding="utf-8-sig")
  except UnicodeDecodeError as e:
    raise DataError(Problem(str(path), _text_line(path, e.start), f"not UTF-8 text: {e}")) from e
  return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _fields(line: str) -> list[str]:
  return [f.strip() for f in line.split("\t")]


def _text_line(path: Path, byte_offset: int) -> int:
  """1-based line of a byte offset (for decode errors)."""
  return path.read_bytes()[:byte_offset].count(b"\n") + 1


def _wrong_separator(path: Path, lines: list[tuple[int, str]], accept) -> Problem | None:
  """A problem if the whole file is separated by something other than tabs.

  ``accept(fields)`` says whether the fields a separator gives look like a
  valid row. Only files without a single tab qualify, so a stray space in one
  row stays that row's problem.
  """
  if not lines or any("\t" in line for _, line in lines):
    return None
  for sep, name in _SEPARATORS:
    split = [[f.strip() for f in line.split(sep)] for _, line in lines]
    if sum(accept(f) for f in split) >= max(1, 0.8 * len(split)):
      return Problem(str(path), lines[0][0], f"the whole file is separated by {name}, not "
                     "tabs: DCASE meta and fold files are tab-separated (every row of this "
                     "file is unreadable)")
  return None


def _bad_path(rel: str) -> str | None:
  p = Path(rel)
  if p.is_absolute() or ".." in p.parts:
    return f"path {rel!r} must be relative to the data root and stay inside it"
  return None


def _field(fields: list[str], index: int | None) -> str | None:
  return fields[index] if index is not None and index < len(fields) else None


def _read_meta(root: Path, layout: str, problems: list[Problem],
               bad_paths: set[str]) -> list[Clip]:
  """Clips of the meta file; rows with problems are reported and their paths kept
  in ``bad_paths`` (fold rows naming them are consequences, not new problems)."""
  meta = root / META_FILES[layout]
  lines = _read_lines(meta)
  if not lines:
    raise DataError(Problem(str(meta), 1, "meta file is empty"))
  wrong = _wrong_separator(meta, lines, lambda f: len(f) >= 2 and bool(f[0]) and bool(f[1]))
  if wrong:
    raise DataError(wrong)  # the fold files cannot be checked against an unreadable meta file
  rows = [(n, _fields(line)) for n, line in lines]
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
    rel = fields[cols["filename"]] if cols["filename"] < len(fields) else ""
    if len(fields) < min_fields:
      problems.append(Problem(str(meta), n, f"expected at least {min_fields} tab-separated "
                              f"fields, got {len(fields)}: {fields}"))
      bad_paths.add(rel)
      continue
    bad = _bad_path(rel)
    if bad:
      problems.append(Problem(str(meta), n, bad))
      bad_paths.add(rel)
      continue
    if rel in seen:  # the first row stands; only this repetition is bad
      problems.append(Problem(str(meta), n, f"{rel} listed twice (first on line {seen[rel]})"))
      continue
    seen[rel] = n
    label = _field(fields, cols["scene_label"])
    if not label:
      problems.append(Problem(str(meta), n, f"{rel}: empty scene label"))
      bad_paths.add(rel)
      continue
    clips.append(Clip(path=rel, file=root / rel, label=label,
                      identifier=_field(fields, cols["identifier"]) or None,
                      source_label=_field(fields, cols["source_label"]), line=n, meta=meta))
  return clips


def _resolve_classes(classes, layout: str, clips: list[Clip]) -> tuple[str, ...]:
  if isinstance(classes, str):
    if classes not in KNOWN_CLASSES:
      raise ValueError(f"unknown class list {classes!r}; known: {sorted(KNOWN_CLASSES)}")
    return KNOWN_CLASSES[classes]
  if classes is not None:
    classes = tuple(classes)
    if not classes:
      raise ValueError("classes is empty")
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


def _read_fold(path: Path, clips: dict[str, Clip], bad_paths: set[str],
               classes: tuple[str, ...], problems: list[Problem]) -> tuple[int, list]:
  """``(rows in the file, [(line, meta path)] of its valid rows)``.

  Rows naming a clip whose meta row is bad are dropped without a problem of
  their own: the meta row's problem is the root cause and is reported once.
  """
  lines = _read_lines(path)
  rows = [(n, _fields(line)) for n, line in lines]
  if rows and rows[0][1][0] == "filename":
    rows, lines = rows[1:], lines[1:]
  known = set(clips) | bad_paths
  if not any(fields[0] in known for _, fields in rows):
    wrong = _wrong_separator(path, lines, lambda f: f[0] in known)
    if wrong:
      problems.append(wrong)
      return len(rows), []
  out, seen = [], {}
  class_set = set(classes)
  for n, fields in rows:
    rel = fields[0]
    if rel in seen:
      problems.append(Problem(str(path), n, f"{rel} listed twice (first on line {seen[rel]})"))
      continue
    seen[rel] = n
    if rel in bad_paths:
      continue
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
  return len(rows), out


def _overlaps(lists: dict[str, tuple[Path, int, list]], clips: dict[str, Clip]) -> list[Problem]:
  """Evaluate (and test-list) rows whose clip or recording is also in train."""
  if "train" not in lists:
    return []
  train_path, _, train_rows = lists["train"]
  train_line = {rel: n for n, rel in train_rows}
  train_ids = {}
  for n, rel in train_rows:
    ident = clips[rel].identifier
    if ident:
      train_ids.setdefault(ident, (rel, n))
  found = []
  evaluate = {rel for _, rel in lists["evaluate"][2]} if "evaluate" in lists else set()
  for split in ("evaluate", TEST_LIST):
    if split not in lists:
      continue
    path, _, rows = lists[split]
    what = "evaluate split" if split == "evaluate" else "test list"
    for n, rel in rows:
      if split == TEST_LIST and rel in evaluate:
        continue  # reported once, on its evaluate line
      ident = clips[rel].identifier
      if rel in train_line:
        found.append(Problem(str(path), n, f"{rel} is in the train split too "
                             f"({train_path.name}:{train_line[rel]}): the {what} would hold "
                             "a clip the model was trained on"))
      elif ident in train_ids:
        other, m = train_ids[ident]
        found.append(Problem(str(path), n, f"{rel}: recording identifier {ident!r} is in the "
                             f"train split too ({other}, {train_path.name}:{m}); clips of one "
                             f"recording must stay on one side of the split"))
  return found


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
                 bad_paths: set[str], progress: bool) -> AudioSpec:
  from concurrent.futures import ThreadPoolExecutor  # pylint: disable=g-import-not-at-top

  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  # Header reads are I/O bound: threads hide the latency of slow disks.
  with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 4)) as pool:
    results = list(tqdm(pool.map(_probe_audio, clips), total=len(clips), desc="checking audio",
                        unit="clip", disable=not progress or len(clips) < 200))
  found = [(c, info) for c, info, err in results if info is not None]

  def fail(clip, message):
    problems.append(Problem(str(meta), clip.line, message))
    bad_paths.add(clip.path)

  for clip, _, err in results:
    if err:
      fail(clip, err)

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
      fail(clip, f"{clip.path}: sample rate {csr} Hz, expected {sr} Hz{why(spec.sample_rate)}")
    elif cch != ch:
      fail(clip, f"{clip.path}: {cch} channel(s), expected {ch}{why(spec.channels)}")
    elif dur and abs(cframes / csr - dur) > spec.duration_tolerance * dur:
      fail(clip, f"{clip.path}: {cframes / csr:.3f} s long, expected {dur:.3f} s"
           f"{why(spec.duration)} (truncated?)")
  return resolved


def _declared_audio(root: Path) -> AudioSpec | None:
  """The format a generated set declares for itself (the synthetic set's manifest)."""
  from experiments.data import synthetic  # pylint: disable=g-import-not-at-top

  manifest = root / synthetic.MANIFEST
  if not manifest.is_file():
    return None
  try:
    config = json.loads(manifest.read_text(encoding="utf-8"))["config"]
    return AudioSpec(sample_rate=int(config["sample_rate"]), channels=2,
                     duration=float(config["clip_seconds"]))
  except (OSError, ValueError, KeyError, TypeError):
    return None  # not a manifest we understand: compare with the layout's format


def _compare_with_documented(root: Path, layout: str, found: AudioSpec, given: AudioSpec,
                             declared: AudioSpec | None) -> None:
  """One warning when the whole set differs from the format it should have."""
  expected = declared or DOCUMENTED_AUDIO[layout]
  diffs = []
  if given.sample_rate is None and found.sample_rate not in (None, expected.sample_rate):
    diffs.append(f"{found.sample_rate} Hz instead of {expected.sample_rate} Hz")
  if given.channels is None and found.channels not in (None, expected.channels):
    diffs.append(f"{found.channels} channel(s) instead of {expected.channels}")
  if (given.duration is None and found.duration is not None
      and abs(found.duration - expected.duration) > found.duration_tolerance * expected.duration):
    diffs.append(f"{found.duration:.3g} s long instead of {expected.duration:g} s")
  if not diffs:
    return
  if declared:
    whose = f"the format the set declares in its manifest ({expected.describe()})"
    advice = "regenerate it"
  else:
    whose = f"the {layout} layout's documented format ({expected.describe()})"
    advice = (f"fine for your own recordings; for {_DOCUMENTED_NAME[layout]} it means a "
              "converted, resampled or truncated copy")
  warnings.warn(f"{root}: the clips are {', '.join(diffs)}: the set as a whole differs from "
                f"{whose}; {advice}", AudioFormatWarning, stacklevel=3)


def load(root, *, layout: str | None = None, fold: int | None = 1,
         classes: str | Sequence[str] | None = None, on_error: str = "raise",
         check_audio: bool = True, audio: AudioSpec | None = None,
         progress: bool = True, overlap: str = "raise") -> DcaseDataset:
  """Reads and validates a data set in the DCASE2017 or DCASE2018 layout.

  Args:
    root: Data set root (the directory holding ``meta.txt`` or ``meta.csv``).
    layout: ``"dcase2017"`` or ``"dcase2018"``; None detects it from the meta file.
    fold: Which ``evaluation_setup/fold{N}_*`` files to read (N >= 1); None reads
      the fold-less ``evaluation_setup/{train,evaluate,test}.txt`` of evaluation sets.
    classes: The class list: a sequence of names, a known set's name
      (``"dcase2017"``, ``"dcase2018"``), or None to use the layout's known list
      when (nearly) all labels belong to it and the sorted labels otherwise.
    on_error: ``"raise"`` (default) gathers every problem into one
      :class:`DataError`; ``"skip"`` drops the affected clips, records them in
      ``report`` and warns once with the count (:class:`SkippedDataWarning`).
    check_audio: Open every audio header (existence, readability, truncation,
      sample rate, channels, duration). Costs a file open per clip.
    audio: Expected audio properties; unset fields are inferred (majority), and
      set ones count as the set's declared format (no
      :class:`AudioFormatWarning` about them).
    progress: Show a progress bar while checking many files.
    overlap: A clip, or a recording identifier, in both train and evaluate (or
      in train and the test list): ``"raise"`` (default) treats each such row
      as a problem (dropped with ``on_error="skip"``); ``"warn"`` keeps them
      and warns (:class:`SplitOverlapWarning`).

  Returns:
    A :class:`DcaseDataset`.

  Raises:
    DataError: naming the file and line of each problem, the meta file's first.
  """
  if on_error not in _ON_ERROR:
    raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
  if overlap not in _OVERLAP:
    raise ValueError(f"overlap must be one of {_OVERLAP}, got {overlap!r}")
  if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or fold < 1):
    raise ValueError(f"fold must be a fold number >= 1 or None, got {fold!r}")
  root = Path(root).expanduser().resolve()
  layout = layout or detect_layout(root)
  if layout not in META_FILES:
    raise ValueError(f"layout must be one of {sorted(META_FILES)}, got {layout!r}")
  meta = root / META_FILES[layout]
  if not meta.is_file():
    raise DataError(Problem(str(meta), None, f"meta file missing ({layout} layout)"))

  problems: list[Problem] = []  # each one costs a clip (or a fold-file row)
  bad_paths: set[str] = set()  # meta paths whose row has a problem
  clips = _read_meta(root, layout, problems, bad_paths)
  class_list = _resolve_classes(classes, layout, clips)
  class_set = set(class_list)
  for clip in clips:
    if clip.label not in class_set:
      problems.append(Problem(str(meta), clip.line, f"{clip.path}: label {clip.label!r} is not "
                              f"in the class list {list(class_list)}"))
      bad_paths.add(clip.path)
  spec = None
  if check_audio:
    given = audio or AudioSpec()
    spec = _check_audio([c for c in clips if c.path not in bad_paths], given, meta, problems,
                        bad_paths, progress)
    _compare_with_documented(root, layout, spec, given, _declared_audio(root))
  by_path = {c.path: c for c in clips if c.path not in bad_paths}

  setup = root / "evaluation_setup"
  lists, structural = {}, []
  for split in SPLITS + (TEST_LIST,):
    path = _fold_file(setup, fold, split)
    if path is None:
      # Development folds need train and evaluate; a fold-less evaluation set
      # needs at least one list (checked below). The test list is optional.
      if fold is not None and split in SPLITS:
        have = sorted(p.name for p in setup.iterdir()) if setup.is_dir() else []
        structural.append(Problem(str(setup / f"fold{fold}_{split}.txt"), None,
                                  f"split file missing (evaluation_setup holds {have})"))
      continue
    total, rows = _read_fold(path, by_path, bad_paths, class_list, problems)
    lists[split] = (path, total, rows)
  if fold is None and not lists:
    structural.append(Problem(str(setup), None, "no train.txt, evaluate.txt or test.txt"))
  if structural:
    raise DataError(structural + _ordered(problems, meta, lists),
                    remedies=("fold_none",) if fold is not None else ("fold_n",))

  crossing = _overlaps(lists, by_path)
  if overlap == "raise":
    problems += crossing
  elif crossing:
    warnings.warn(f"{root}: {len(crossing)} row(s) share a clip or a recording with the train "
                  "split (overlap='warn'):\n  " + "\n  ".join(map(str, crossing[:10])),
                  SplitOverlapWarning, stacklevel=2)
  problems = _ordered(problems, meta, lists)
  if problems and on_error == "raise":
    remedies = ("skip", "overlap") if any(p in crossing for p in problems) else ("skip",)
    raise DataError(problems, remedies=remedies)

  dropped_rows = {(p.file, p.line) for p in crossing} if overlap == "raise" else set()
  report = LoadReport(skipped=problems)
  splits, test_list = {}, None
  for split, (path, total, rows) in lists.items():
    kept = [by_path[rel] for n, rel in rows if (str(path), n) not in dropped_rows]
    key = "test_list" if split == TEST_LIST else split
    report.dropped_from_splits[key] = total - len(kept)
    if split == TEST_LIST:
      test_list = kept  # optional and unlabelled: may be empty
      continue
    if not kept:
      why = (f"all {total} entries were skipped" if total else "it lists no clips")
      # The skipped problems go along: they are why the split is empty.
      raise DataError([Problem(str(path), 1, f"split {split!r} is empty: {why}")] + problems)
    splits[split] = kept
  if problems:
    warnings.warn(f"{root}: {report.summary()}", SkippedDataWarning, stacklevel=2)
  return DcaseDataset(root=root, layout=layout, classes=class_list, fold=fold, clips=by_path,
                      splits=splits, audio=spec, report=report, test_list=test_list)


def _ordered(problems: list[Problem], meta: Path, lists: dict) -> list[Problem]:
  """The meta file's problems first (the usual root cause), then each fold file's."""
  rank = {str(meta): 0}
  for i, (path, _, _) in enumerate(lists.values(), start=1):
    rank.setdefault(str(path), i)
  return sorted(problems, key=lambda p: (rank.get(p.file, len(rank)), p.file, p.line or 0))
