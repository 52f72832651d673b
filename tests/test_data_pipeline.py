"""prepare() + grain batches: shapes, normalisation, determinism, sharding, skips."""

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


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  d = tmp_path_factory.mktemp("pipe")
  root = synthetic.make_default(d / "synthetic", progress=False, clips_per_class=4,
                                locations_per_class=2, evaluate_locations=1, clip_seconds=0.5)
  return pipeline.prepare(root, features=SMALL, cache_dir=d / "cache", progress=False)


def test_prepare_gives_sources_stats_and_classes(prepared):
  assert sorted(prepared.sources) == ["evaluate", "test", "train"]
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
  victim = dcase.load(root, progress=False).files("train")[1]
  real = F.extract

  def failing(path, config):  # a file that passes the header check but will not decode
    if str(path) == str(victim):
      raise ValueError("codec error")
    return real(path, config)

  monkeypatch.setattr(F, "extract", failing)
  with pytest.raises(RuntimeError, match=f"{victim.name}: ValueError: codec error"):
    pipeline.prepare(root, features=SMALL, cache_dir=tmp_path / "c", progress=False, workers=1)
  with pytest.warns(UserWarning, match="failed for 1 clip"):
    data = pipeline.prepare(root, features=SMALL, cache_dir=tmp_path / "c", progress=False,
                            workers=1, on_error="skip")
  assert len(data.sources["train"]) == 5 and data.skipped[0][0] == str(victim)


def test_default_root_is_the_synthetic_set(tmp_path, monkeypatch):
  monkeypatch.setenv("HSPG_DATA_DIR", str(tmp_path / "data"))
  root = synthetic.make_default(progress=False, clips_per_class=2, locations_per_class=2,
                                evaluate_locations=1, clip_seconds=0.2)
  assert root.parent == tmp_path / "data" and root.name.startswith("synthetic-")
  assert dcase.load(root, progress=False).layout == "dcase2018"
