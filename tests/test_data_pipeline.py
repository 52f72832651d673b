"""prepare() + grain batches: shapes, normalisation, determinism, sharding, skips."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("librosa")

from experiments.data import dcase  # noqa: E402
from experiments.data import features as F  # noqa: E402
from experiments.data import pipeline  # noqa: E402
from experiments.data import synthetic  # noqa: E402
from experiments.data import testing  # noqa: E402

SMALL = F.logmel(n_mels=32, n_fft=512, hop_length=256)
ROOT = Path(__file__).resolve().parent.parent
# Short test clips are far from DCASE's documented 10 s (tested in test_data_layout).
pytestmark = pytest.mark.filterwarnings("ignore::experiments.data.dcase.AudioFormatWarning")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  d = tmp_path_factory.mktemp("pipe")
  root = synthetic.make_default(d / "synthetic", progress=False, clips_per_class=4,
                                locations_per_class=2, evaluate_locations=1, clip_seconds=0.5)
  return pipeline.prepare(root, features=SMALL, cache_dir=d / "cache", progress=False)


def test_prepare_gives_sources_stats_and_classes(prepared):
  # The fold's test list repeats the evaluate clips: not a source of its own.
  assert sorted(prepared.sources) == ["evaluate", "train"]
  assert prepared.dataset.test_list_is_evaluate
  assert len(prepared.sources["train"]) == 12
  assert prepared.input_shape == (32, 1 + int(0.5 * 22050) // 256, 2)
  assert prepared.stats.count == 12 and prepared.stats.mean.shape == (32, 1, 1)
  item = prepared.sources["train"][0]
  assert item["features"].dtype == np.float32 and item["label"].dtype == np.int32


def test_batches_are_model_ready_and_normalised(prepared):
  out = list(pipeline.batches(prepared.sources["train"], 4, stats=prepared.stats, seed=0))
  assert len(out) == 3
  for b in out:
    assert b["features"].shape == (4,) + prepared.input_shape
    assert b["features"].dtype == np.float32 and b["label"].shape == (4,)
  x = np.concatenate([b["features"] for b in out])
  np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-4)  # train split: ~N(0, 1)
  np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-3)


def test_shuffle_is_seeded_and_epochs_differ(prepared):
  src = prepared.sources["train"]

  def order(seed):
    return np.concatenate([b["label"] for b in pipeline.batches(src, 3, seed=seed)]).tolist()

  def first_items(seed):
    return [b["features"][0, 0, 0, 0] for b in pipeline.batches(src, 3, seed=seed)]

  assert first_items(1) == first_items(1)
  assert first_items(1) != first_items(2)
  assert sorted(order(1)) == sorted(src.labels.tolist())


def test_shards_are_disjoint_and_cover(prepared):
  src = prepared.sources["train"]
  seen = []
  for shard in range(2):
    for b in pipeline.batches(src, 2, seed=5, shard_index=shard, shard_count=2,
                              num_threads=0):
      seen += [float(v) for v in b["features"][:, 0, 0, 0]]
  assert len(seen) == len(src) == len(set(seen))


def test_evaluation_batches_keep_the_remainder(prepared):
  sizes = [b["label"].shape[0] for b in pipeline.batches(
      prepared.sources["evaluate"], 5, shuffle=False, drop_remainder=False)]
  assert sizes == [5, 5, 2]


def test_failed_extraction_is_reported_not_silent(tmp_path, monkeypatch):
  root = testing.write_dcase2018(tmp_path / "d", clips=9, seconds=0.3)
  clip = dcase.load(root, progress=False).splits["train"][1]
  victim = clip.file
  real = F.extract

  def failing(path, config):  # a file that passes the header check but will not decode
    if str(path) == str(victim):
      raise ValueError("codec error")
    return real(path, config)

  monkeypatch.setattr(F, "extract", failing)
  with pytest.raises(dcase.DataError) as e:  # file:line, like every other data problem
    pipeline.prepare(root, features=SMALL, cache_dir=tmp_path / "c", progress=False, workers=1)
  assert str(e.value.problems[0]) == (f"{root / 'meta.csv'}:{clip.line}: {clip.path}: features "
                                      "failed: ValueError: codec error")
  assert "--skip-bad" in e.value.message(cli=True)
  with pytest.warns(dcase.SkippedDataWarning, match=r"(?s)left out 1 clip.*codec error"):
    data = pipeline.prepare(root, features=SMALL, cache_dir=tmp_path / "c", progress=False,
                            workers=1, on_error="skip")
  assert len(data.sources["train"]) == 5 and data.skipped[0][0] == str(victim)


def test_default_root_is_the_synthetic_set(tmp_path, monkeypatch):
  monkeypatch.setenv("HSPG_DATA_DIR", str(tmp_path / "data"))
  root = synthetic.make_default(progress=False, clips_per_class=2, locations_per_class=2,
                                evaluate_locations=1, clip_seconds=0.2)
  assert root.parent == tmp_path / "data" and root.name.startswith("synthetic-")
  assert dcase.load(root, progress=False).layout == "dcase2018"


def test_damaged_cache_entry_is_recomputed_on_read(prepared):
  src = prepared.sources["train"]
  good = src[1]["features"].copy()
  entry = Path(src.entries[1])
  raw = bytearray(entry.read_bytes())
  raw[-100:-12] = b"\xff" * 88  # flip data bytes, same size
  entry.write_bytes(bytes(raw))
  with pytest.warns(RuntimeWarning, match="corrupt feature cache entry"):
    again = src[1]["features"]
  np.testing.assert_array_equal(again, good)
  np.testing.assert_array_equal(prepared.cache.load(entry), good)  # healed on disk


def test_damaged_statistics_file_is_recomputed(prepared, tmp_path):
  stats_file = next(prepared.cache.dir.glob("stats-*.npz"))
  stats_file.write_bytes(b"\0" * stats_file.stat().st_size)
  with pytest.warns(RuntimeWarning, match="not an intact statistics file.*recomputing"):
    stats = pipeline._train_stats(prepared.cache, prepared.sources["train"], progress=False)
  np.testing.assert_allclose(stats.mean, prepared.stats.mean, rtol=1e-6)
  F.NormStats.load(stats_file)  # rewritten intact


def test_batch_size_larger_than_the_split_is_an_error(prepared):
  src = prepared.sources["evaluate"]  # 12 clips
  with pytest.raises(ValueError, match="batch_size=13 is larger than the 12 examples"):
    pipeline.batches(src, 13)
  with pytest.raises(ValueError, match="on shard 1 of 2"):
    pipeline.batches(src, 7, shard_index=1, shard_count=2)
  assert [b["label"].shape[0] for b in pipeline.batches(src, 13, drop_remainder=False)] == [12]
  for kwargs, needle in [(dict(batch_size=0), "batch_size must be a positive"),
                         (dict(batch_size=True), "batch_size must be a positive"),
                         (dict(batch_size=2, shard_index=2, shard_count=2), "shard_index"),
                         (dict(batch_size=2, shard_count=0), "shard_count")]:
    with pytest.raises(ValueError, match=needle):
      pipeline.batches(src, **kwargs)


def test_prepare_needs_no_main_guard(tmp_path):
  # Workers that re-ran this script (multiprocessing's spawn/forkserver) would
  # call prepare() again inside themselves and crash.
  root = testing.write_dcase2018(tmp_path / "d", clips=6, seconds=0.3)
  script = tmp_path / "unguarded.py"
  script.write_text(textwrap.dedent(f"""
      import warnings
      warnings.simplefilter("ignore")
      from experiments.data import features, pipeline
      data = pipeline.prepare({str(root)!r}, features=features.logmel(16),
                              cache_dir={str(tmp_path / "cache")!r}, workers=2,
                              progress=False)
      print("workers", data.extraction.workers, "train", len(data.sources["train"]))
  """))
  out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["workers", "2", "train", "4"]
