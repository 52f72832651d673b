"""TFDS builders (manual download, array_record) read back without TensorFlow."""

import importlib.util
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from experiments.data import cache as cache_lib  # noqa: E402
from experiments.data import dcase  # noqa: E402
from experiments.data import features as F  # noqa: E402
from experiments.data import pipeline  # noqa: E402
from experiments.data import synthetic  # noqa: E402
from experiments.data import testing  # noqa: E402
from experiments.data import tfds_builders  # noqa: E402


def _build(builder, manual_dir):
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


TF_INSTALLED = importlib.util.find_spec("tensorflow") is not None
# Short test clips are far from DCASE's documented 10 s (tested in test_data_layout).
pytestmark = pytest.mark.filterwarnings("ignore::experiments.data.dcase.AudioFormatWarning")


@pytest.mark.skipif(TF_INSTALLED, reason="TensorFlow is installed here; the TF-free path "
                    "is proven where it is absent (the project's dev environment)")
def test_tensorflow_is_not_installed():
  # Everything below builds and reads data sets in an environment without TF.
  assert "tensorflow" not in sys.modules


def test_dcase2018_builder(tmp_path):
  manual = tmp_path / "manual"
  root = testing.write_dcase2018(manual / "TUT-urban-acoustic-scenes-2018-development",
                                 clips=12, seconds=0.3)
  builder = tfds_builders.Dcase2018(data_dir=tmp_path / "tfds", config="logmel128",
                                    cache_dir=tmp_path / "cache", workers=1)
  _build(builder, manual)
  assert builder.info.file_format.value == "array_record"
  assert list(builder.data_path.glob("*.array_record-*"))
  # Fold-1 test lists the evaluate clips again: not stored twice.
  assert set(builder.info.splits) == {"train", "evaluate"}

  ds = tfds.data_source("dcase2018/logmel128", split="train", data_dir=tmp_path / "tfds",
                        download=False)
  assert len(ds) == 8
  ex = ds[0]
  assert ex["features"].shape == (128, 1 + int(0.3 * 22050) // 512, 2)
  assert ex["features"].dtype == np.float32
  names = builder.info.features["label"].names
  assert tuple(names) == dcase.KNOWN_CLASSES["dcase2018"]
  # Same numbers as the features computed straight from the file (up to BLAS
  # rounding: the cache computes with one BLAS thread).
  path = root / ex["filename"].decode()
  np.testing.assert_allclose(ex["features"], F.extract(path, F.logmel(128)), rtol=1e-5,
                             atol=1e-5)
  assert names[ex["label"]] == ex["filename"].decode().split("/")[1].split("-")[0]

  # Training statistics stored in the metadata equal the ones from the cache.
  source, stats, classes = pipeline.tfds_source("dcase2018/logmel128", "train",
                                                data_dir=tmp_path / "tfds")
  loaded = dcase.load(root, progress=False)
  cache = cache_lib.FeatureCache(F.logmel(128), tmp_path / "cache")
  ref = F.norm_stats(cache.load(f) for f in loaded.files("train"))
  np.testing.assert_allclose(stats.mean, ref.mean, rtol=1e-5)
  np.testing.assert_allclose(stats.std, ref.std, rtol=1e-5)
  batch = next(iter(pipeline.batches(source, 4, stats=stats, seed=0)))
  assert batch["features"].shape == (4, 128, 13, 2) and batch["label"].dtype == np.int32
  assert TF_INSTALLED or "tensorflow" not in sys.modules


def test_dcase2017_builder_folds_stored_once(tmp_path):
  manual = tmp_path / "manual"
  testing.write_dcase2017(manual / "TUT-acoustic-scenes-2017-development", clips=12,
                          seconds=0.3)
  evaluation = testing.write_dcase2017(manual / "TUT-acoustic-scenes-2017-evaluation",
                                       clips=4, folds=1, seconds=0.3)
  setup = evaluation / "evaluation_setup"
  (setup / "fold1_evaluate.txt").rename(setup / "evaluate.txt")
  (setup / "fold1_test.txt").rename(setup / "test.txt")
  (setup / "fold1_train.txt").unlink()
  builder = tfds_builders.Dcase2017(data_dir=tmp_path / "tfds", config="logmel128",
                                    cache_dir=tmp_path / "cache", workers=1)
  _build(builder, manual)
  splits = builder.info.splits
  assert {s: splits[s].num_examples for s in splits} == {
      "fold1_evaluate": 3, "fold2_evaluate": 3, "fold3_evaluate": 3, "fold4_evaluate": 3,
      "evaluation": 4}
  meta = builder.info.metadata
  assert meta["folds"]["fold2"]["train"] == "fold1_evaluate+fold3_evaluate+fold4_evaluate"

  train, stats2, _ = pipeline.tfds_source("dcase2017/logmel128", "train", fold=2,
                                          data_dir=tmp_path / "tfds")
  evaluate, _, _ = pipeline.tfds_source("dcase2017/logmel128", "evaluate", fold=2,
                                        data_dir=tmp_path / "tfds")
  assert (len(train), len(evaluate)) == (9, 3)
  names = {train.source[i]["filename"] for i in range(len(train))}
  assert not names & {evaluate.source[i]["filename"] for i in range(len(evaluate))}
  _, stats3, _ = pipeline.tfds_source("dcase2017/logmel128", "train", fold=3,
                                      data_dir=tmp_path / "tfds")
  assert not np.allclose(stats2.mean, stats3.mean)  # per-fold training statistics
  sliced, _, _ = pipeline.tfds_source("dcase2017/logmel128", "train[:1]", fold=2,
                                      data_dir=tmp_path / "tfds")
  assert len(sliced) == 3  # the slice applies to each of the three folds


def test_builder_for_any_root_reads_back_from_directory(tmp_path):
  root = synthetic.make_default(tmp_path / "synthetic", progress=False, clips_per_class=4,
                                locations_per_class=2, evaluate_locations=1, clip_seconds=0.5)
  builder = tfds_builders.builder_for_root(root, data_dir=tmp_path / "tfds",
                                           features=F.logmel(32), cache_dir=tmp_path / "cache",
                                           workers=1)
  _build(builder, root)
  ro = tfds.builder_from_directory(builder.data_dir)
  assert set(ro.info.features["label"].names) == set(synthetic.CLASSES)
  source, stats, classes = pipeline.tfds_source(str(builder.data_dir), "evaluate")
  assert len(source) == 12 and stats is not None and len(classes) == 6
  batches = list(pipeline.batches(source, 5, stats=stats, shuffle=False, drop_remainder=False))
  assert [b["features"].shape[0] for b in batches] == [5, 5, 2]


def test_manual_dir_without_data_explains_what_to_do(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "README").write_text("nothing here")
  builder = tfds_builders.Dcase2018(data_dir=tmp_path / "tfds", config="logmel128")
  with pytest.raises(dcase.DataError, match=r"(?s)no meta\.csv found.*TUT Urban Acoustic"):
    _build(builder, manual)


def test_bad_input_fails_the_build_with_file_and_line(tmp_path):
  manual = tmp_path / "manual"
  root = testing.write_dcase2018(manual, clips=6, seconds=0.3)
  victim = root / (root / "meta.csv").read_text().splitlines()[3].split("\t")[0]
  victim.unlink()
  builder = tfds_builders.Dcase2018(data_dir=tmp_path / "tfds", config="logmel128",
                                    cache_dir=tmp_path / "cache", workers=1)
  with pytest.raises(dcase.DataError, match=r"meta\.csv:4: .*audio file not found"):
    _build(builder, manual)
  # Nothing half-built is left to be read later ("splits is empty").
  assert not (tmp_path / "tfds").exists()


def test_failed_build_keeps_what_was_there(tmp_path):
  manual = tmp_path / "manual"
  root = testing.write_dcase2018(manual, clips=6, seconds=0.3)
  data_dir = tmp_path / "tfds"
  _build(tfds_builders.Dcase2018(data_dir=data_dir, config="logmel128",
                                 cache_dir=tmp_path / "cache", workers=1), manual)
  built = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*"))
  meta = root / "meta.csv"
  lines = meta.read_text().splitlines()
  lines[2] = lines[2].replace("\tshopping_mall\t", "\tshopping-mall\t")  # a bad label
  meta.write_text("\n".join(lines) + "\n")
  with pytest.raises(dcase.DataError, match="shopping-mall"):
    _build(tfds_builders.Dcase2018(data_dir=data_dir, config="cp_resnet",
                                   cache_dir=tmp_path / "cache", workers=1), manual)
  assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*")) == built
  ro = tfds.builder_from_directory(data_dir / "dcase2018/logmel128/1.0.0")
  assert ro.info.splits["train"].num_examples == 4
