"""Data for a run: the prepared data set, and deterministic, resumable batch streams.

The order of an epoch is a function of ``(seed, epoch)`` alone, computed on the
host: a permutation of the training split cut into *global* batches. Each
process reads only its contiguous slice of every global batch, so the global
batch assembled from all processes is the same array whatever the number of
processes, and a run resumed at ``(epoch, batch)`` sees exactly the batches an
uninterrupted run would have seen. Mixup is drawn on the host from
``(seed, epoch, batch)`` for the same reason. Reading and normalising run in
grain's reader threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from experiments.data import features as features_lib
from experiments.data import pipeline

__all__ = ["Batches", "feature_config", "load", "train_order", "eval_order"]


def feature_config(cfg) -> features_lib.FeatureConfig:
  if cfg.data.features == "cp_resnet":
    return dataclasses.replace(features_lib.CP_RESNET, n_mels=cfg.data.n_mels)
  return features_lib.logmel(cfg.data.n_mels)


def load(cfg, *, progress: bool = True) -> pipeline.PreparedData:
  """Prepares the run's data (features cached) as the config says."""
  root = None if cfg.data.root == "synthetic" else cfg.data.root
  return pipeline.prepare(
      root, features=feature_config(cfg), fold=cfg.data.fold or None,
      on_error=cfg.data.on_error, progress=progress, workers=cfg.data.workers or None,
      limit_per_split=cfg.data.limit_per_split, limit_seed=cfg.seed)


def train_order(n: int, global_batch: int, seed: int, epoch: int, max_steps: int = 0) -> np.ndarray:
  """``(steps, global_batch)`` clip indices of one training epoch (last short batch dropped)."""
  perm = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
  steps = n // global_batch
  if max_steps:
    steps = min(steps, max_steps)
  return perm[:steps * global_batch].reshape(steps, global_batch)


def eval_order(n: int, global_batch: int, limit: int = 0) -> np.ndarray:
  """``(batches, global_batch)`` indices in order, padded with -1 (masked out)."""
  if limit:
    n = min(n, limit * global_batch)
  steps = -(-n // global_batch)
  idx = np.full(steps * global_batch, -1, np.int64)
  idx[:n] = np.arange(n)
  return idx.reshape(steps, global_batch)


@dataclasses.dataclass
class Batches:
  """Local batches of one pass: ``{"features", "label", "weight"[, "label2", "mix"]}``.

  Attributes:
    source: random-access source of ``{"features", "label"}`` items.
    stats: normalisation statistics (training split).
    order: ``(steps, global_batch)`` indices (``-1``: padding, weight 0).
    process_index, process_count: this process's slice of each global batch.
    start: first step to yield (resume inside an epoch).
    mixup_alpha: > 0 mixes each batch with a permutation of itself.
    mixup_seed: ``(seed, epoch)`` for the mixup draws.
    threads: grain reader threads.
  """

  source: object
  stats: features_lib.NormStats | None
  order: np.ndarray
  process_index: int = 0
  process_count: int = 1
  start: int = 0
  mixup_alpha: float = 0.0
  mixup_seed: tuple[int, ...] = (0,)
  threads: int = 4

  def __len__(self) -> int:
    return max(0, len(self.order) - self.start)

  def _local(self, step: int) -> dict:
    row = self.order[step]
    b = len(row) // self.process_count
    global_row = row
    row = row[self.process_index * b:(self.process_index + 1) * b]
    items = [self.source[int(i)] if i >= 0 else None for i in row]
    template = next((it for it in items if it is not None), None) or self.source[0]
    feats = np.stack([it["features"] if it is not None else np.zeros_like(template["features"])
                      for it in items]).astype(np.float32, copy=False)
    feats = self._normalize(feats)
    label = np.array([it["label"] if it is not None else 0 for it in items], np.int32)
    weight = (row >= 0).astype(np.float32)
    batch = {"features": feats, "label": label, "weight": weight}
    if self.mixup_alpha > 0:
      # Drawn for the global batch from (seed, epoch, step) so that every
      # process agrees; each process then takes its slice. The partner of clip
      # j is clip perm[j] of the *global* batch.
      rng = np.random.default_rng([*self.mixup_seed, step, 0x313])
      mix = rng.beta(self.mixup_alpha, self.mixup_alpha, size=len(global_row)).astype(np.float32)
      mix = np.maximum(mix, 1 - mix)  # the first label stays the dominant one
      perm = rng.permutation(len(global_row))
      lo = self.process_index * b
      partner = global_row[perm[lo:lo + b]]
      # Partners in this process's slice were read above: read only the others.
      read = {int(i): it for i, it in zip(row, items) if it is not None}
      p_items = [read[int(i)] if int(i) in read else self.source[int(i)] for i in partner]
      p_feats = self._normalize(
          np.stack([it["features"] for it in p_items]).astype(np.float32, copy=False))
      m = mix[lo:lo + b]
      batch["features"] = (m[:, None, None, None] * feats
                           + (1 - m[:, None, None, None]) * p_feats).astype(np.float32)
      batch["label2"] = np.array([it["label"] for it in p_items], np.int32)
      batch["mix"] = m
    return batch

  def _normalize(self, feats: np.ndarray) -> np.ndarray:
    return feats if self.stats is None else self.stats.apply(feats)

  def __iter__(self) -> Iterator[dict]:
    steps = range(self.start, len(self.order))
    if self.threads <= 0:
      return (self._local(s) for s in steps)
    import grain  # pylint: disable=g-import-not-at-top

    ds = grain.MapDataset.source(list(steps)).map(self._local)
    options = grain.ReadOptions(num_threads=self.threads,
                                prefetch_buffer_size=max(2, self.threads))
    return iter(ds.to_iter_dataset(options))
