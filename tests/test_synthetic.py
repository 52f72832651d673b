"""The synthetic scene set: layout, reproducibility, idempotence and difficulty."""

import json

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("librosa")

from experiments.data import cache as cache_lib  # noqa: E402
from experiments.data import dcase  # noqa: E402
from experiments.data import features as F  # noqa: E402
from experiments.data import synthetic  # noqa: E402

TINY = dict(clips_per_class=4, locations_per_class=2, evaluate_locations=1, clip_seconds=0.5)


def _tree(root):
  return {p.relative_to(root).as_posix(): p.read_bytes()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_dcase2018_layout_and_audio(tmp_path):
  root = synthetic.make_default(tmp_path / "s", progress=False, **TINY)
  ds = dcase.load(root, progress=False)
  assert ds.layout == "dcase2018"
  assert set(ds.classes) == set(synthetic.CLASSES)
  assert (ds.audio.sample_rate, ds.audio.channels, ds.audio.duration) == (48000, 2, 0.5)
  assert len(ds.splits["train"]) == 12 and len(ds.splits["evaluate"]) == 12
  assert {c.path for c in ds.test_list} == {c.path for c in ds.splits["evaluate"]}
  # Locations (identifiers) never straddle train and evaluate.
  train_ids = {c.identifier for c in ds.splits["train"]}
  assert not train_ids & {c.identifier for c in ds.splits["evaluate"]}
  header = (root / "meta.csv").read_text().splitlines()[0]
  assert header == "filename\tscene_label\tidentifier\tsource_label"
  assert sf.info(str(ds.files("train")[0])).subtype == "PCM_16"


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path):
  a = synthetic.make_default(tmp_path / "a", seed=3, progress=False, workers=1, **TINY)
  b = synthetic.make_default(tmp_path / "b", seed=3, progress=False, workers=2, **TINY)
  c = synthetic.make_default(tmp_path / "c", seed=4, progress=False, workers=1, **TINY)
  assert _tree(a) == _tree(b)
  wav = "audio/park_birds-loc00-000-a.wav"
  assert (a / wav).read_bytes() != (c / wav).read_bytes()


def test_idempotent_resumable_and_careful(tmp_path):
  root = synthetic.make_default(tmp_path / "s", progress=False, **TINY)
  before = _tree(root)
  stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")}
  assert synthetic.make_default(root, progress=False, **TINY) == root
  assert all(p.stat().st_mtime_ns == m for p, m in stamps.items())  # nothing rewritten

  # An interrupted run: manifest not yet written, some clips missing.
  config = json.loads((root / synthetic.MANIFEST).read_text())["config"]
  (root / synthetic.MANIFEST).unlink()
  (root / synthetic._IN_PROGRESS).write_text(json.dumps(config, sort_keys=True))
  missing = sorted(root.rglob("*.wav"))[::3]
  for p in missing:
    p.unlink()
  synthetic.make_default(root, progress=False, **TINY)
  assert _tree(root) == before
  kept = [p for p in stamps if p not in missing]
  assert all(p.stat().st_mtime_ns == stamps[p] for p in kept)

  with pytest.raises(FileExistsError, match="other parameters"):
    synthetic.make_default(root, seed=1, progress=False, **TINY)
  synthetic.make_default(root, seed=1, progress=False, overwrite=True, **TINY)
  assert _tree(root) != before

  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("my data")
  with pytest.raises(FileExistsError, match="not a synthetic data set"):
    synthetic.make_default(foreign, progress=False, **TINY)


def test_config_validation():
  with pytest.raises(ValueError, match="unknown synthetic classes"):
    synthetic.SyntheticConfig(classes=("jungle",))
  with pytest.raises(ValueError, match="evaluate_locations"):
    synthetic.SyntheticConfig(locations_per_class=2, evaluate_locations=2)


def test_render_is_bounded_and_stereo():
  y = synthetic.render_clip(synthetic.SyntheticConfig(clip_seconds=0.5), "reverberant_hall", 0, 0)
  assert y.shape == (24000, 2) and y.dtype == np.float32
  assert np.abs(y).max() <= 0.98 + 1e-6 and np.abs(y).max() > 1e-3
  assert not np.allclose(y[:, 0], y[:, 1])


def _mean_logmel_accuracy(root, cache_dir, rich=False):
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top

  ds = dcase.load(root, progress=False)
  cache = cache_lib.FeatureCache(F.logmel(64), cache_dir)
  cache.extract(ds.files("train") + ds.files("evaluate"), progress=False)

  def stats(split):
    rows = []
    for f in ds.files(split):
      x = cache.load(f).mean(-1)  # (mel, frames)
      parts = [x.mean(1)]
      if rich:  # temporal structure: fluctuation and frame-to-frame change per band
        parts += [x.std(1), np.abs(np.diff(x, axis=1)).mean(1)]
      rows.append(np.concatenate(parts))
    return np.array(rows)

  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
  clf.fit(stats("train"), ds.labels("train"))
  return clf.score(stats("evaluate"), ds.labels("evaluate"))


def test_linear_classifier_on_mean_logmel_does_not_saturate(tmp_path):
  root = synthetic.make_default(tmp_path / "s", progress=False, clips_per_class=30,
                                locations_per_class=5, evaluate_locations=1, clip_seconds=2.0)
  acc = _mean_logmel_accuracy(root, tmp_path / "cache")
  chance = 1 / len(synthetic.CLASSES)
  assert chance + 0.15 < acc < 0.9, acc


def test_default_set_has_structure_beyond_the_mean_spectrum(tmp_path):
  """On the default set, temporal statistics beat the mean spectrum clearly."""
  root = synthetic.make_default(tmp_path / "s", progress=False)
  mean_acc = _mean_logmel_accuracy(root, tmp_path / "cache")
  rich_acc = _mean_logmel_accuracy(root, tmp_path / "cache", rich=True)
  assert 0.35 < mean_acc < 0.9 and rich_acc > mean_acc + 0.08, (mean_acc, rich_acc)
