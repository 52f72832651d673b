"""TFDS builders for DCASE2017 Task 1 and DCASE2018 Task 1A (manual download).

The archives cannot be downloaded by code (licence click-through, tens of GB),
so both builders read ``dl_manager.manual_dir``, where the user has extracted
them. They write ``array_record`` files that ``tfds.data_source`` and grain read
without TensorFlow; building needs no TensorFlow either (tfds 4.9 serialises
``Tensor``/``ClassLabel``/``Text`` features with numpy + protobuf).

What is stored: the features, not the audio. Decoding, resampling and the STFT
dominate the cost of an epoch (see ``benchmarks/features_throughput.py``); doing
them once at build time, in parallel through the feature cache, leaves the input
pipeline a memory copy per example and keeps librosa out of data-loader workers.
The price is one data set per feature config (``cp_resnet``, ``logmel128``);
raw DCASE audio stays where the user keeps it.

Splits:

* ``dcase2018``: ``train`` and ``evaluate`` of fold 1. ``evaluate`` is the
  validation fold. ``fold1_test.txt`` lists the evaluate clips again without
  labels, so it is not stored; a ``test`` split is written only when the test
  list names clips of its own (never train clips: that is an error).
* ``dcase2017``: ``fold{k}_evaluate`` for k = 1..4. In TUT 2017 the four evaluate
  lists partition the development set and ``fold{k}_train`` is the rest, so the
  train split of fold k is the split expression
  ``"+".join(fold{j}_evaluate for j != k)`` (see :func:`resolve_split`): every clip
  is stored once instead of four times. If the folds of some other data set do not
  partition it, ``fold{k}_train`` splits are written as well. An evaluation set
  extracted next to the development set becomes the ``evaluation`` split.

Per-fold normalisation statistics of the training split are stored in the data
set's metadata (``metadata.json``), so readers need neither the cache nor librosa.

A build that fails (bad input, an interrupt) removes what it created under the
data directory, so no half-built data set is left to be found later.

Build (``python -m experiments.data.cli tfds-build`` wraps this)::

  builder = Dcase2018(data_dir="~/tensorflow_datasets", config="cp_resnet")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="/data/TUT-urban-acoustic-scenes-2018-development"))
  ds = tfds.data_source("dcase2018/cp_resnet", split="train", data_dir=...)

Any other data set in a DCASE layout (the synthetic set, your recordings):
:func:`builder_for_root`, then read it with ``tfds.builder_from_directory``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import shutil
import warnings
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from experiments.data import cache as cache_lib
from experiments.data import dcase
from experiments.data import features as features_lib
from experiments.data import pipeline

__all__ = ["Dcase2017", "Dcase2018", "DcaseConfig", "builder_for_root", "find_roots",
           "resolve_split"]

_INSTRUCTIONS = """\
Download {archive} (Zenodo, {url}; linked from dcase.community) after
accepting its licence, extract every zip part, and point the manual directory at
the extracted folder:

  python -m experiments.data.cli tfds-build {name} --manual-dir /data/{folder}
  # or, in Python:
  #   builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
  #       manual_dir="/data/{folder}"))

The manual directory must contain {meta} and evaluation_setup/ (directly, or in a
sub-folder){extra}.
"""


@dataclasses.dataclass
class DcaseConfig(tfds.core.BuilderConfig):
  """A feature configuration (and, for custom data, the class list).

  Attributes:
    features: The feature parameters.
    classes: Class names; empty means the layout's known DCASE list.
  """

  features: features_lib.FeatureConfig = features_lib.CP_RESNET
  classes: tuple[str, ...] = ()


def _feature_configs() -> list[DcaseConfig]:
  return [
      DcaseConfig(name="cp_resnet", features=features_lib.CP_RESNET,
                  description="CP-ResNet features: 22.05 kHz, n_fft 2048, hop 512, "
                  "A-weighted dB spectrum on 256 mel bands, stereo (256, frames, 2)."),
      DcaseConfig(name="logmel128", features=features_lib.logmel(128),
                  description="Log-mel: 22.05 kHz, n_fft 2048, hop 512, 128 mel bands, "
                  "stereo (128, frames, 2)."),
  ]


def find_roots(manual_dir, layout: str) -> list[Path]:
  """Data set roots (directories holding the layout's meta file) up to 2 levels down."""
  manual_dir = Path(manual_dir)
  name = dcase.META_FILES[layout]
  roots = [manual_dir] if (manual_dir / name).is_file() else []
  for depth in ("*", "*/*"):
    roots += sorted(p.parent for p in manual_dir.glob(f"{depth}/{name}"))
  return list(dict.fromkeys(roots))


def resolve_split(metadata: dict, split: str, fold: int | None) -> tuple[str, str]:
  """Maps ``(split, fold)`` to a stored split expression and a statistics key.

  ``metadata["folds"]`` (written by the builders) maps ``"fold{k}"`` to its
  ``{"train": expr, "evaluate": expr}``. Names that are not ``train``/
  ``evaluate`` (``"fold1_evaluate"``, ``"evaluation"``, slices) pass through.
  """
  folds = metadata.get("folds", {})
  key = f"fold{fold if fold is not None else 1}"
  base = split.split("[", 1)[0]
  if base in ("train", "evaluate") and key in folds:
    expr = folds[key][base]
    if "[" in split:  # a slice applies to every part of the expression
      sl = split[split.index("["):]
      expr = "+".join(part + sl for part in expr.split("+"))
    return expr, key
  return split, key


class _DcaseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery; subclasses set the layout and the split plan."""

  LAYOUT = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Features from manual download, array_record."}
  BUILDER_CONFIGS = _feature_configs()

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # tfds 4.9.10 resolves this through the `importlib_resources` backport for
    # builders that live in a package, but declares that dependency only for
    # Python < 3.9 (ModuleNotFoundError otherwise). The file is all it needs.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, cache_dir=None, workers: int | None = None, on_error: str = "raise",
               file_format: str = "array_record", **kwargs):
    """Same arguments as any TFDS builder, plus feature-extraction options.

    Args:
      cache_dir: Feature cache used while building (default: the user cache).
      workers: Extraction processes (default: all cores).
      on_error: ``"raise"`` or ``"skip"`` bad clips (skips are reported).
      file_format: Defaults to ``array_record`` (random access, no TF).
      **kwargs: ``data_dir``, ``config``, ``version``.
    """
    if on_error not in ("raise", "skip"):
      raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    self._cache_dir = cache_dir
    self._workers = workers
    self._on_error = on_error
    self._cache = None
    super().__init__(file_format=file_format, **kwargs)

  def download_and_prepare(self, *args, **kwargs):
    """Builds the data set; a failed build leaves nothing behind under ``data_dir``.

    TFDS writes into a temporary folder and renames it when done, but creates the
    data set's and config's folders, ``.config/metadata.json`` and
    ``downloads/`` first; left behind they make a later read fail with "splits
    is empty" instead of "not built".
    """
    # data_dir = <root>/<name>/<config>/<version>. Only this data set's folder and
    # TFDS's downloads/ are looked at (the root may hold many other data sets),
    # unless the root itself is new.
    root = Path(self.data_dir).parents[2]
    tops = [root] if not root.exists() else [Path(self.data_dir).parents[1], root / "downloads"]
    before = {p for top in tops if top.exists() for p in [top, *top.rglob("*")]}
    try:
      return super().download_and_prepare(*args, **kwargs)
    except BaseException:
      _remove_new(tops, before)
      raise

  @property
  def _classes(self) -> tuple[str, ...]:
    return tuple(self.builder_config.classes) or dcase.KNOWN_CLASSES[self.LAYOUT]

  def _info(self) -> tfds.core.DatasetInfo:
    fc = self.builder_config.features
    channels = 1 if fc.mono else 2
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"{self.name}: acoustic scene features ({self.builder_config.name}) read "
                     f"from the user's files in the {self.LAYOUT} layout."),
        features=tfds.features.FeaturesDict({
            "features": tfds.features.Tensor(shape=(fc.n_mels, None, channels),
                                             dtype=np.dtype(fc.dtype)),
            "label": tfds.features.ClassLabel(names=list(self._classes)),
            "filename": tfds.features.Text(),
            "identifier": tfds.features.Text(),
            "source_label": tfds.features.Text(),
        }),
        supervised_keys=("features", "label"),
        metadata=tfds.core.MetadataDict(),
        homepage="https://dcase.community/",
    )

  # -- helpers shared by the split plans --------------------------------------

  def _load(self, root: Path, fold: int | None) -> dcase.DcaseDataset:
    ds = dcase.load(root, layout=self.LAYOUT, fold=fold, classes=self._classes,
                    on_error=self._on_error)
    # Stereo configs store two channels; mono ones mix any count down to one.
    if not self.builder_config.features.mono and ds.audio and ds.audio.channels != 2:
      raise dcase.DataError(dcase.Problem(str(root), None, f"clips have {ds.audio.channels} "
                                          "channel(s); this config stores 2"))
    return ds

  def _extract(self, clips: list[dcase.Clip]) -> dict[str, Path]:
    self._cache = cache_lib.FeatureCache(self.builder_config.features, self._cache_dir)
    files = [c.file for c in clips]
    result = self._cache.extract(files, workers=self._workers, on_error="skip",
                                 desc=f"{self.name} features")
    if result.failed:
      pipeline.report_failed_features(clips, result.failed, self._on_error, self.name,
                                      stacklevel=3)
    return {str(f): e for f, e in zip(files, result.entries) if e is not None}

  def _features(self, clip: dcase.Clip, entry: Path) -> np.ndarray:
    try:
      return cache_lib.read_entry(entry)
    except cache_lib.CorruptEntryError:
      return self._cache.heal(entry, clip.file)

  def _norm(self, clips: list[dcase.Clip], entries: dict[str, Path]) -> dict:
    stats = features_lib.norm_stats(self._features(c, entries[str(c.file)]) for c in clips
                                    if str(c.file) in entries)
    return {"mean": stats.mean.ravel().tolist(), "std": stats.std.ravel().tolist(),
            "count": stats.count}

  def _generate_examples(self, clips: list[dcase.Clip], entries: dict[str, Path]):
    for clip in clips:
      entry = entries.get(str(clip.file))
      if entry is None:
        continue
      yield clip.path, {
          "features": self._features(clip, entry),
          "label": clip.label,
          "filename": clip.path,
          "identifier": clip.identifier or "",
          "source_label": clip.source_label or "",
      }

  def _manual_roots(self, dl_manager) -> list[Path]:
    roots = find_roots(dl_manager.manual_dir, self.LAYOUT)
    if not roots:
      raise dcase.DataError(dcase.Problem(
          str(dl_manager.manual_dir), None,
          f"no {dcase.META_FILES[self.LAYOUT]} found (up to two levels down).\n"
          + self.MANUAL_DOWNLOAD_INSTRUCTIONS))
    return roots


class Dcase2018(_DcaseBuilder):
  """DCASE2018 Task 1A, TUT Urban Acoustic Scenes 2018 (development set)."""

  LAYOUT = "dcase2018"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(
      archive="TUT Urban Acoustic Scenes 2018, Development dataset",
      url="https://zenodo.org/record/1228142", folder="TUT-urban-acoustic-scenes-2018-development",
      name="dcase2018", meta="meta.csv", extra="")

  def _split_generators(self, dl_manager):
    roots = [r for r in self._manual_roots(dl_manager)
             if list((r / "evaluation_setup").glob("fold1_train.*"))]
    if len(roots) != 1:
      raise dcase.DataError(dcase.Problem(
          str(dl_manager.manual_dir), None, "expected one development set (with "
          f"evaluation_setup/fold1_train.txt), found {[str(r) for r in roots]}"))
    ds = self._load(roots[0], fold=1)
    listed = ds.splits["train"] + ds.splits["evaluate"] + (ds.test_list or [])
    entries = self._extract(list({c.path: c for c in listed}.values()))
    self.info.metadata["folds"] = {"fold1": {"train": "train", "evaluate": "evaluate"}}
    self.info.metadata["norm"] = {"fold1": self._norm(ds.splits["train"], entries)}
    self.info.metadata["root"] = str(ds.root)
    splits = {"train": self._generate_examples(ds.splits["train"], entries),
              "evaluate": self._generate_examples(ds.splits["evaluate"], entries)}
    # The fold's test list repeats the evaluate clips without labels: stored only
    # when it names clips of its own.
    if ds.test_list and not ds.test_list_is_evaluate:
      splits["test"] = self._generate_examples(ds.test_list, entries)
    return splits


class Dcase2017(_DcaseBuilder):
  """DCASE2017 Task 1, TUT Acoustic Scenes 2017 (development + optional evaluation)."""

  LAYOUT = "dcase2017"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(
      archive="TUT Acoustic Scenes 2017, Development dataset (and optionally the "
      "Evaluation dataset)", url="https://zenodo.org/record/400515",
      folder="TUT-acoustic-scenes-2017-development", name="dcase2017", meta="meta.txt",
      extra=(". To add the evaluation set, put both extracted folders in one manual "
             "directory; the one without fold files becomes the 'evaluation' split"))

  def _split_generators(self, dl_manager):
    roots = self._manual_roots(dl_manager)
    dev = [r for r in roots if list((r / "evaluation_setup").glob("fold1_train.*"))]
    evals = [r for r in roots if r not in dev]
    if len(dev) != 1:
      raise dcase.DataError(dcase.Problem(str(dl_manager.manual_dir), None,
                                          f"expected one development set with fold files, "
                                          f"found {dev}"))
    folds = sorted(int(p.name[4:].split("_", 1)[0]) for p in
                   (dev[0] / "evaluation_setup").glob("fold*_evaluate.*"))
    loaded = {k: self._load(dev[0], fold=k) for k in folds}
    all_clips = {}
    for ds in loaded.values():
      all_clips.update({c.path: c for split in ds.splits.values() for c in split})
    evaluation = eval_split = None
    if evals:
      evaluation = self._load(evals[0], fold=None)
      # Its labelled list, else its test list (labelled through its meta file).
      eval_split = evaluation.splits.get("evaluate") or evaluation.test_list
      if not eval_split:
        raise dcase.DataError(dcase.Problem(str(evaluation.root / "evaluation_setup"), None,
                                            "evaluation set without evaluate.txt or test.txt "
                                            "entries"))
    clips = list(all_clips.values()) + (eval_split or [])
    entries = self._extract(clips)

    # Stored once per clip when the evaluate lists partition the development set.
    evaluate_sets = {k: {c.path for c in ds.splits["evaluate"]} for k, ds in loaded.items()}
    union = set().union(*evaluate_sets.values())
    partition = (sum(len(s) for s in evaluate_sets.values()) == len(union) and all(
        {c.path for c in ds.splits["train"]} == union - evaluate_sets[k]
        for k, ds in loaded.items()))
    splits, plan, norm = {}, {}, {}
    for k, ds in loaded.items():
      splits[f"fold{k}_evaluate"] = self._generate_examples(ds.splits["evaluate"], entries)
      if partition:
        train_expr = "+".join(f"fold{j}_evaluate" for j in folds if j != k)
      else:
        train_expr = f"fold{k}_train"
        splits[train_expr] = self._generate_examples(ds.splits["train"], entries)
      plan[f"fold{k}"] = {"train": train_expr, "evaluate": f"fold{k}_evaluate"}
      norm[f"fold{k}"] = self._norm(ds.splits["train"], entries)
    if eval_split:
      splits["evaluation"] = self._generate_examples(eval_split, entries)
    self.info.metadata["folds"] = plan
    self.info.metadata["norm"] = norm
    self.info.metadata["root"] = str(dev[0])
    return splits


def builder_for_root(root, *, data_dir=None, features=features_lib.CP_RESNET,
                     classes=None, **kwargs) -> _DcaseBuilder:
  """A builder for any data set in a DCASE layout (the synthetic set, your own).

  The class list comes from the data (or ``classes``) and goes into an ad-hoc
  config named ``custom_<hash>``; build with
  ``builder.download_and_prepare(download_config=DownloadConfig(manual_dir=root))``
  and read back with ``tfds.builder_from_directory(builder.data_dir)``.

  Args:
    root: Data set root.
    data_dir: TFDS data directory.
    features: Feature config.
    classes: Class list (default: as :func:`experiments.data.dcase.load` decides).
    **kwargs: Builder options (``cache_dir``, ``workers``, ``on_error``).
  """
  layout = dcase.detect_layout(root)
  fold = 1 if list((Path(root) / "evaluation_setup").glob("fold1_*")) else None
  with warnings.catch_warnings():
    # Only the class list is needed here; the build reports skipped clips itself.
    warnings.simplefilter("ignore", dcase.DataWarning)
    ds = dcase.load(root, layout=layout, classes=classes, check_audio=False, fold=fold,
                    on_error=kwargs.get("on_error", "raise"))
  digest = hashlib.sha256(repr((ds.classes, features.fingerprint())).encode()).hexdigest()[:10]
  config = DcaseConfig(name=f"custom_{digest}", features=features, classes=ds.classes,
                       description=f"{Path(root).name}: {len(ds.classes)} classes")
  cls = Dcase2017 if layout == "dcase2017" else Dcase2018
  return cls(data_dir=data_dir, config=config, **kwargs)


def _remove_new(tops: list[Path], before: set[Path]) -> None:
  """Removes what appeared under ``tops`` since ``before`` was taken."""
  for top in tops:
    if top not in before:
      shutil.rmtree(top, ignore_errors=True)
      continue
    if not top.exists():
      continue
    for p in sorted(top.rglob("*"), key=lambda q: len(q.parts)):
      if p not in before and p.exists():
        if p.is_dir() and not p.is_symlink():
          shutil.rmtree(p, ignore_errors=True)
        else:
          p.unlink(missing_ok=True)
