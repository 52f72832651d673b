"""Tiny data sets in the real DCASE layouts, for tests and benchmarks.

``write_dcase2017`` and ``write_dcase2018`` write a few short clips of noise plus
the meta and fold files exactly as the TUT archives lay them out, so that tests
can build good and deliberately broken data sets in a temporary directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.data import dcase

__all__ = ["write_dcase2017", "write_dcase2018", "write_wav"]


def write_wav(path, seconds: float, sample_rate: int, channels: int = 2, seed: int = 0,
              subtype: str = "PCM_16") -> Path:
  """A clip of quiet noise with a tone whose pitch depends on ``seed``."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  n = max(1, int(round(seconds * sample_rate)))
  t = np.arange(n) / sample_rate
  tone = 0.2 * np.sin(2 * np.pi * (200 + 50 * (seed % 20)) * t)
  y = 0.05 * rng.standard_normal((n, channels)) + tone[:, None]
  sf.write(str(path), y.astype(np.float32), sample_rate, subtype=subtype)
  return path


def _labels(classes: Sequence[str], n: int) -> list[str]:
  return [classes[i % len(classes)] for i in range(n)]


def write_dcase2017(root, *, clips: int = 8, folds: int = 4, seconds: float = 0.2,
                    sample_rate: int = 44100, classes: Sequence[str] | None = None,
                    audio: bool = True) -> Path:
  """A TUT Acoustic Scenes 2017 look-alike (24-bit, binaural, ``meta.txt``).

  Clip ``i`` belongs to the evaluate list of fold ``i % folds + 1``; each
  ``fold{k}_train.txt`` lists the others (the four folds partition the set, as in
  TUT 2017), and ``fold{k}_test.txt`` repeats the evaluate paths without labels.
  """
  root = Path(root)
  classes = list(classes or dcase.KNOWN_CLASSES["dcase2017"])
  labels = _labels(classes, clips)
  rows = []
  for i, label in enumerate(labels):
    ident = f"a{i:03d}"
    rel = f"audio/{ident}_0_10.wav"
    rows.append((rel, label, ident))
    if audio:
      write_wav(root / rel, seconds, sample_rate, seed=i, subtype="PCM_24")
  root.mkdir(parents=True, exist_ok=True)
  (root / "meta.txt").write_text("".join(f"{r}\t{lab}\t{ident}\n" for r, lab, ident in rows))
  setup = root / "evaluation_setup"
  setup.mkdir(exist_ok=True)
  for k in range(1, folds + 1):
    ev = [r for i, r in enumerate(rows) if i % folds + 1 == k]
    tr = [r for i, r in enumerate(rows) if i % folds + 1 != k]
    (setup / f"fold{k}_train.txt").write_text("".join(f"{r}\t{lab}\n" for r, lab, _ in tr))
    (setup / f"fold{k}_evaluate.txt").write_text("".join(f"{r}\t{lab}\n" for r, lab, _ in ev))
    (setup / f"fold{k}_test.txt").write_text("".join(f"{r}\n" for r, _, _ in ev))
  return root


def write_dcase2018(root, *, clips: int = 10, evaluate_every: int = 3, seconds: float = 0.2,
                    sample_rate: int = 48000, classes: Sequence[str] | None = None,
                    audio: bool = True) -> Path:
  """A TUT Urban Acoustic Scenes 2018 look-alike (16-bit stereo, ``meta.csv``).

  Every ``evaluate_every``-th clip goes to ``fold1_evaluate.txt`` (path, label)
  and ``fold1_test.txt`` (path only); the rest to ``fold1_train.txt``. Training
  clips come in pairs from one recording location (identifier ``city-N``); each
  evaluate clip has a location of its own (``city-eI``), so no location straddles
  the split, as in the real set.
  """
  root = Path(root)
  classes = list(classes or dcase.KNOWN_CLASSES["dcase2018"])
  labels = _labels(classes, clips)
  rows = []
  trained = 0
  for i, label in enumerate(labels):
    if i % evaluate_every == evaluate_every - 1:
      ident = f"city-e{i}"
    else:
      ident = f"city-{trained // 2}"
      trained += 1
    rel = f"audio/{label}-{ident}-{i}-a.wav"
    rows.append((rel, label, ident))
    if audio:
      write_wav(root / rel, seconds, sample_rate, seed=i)
  root.mkdir(parents=True, exist_ok=True)
  lines = ["filename\tscene_label\tidentifier\tsource_label"]
  lines += [f"{r}\t{lab}\t{ident}\ta" for r, lab, ident in rows]
  (root / "meta.csv").write_text("\n".join(lines) + "\n")
  setup = root / "evaluation_setup"
  setup.mkdir(exist_ok=True)
  ev = [r for i, r in enumerate(rows) if i % evaluate_every == evaluate_every - 1]
  tr = [r for i, r in enumerate(rows) if i % evaluate_every != evaluate_every - 1]
  (setup / "fold1_train.txt").write_text("".join(f"{r}\t{lab}\n" for r, lab, _ in tr))
  (setup / "fold1_evaluate.txt").write_text("".join(f"{r}\t{lab}\n" for r, lab, _ in ev))
  (setup / "fold1_test.txt").write_text("".join(f"{r}\n" for r, _, _ in ev))
  return root
