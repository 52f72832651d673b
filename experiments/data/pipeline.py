"""Input pipelines: cached features (or a TFDS data source) -> grain -> numpy batches.

Batches are dicts of numpy arrays, ready for a JAX train step::

  {"features": float32 (batch, mel, frames, channels), "label": int32 (batch,)}

Two sources, one batching path:

* :func:`prepare` reads a DCASE-layout root (default: the synthetic set), fills
  the feature cache in parallel and computes normalisation statistics from the
  training split; its :class:`CachedFeatureSource` objects are random-access
  sources for grain.
* :func:`tfds_source` reads a data set built by
  :mod:`experiments.data.tfds_builders` through ``tfds.data_source`` (array_record,
  no TensorFlow), with the statistics stored in the data set's metadata.

Example::

  data = prepare()                                  # synthetic default set
  for batch in batches(data.sources["train"], 32, stats=data.stats, seed=epoch):
    state = train_step(state, batch)
"""

from __future__ import annotations

import dataclasses
import hashlib
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
  un-normalised (normalise in the pipeline, see :class:`Normalize`).
  """

  def __init__(self, entries: Sequence[Path], labels: Sequence[int]):
    if len(entries) != len(labels):
      raise ValueError(f"{len(entries)} entries but {len(labels)} labels")
    self.entries = [str(e) for e in entries]
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.entries)

  def __getitem__(self, index: int) -> dict:
    x = np.load(self.entries[index], allow_pickle=False)
    return {"features": x.astype(np.float32, copy=False), "label": self.labels[index]}

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
    dataset: The validated :class:`~experiments.data.dcase.DcaseDataset`.
    sources: One :class:`CachedFeatureSource` per split.
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
            limit_per_split: int = 0, limit_seed: int = 0) -> PreparedData:
  """Loads a data set, fills the feature cache and computes training statistics.

  Args:
    root: A DCASE-layout root; None generates/uses the synthetic default set.
    features: Feature parameters.
    cache_dir: Feature cache location (default: :func:`cache.default_cache_dir`).
    fold: Fold to read (see :func:`experiments.data.dcase.load`).
    layout: Force a layout instead of detecting it.
    classes: Class list (see :func:`experiments.data.dcase.load`).
    on_error: ``"raise"`` or ``"skip"`` for bad input (skips are reported).
    workers: Extraction processes (None: all cores).
    progress: Progress bars.
    audio: Expected audio properties (default: inferred).
    limit_per_split: If > 0, keep only this many clips of each split (a seeded
      random choice, stratified by nothing; for smoke runs on large sets: only
      these clips are featurised).
    limit_seed: Seed of that choice.

  Returns:
    A :class:`PreparedData`.
  """
  if root is None:
    from experiments.data import synthetic  # pylint: disable=g-import-not-at-top

    root = synthetic.make_default(progress=progress)
  ds = dcase.load(root, layout=layout, fold=fold, classes=classes, on_error=on_error,
                  audio=audio, progress=progress)
  if limit_per_split > 0:
    ds = _limit_splits(ds, limit_per_split, limit_seed)
  cache = cache_lib.FeatureCache(features, cache_dir)
  files = list(dict.fromkeys(f for split in ds.splits for f in ds.files(split)))
  result = cache.extract(files, workers=workers, progress=progress, on_error=on_error)
  entry = {str(f): e for f, e in zip(files, result.entries)}
  if result.failed:
    warnings.warn(f"{ds.root}: feature extraction failed for {len(result.failed)} clip(s), "
                  "left out (on_error='skip'):\n  "
                  + "\n  ".join(f"{f}: {m}" for f, m in result.failed[:25]), stacklevel=2)
  sources = {}
  for split in ds.splits:
    keep = [i for i, f in enumerate(ds.files(split)) if entry[str(f)] is not None]
    if not keep:
      raise dcase.DataError(dcase.Problem(str(ds.root), None, f"split {split!r} has no clip "
                                          "left after failed feature extraction"))
    files_split, labels = ds.files(split), ds.labels(split)
    sources[split] = CachedFeatureSource([entry[str(files_split[i])] for i in keep],
                                         labels[keep])
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


def _train_stats(cache: cache_lib.FeatureCache, source: CachedFeatureSource,
                 progress: bool) -> features_lib.NormStats:
  """Statistics of the training split, cached next to the features."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  key = hashlib.sha256("\n".join(sorted(source.entries)).encode()).hexdigest()[:16]
  path = cache.dir / f"stats-{key}.npz"
  if path.exists():
    return features_lib.NormStats.load(path)
  it = tqdm(source.entries, desc="train statistics", unit="clip",
            disable=not progress or len(source) < 500)
  stats = features_lib.norm_stats(np.load(e) for e in it)
  tmp = path.with_name(path.name + ".tmp.npz")
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
    batch_size: Examples per batch (per shard).
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

  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
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
