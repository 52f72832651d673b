"""Input pipelines: cached features (or a TFDS data source) -> grain -> numpy batches.

Batches are dicts of numpy arrays, ready for a JAX train step::

  {"features": float32 (batch, mel, frames, channels), "label": int32 (batch,)}

Two sources, one batching path:

* :func:`prepare` reads a DCASE-layout root (default: the synthetic set), fills
  the feature cache in parallel and computes normalisation statistics from the
  training split; its :class:`CachedFeatureSource` objects (one per labelled
  split, ``"train"`` and ``"evaluate"``) are random-access sources for grain.
  The fold's unlabelled test list is not a source: in DCASE development sets it
  repeats the evaluate clips, so accuracy on ``"evaluate"`` is validation
  accuracy, not test accuracy.
* :func:`tfds_source` reads a data set built by
  :mod:`experiments.data.tfds_builders` through ``tfds.data_source`` (array_record,
  no TensorFlow), with the statistics stored in the data set's metadata.

Example::

  data = prepare()                                  # synthetic default set
  for batch in batches(data.sources["train"], 32, stats=data.stats, seed=epoch):
    state = train_step(state, batch)

Scripts need no ``if __name__ == "__main__":`` guard around :func:`prepare`:
feature extraction runs in :class:`experiments.data.workers.WorkerPool`
processes, which do not re-run the main script (and die with it). Generating
the synthetic set the first time (``prepare()`` without a root) still uses a
multiprocessing pool, which re-runs the script in its workers: guard that call,
or run ``hspg-data synth`` once beforehand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections.abc import Iterable
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.data import cache as cache_lib
from experiments.data import dcase
from experiments.data import features as features_lib

__all__ = [
    "CachedFeatureSource",
    "Normalize",
    "PreparedData",
    "TfdsFeatureSource",
    "batches",
    "prepare",
    "tfds_source",
]


class CachedFeatureSource:
  """Random-access source over cached feature files (grain's data source protocol).

  Item ``i`` is ``{"features": (mel, frames, channels) float32, "label": int32}``,
  un-normalised (normalise in the pipeline, see :class:`Normalize`). Every read
  checks the entry's checksum; with ``files`` and ``cache`` a damaged entry is
  recomputed from its audio file (with a warning), otherwise it raises
  :class:`~experiments.data.cache.CorruptEntryError`.

  Args:
    entries: Cache entry per example.
    labels: Integer label per example.
    files: Audio file per example (to recompute damaged entries).
    cache: The :class:`~experiments.data.cache.FeatureCache` the entries belong to.
  """

  def __init__(self, entries: Sequence[Path], labels: Sequence[int], *,
               files: Sequence[Path] | None = None,
               cache: cache_lib.FeatureCache | None = None):
    if len(entries) != len(labels):
      raise ValueError(f"{len(entries)} entries but {len(labels)} labels")
    if files is not None and len(files) != len(entries):
      raise ValueError(f"{len(entries)} entries but {len(files)} files")
    self.entries = [str(e) for e in entries]
    self.labels = np.asarray(labels, np.int32)
    self.files = None if files is None else [str(f) for f in files]
    self.cache = cache

  def __len__(self) -> int:
    return len(self.entries)

  def features(self, index: int) -> np.ndarray:
    """The cached features of example ``index`` (checksum verified)."""
    try:
      x = cache_lib.read_entry(self.entries[index])
    except cache_lib.CorruptEntryError:
      if self.files is None or self.cache is None:
        raise
      x = self.cache.heal(self.entries[index], self.files[index])
    return x.astype(np.float32, copy=False)

  def __getitem__(self, index: int) -> dict:
    return {"features": self.features(index), "label": self.labels[index]}

  def __repr__(self):
    return f"CachedFeatureSource({len(self)} clips)"


class TfdsFeatureSource:
  """Adapts a ``tfds.data_source`` of the DCASE builders to the batch format."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    ex = self.source[index]
    return {"features": np.asarray(ex["features"], np.float32),
            "label": np.int32(ex["label"])}

  def __repr__(self):
    return f"TfdsFeatureSource({len(self)} clips)"


@dataclasses.dataclass(frozen=True)
class Normalize:
  """Per-mel-bin standardisation as a picklable map (works in grain workers)."""

  stats: features_lib.NormStats | None

  def __call__(self, item: dict) -> dict:
    if self.stats is None:
      return item
    return {**item, "features": self.stats.apply(item["features"])}


@dataclasses.dataclass
class PreparedData:
  """What :func:`prepare` returns.

  Attributes:
    dataset: The validated :class:`~experiments.data.dcase.DcaseDataset` (its
      ``test_list`` holds the fold's unlabelled test list, if any).
    sources: One :class:`CachedFeatureSource` per labelled split: ``"train"``
      and ``"evaluate"`` (the validation fold).
    stats: Normalisation statistics of the training split.
    classes: Class names (label ``i`` is ``classes[i]``).
    cache: The feature cache used.
    skipped: Clips left out because feature extraction failed (with
      ``on_error="skip"``), as ``(path, message)``.
    extraction: What the feature cache did (computed / reused / workers / time).
  """

  dataset: dcase.DcaseDataset
  sources: dict[str, CachedFeatureSource]
  stats: features_lib.NormStats
  classes: tuple[str, ...]
  cache: cache_lib.FeatureCache
  skipped: list[tuple[str, str]]
  extraction: cache_lib.ExtractionResult | None = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    """``(mel, frames, channels)`` of one example."""
    return tuple(self.sources["train"][0]["features"].shape)


def prepare(root=None, *, features: features_lib.FeatureConfig = features_lib.CP_RESNET,
            cache_dir=None, fold: int | None = 1, layout: str | None = None,
            classes=None, on_error: str = "raise", workers: int | None = None,
            progress: bool = True, audio: dcase.AudioSpec | None = None,
            overlap: str = "raise", verify: bool = False,
            limit_per_split: int = 0, limit_seed: int = 0) -> PreparedData:
  """Loads a data set, fills the feature cache and computes training statistics.

  Feature extraction needs no ``if __name__ == "__main__":`` guard in the
  calling script; the first generation of the synthetic set (``root=None``)
  still does (see the module docstring).

  Args:
    root: A DCASE-layout root; None generates/uses the synthetic default set.
    features: Feature parameters.
    cache_dir: Feature cache location (default: :func:`cache.default_cache_dir`).
    fold: Fold to read (see :func:`experiments.data.dcase.load`); it must have
      a train split.
    layout: Force a layout instead of detecting it.
    classes: Class list (see :func:`experiments.data.dcase.load`).
    on_error: ``"raise"`` or ``"skip"`` for bad input, including clips whose
      features cannot be computed (skips are counted and reported).
    workers: Extraction processes (None: all cores, if the work pays for them).
    progress: Progress bars.
    audio: Expected audio properties (default: inferred).
    overlap: Clips or recordings shared by train and evaluate: ``"raise"`` or
      ``"warn"`` (see :func:`experiments.data.dcase.load`).
    verify: Check every cached entry's checksum before reusing it (reads the
      whole cache; reads during training check it anyway).
    limit_per_split: If > 0, keep only this many clips of each split (a seeded
      random choice, stratified by nothing; for smoke runs on large sets: only
      these clips are featurised).
    limit_seed: Seed of that choice.

  Returns:
    A :class:`PreparedData`.

  Raises:
    DataError: bad input, naming file and line (a clip whose features fail is
      named by its meta-file line).
  """
  if root is None:
    from experiments.data import synthetic  # pylint: disable=g-import-not-at-top

    root = synthetic.make_default(progress=progress)
  ds = dcase.load(root, layout=layout, fold=fold, classes=classes, on_error=on_error,
                  audio=audio, progress=progress, overlap=overlap)
  if "train" not in ds.splits:
    raise dcase.DataError(dcase.Problem(str(ds.root / "evaluation_setup"), None,
                                        "no train split: prepare() needs one for the "
                                        "normalisation statistics"), remedies=("fold_n",))
  if limit_per_split > 0:
    ds = _limit_splits(ds, limit_per_split, limit_seed)
  cache = cache_lib.FeatureCache(features, cache_dir)
  files = list(dict.fromkeys(f for split in ds.splits for f in ds.files(split)))
  result = cache.extract(files, workers=workers, progress=progress, on_error="skip",
                         verify=verify)
  if result.failed:
    _report_failed_features(ds, result.failed, on_error)
  entry = {str(f): e for f, e in zip(files, result.entries)}
  sources = {}
  for split in ds.splits:
    keep = [i for i, f in enumerate(ds.files(split)) if entry[str(f)] is not None]
    if not keep:
      raise dcase.DataError(dcase.Problem(str(ds.root), None, f"split {split!r} has no clip "
                                          "left after failed feature extraction"))
    files_split, labels = ds.files(split), ds.labels(split)
    sources[split] = CachedFeatureSource([entry[str(files_split[i])] for i in keep],
                                         labels[keep], files=[files_split[i] for i in keep],
                                         cache=cache)
  stats = _train_stats(cache, sources["train"], progress)
  return PreparedData(dataset=ds, sources=sources, stats=stats, classes=ds.classes, cache=cache,
                      skipped=result.failed, extraction=result)


def _limit_splits(ds: dcase.DcaseDataset, n: int, seed: int) -> dcase.DcaseDataset:
  rng = np.random.default_rng(seed)
  splits = {}
  for name, clips in ds.splits.items():
    keep = np.sort(rng.permutation(len(clips))[:n]) if len(clips) > n else np.arange(len(clips))
    splits[name] = [clips[i] for i in keep]
  return dataclasses.replace(ds, splits=splits)


def _report_failed_features(ds: dcase.DcaseDataset, failed, on_error: str) -> None:
  """Failed clips as meta-file ``file:line`` problems: raised, or warned about."""
  report_failed_features(ds.clips.values(), failed, on_error, str(ds.root), stacklevel=4)


def report_failed_features(clips, failed: Sequence[tuple[str, str]], on_error: str,
                           where: str, stacklevel: int = 2) -> None:
  """Raises (``on_error="raise"``) or warns about clips whose features failed.

  Each failure is named by its clip's meta-file line, like every other problem.

  Args:
    clips: The :class:`~experiments.data.dcase.Clip` objects the files came from.
    failed: ``(file, message)`` pairs (:attr:`ExtractionResult.failed`).
    on_error: ``"raise"`` or ``"skip"``.
    where: What the warning is about (a data set root or name).
    stacklevel: Passed to ``warnings.warn``.

  Raises:
    DataError: with ``on_error="raise"``.
  """
  clip_of = {str(c.file): c for c in clips}
  problems = [clip_of[f].problem(f"features failed: {msg}") if f in clip_of
              else dcase.Problem(f, None, f"features failed: {msg}") for f, msg in failed]
  if on_error == "raise":
    raise dcase.DataError(problems, hint="The other clips' features are cached.",
                          remedies=("skip",))
  warnings.warn(f"{where}: left out {len(failed)} clip(s) whose features failed "
                "(on_error='skip'):\n  " + "\n  ".join(map(str, problems[:25])),
                dcase.SkippedDataWarning, stacklevel=stacklevel)


def _train_stats(cache: cache_lib.FeatureCache, source: CachedFeatureSource,
                 progress: bool) -> features_lib.NormStats:
  """Statistics of the training split, cached next to the features.

  A damaged statistics file is recomputed (with a warning), not an error.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  key = hashlib.sha256("\n".join(sorted(source.entries)).encode()).hexdigest()[:16]
  path = cache.dir / f"stats-{key}.npz"
  if path.exists():
    try:
      return features_lib.NormStats.load(path)
    except ValueError as e:
      warnings.warn(f"{e}; recomputing it", RuntimeWarning, stacklevel=3)
  it = tqdm(range(len(source)), desc="train statistics", unit="clip",
            disable=not progress or len(source) < 500)
  stats = features_lib.norm_stats(source.features(i) for i in it)
  tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
  stats.save(tmp)
  tmp.replace(path)
  return stats


def tfds_source(name: str, split: str, *, data_dir=None, fold: int | None = None):
  """A TFDS data set built by :mod:`experiments.data.tfds_builders`, TF-free.

  Args:
    name: A registered name (``"dcase2018"``, ``"dcase2017/logmel128"``) or the
      path of a prepared data set directory (``.../dcase2018/cp_resnet/1.0.0``).
    split: A split name or split expression; for ``dcase2017`` also
      ``"train"``/``"evaluate"`` together with ``fold``.
    data_dir: TFDS data directory for registered names.
    fold: For ``dcase2017``: which fold's train/evaluate splits to assemble.

  Returns:
    ``(source, stats, classes)``: a :class:`TfdsFeatureSource`, the training
    statistics of that fold (or None if absent) and the class names.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from experiments.data import tfds_builders  # pylint: disable=g-import-not-at-top  # registers

  if Path(name).is_dir():
    builder = tfds.builder_from_directory(name)
  else:
    builder = tfds.builder(name, data_dir=data_dir)
  meta = dict(builder.info.metadata or {})
  split_expr, fold_key = tfds_builders.resolve_split(meta, split, fold)
  source = builder.as_data_source(split=split_expr)
  stats = None
  norm = meta.get("norm", {}).get(fold_key)
  if norm is not None:
    mean = np.asarray(norm["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(norm["std"], np.float32).reshape(-1, 1, 1)
    stats = features_lib.NormStats(mean=mean, std=std, count=int(norm["count"]))
  classes = tuple(builder.info.features["label"].names)
  return TfdsFeatureSource(source), stats, classes


def batches(source, batch_size: int, *, stats: features_lib.NormStats | None = None,
            shuffle: bool = True, seed: int = 0, drop_remainder: bool = True,
            shard_index: int = 0, shard_count: int = 1, num_threads: int = 4,
            prefetch: int = 2) -> Iterable[dict]:
  """One epoch of numpy batches through a grain ``MapDataset``.

  Args:
    source: A random-access source (:class:`CachedFeatureSource`,
      :class:`TfdsFeatureSource`, or anything with ``__len__``/``__getitem__``
      returning ``{"features", "label"}``).
    batch_size: Examples per batch (per shard). With ``drop_remainder`` it must
      not exceed the examples of the shard (an epoch without batches is an
      error, not a silent no-op).
    stats: Normalisation statistics (from the training split); None: raw.
    shuffle: Shuffle (deterministically) before batching.
    seed: Shuffle seed; pass a different one per epoch (e.g. ``base + epoch``).
    drop_remainder: Drop a last short batch, so every batch has the same shape
      (one jit trace; batch divisible by the device count). Use False for
      evaluation.
    shard_index: This host's shard (``jax.process_index()``) ...
    shard_count: ... of this many (``jax.process_count()``). Every host shuffles
      with the same seed and takes a disjoint strided slice.
    num_threads: Reader threads (reading and normalising release the GIL).
    prefetch: Batches buffered ahead.

  Returns:
    An iterable of ``{"features": (B, mel, frames, ch) float32, "label": (B,) int32}``.
  """
  import grain  # pylint: disable=g-import-not-at-top

  def whole(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

  if not whole(batch_size) or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  if not whole(shard_count) or shard_count < 1:
    raise ValueError(f"shard_count must be a positive integer, got {shard_count!r}")
  if not whole(shard_index) or not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got "
                     f"{shard_index!r}")
  if num_threads < 0 or prefetch < 0:
    raise ValueError(f"num_threads and prefetch must be >= 0, got {num_threads}, {prefetch}")
  size = len(range(shard_index, len(source), shard_count))
  where = f" on shard {shard_index} of {shard_count}" if shard_count > 1 else ""
  if size == 0:
    raise ValueError(f"no examples{where} (the source has {len(source)})")
  if drop_remainder and batch_size > size:
    raise ValueError(f"batch_size={batch_size} is larger than the {size} examples{where}: "
                     "with drop_remainder=True the epoch would yield no batch; lower "
                     "batch_size or pass drop_remainder=False")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if shard_count > 1:
    ds = ds[shard_index::shard_count]
  ds = ds.map(Normalize(stats)).batch(batch_size, drop_remainder=drop_remainder)
  if num_threads > 0:
    # Elements here are whole batches: the buffer counts batches, and must be at
    # least the thread count for every thread to have work.
    options = grain.ReadOptions(num_threads=num_threads,
                                prefetch_buffer_size=max(prefetch, num_threads))
    return ds.to_iter_dataset(options)
  return ds
