"""DCASE layout readers: good data in both layouts, and every kind of bad input."""

import re

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from experiments.data import dcase  # noqa: E402
from experiments.data import testing  # noqa: E402

K17 = dcase.KNOWN_CLASSES["dcase2017"]
K18 = dcase.KNOWN_CLASSES["dcase2018"]


@pytest.fixture
def d17(tmp_path):
  return testing.write_dcase2017(tmp_path / "tut2017", clips=8)


@pytest.fixture
def d18(tmp_path):
  return testing.write_dcase2018(tmp_path / "tut2018", clips=9)


def _lines(path):
  return path.read_text().splitlines()


def _write_lines(path, lines):
  path.write_text("\n".join(lines) + "\n")


def _single_problem(excinfo):
  problems = excinfo.value.problems
  assert len(problems) == 1, problems
  return problems[0]


# -- good data ----------------------------------------------------------------


def test_dcase2017_layout(d17):
  ds = dcase.load(d17, progress=False)
  assert ds.layout == "dcase2017"
  assert ds.classes == K17
  assert len(ds.clips) == 8
  assert [len(ds.splits[s]) for s in ("train", "evaluate", "test")] == [6, 2, 2]
  assert ds.audio.sample_rate == 44100 and ds.audio.channels == 2
  clip = ds.splits["evaluate"][0]
  assert clip.identifier == clip.path.split("/")[1].split("_")[0]
  assert ds.labels("train").dtype == np.int32
  assert [ds.classes[i] for i in ds.labels("train")] == [c.label for c in ds.splits["train"]]
  # Other folds of the same root.
  assert {c.path for c in dcase.load(d17, fold=3, progress=False).splits["evaluate"]} == {
      "audio/a002_0_10.wav", "audio/a006_0_10.wav"}


def test_dcase2018_layout(d18):
  ds = dcase.load(d18, progress=False)
  assert ds.layout == "dcase2018"
  assert ds.classes == K18
  assert [len(ds.splits[s]) for s in ("train", "evaluate", "test")] == [6, 3, 3]
  clip = ds.splits["train"][0]
  assert clip.source_label == "a" and clip.identifier == "city-0"
  assert ds.files("train")[0].is_file()
  assert ds.audio.sample_rate == 48000
  assert "9 clips" in ds.summary()


def test_later_years_csv_fold_files_with_header(d18):
  # DCASE2019+ ships fold1_*.csv with a "filename<TAB>scene_label" header.
  setup = d18 / "evaluation_setup"
  for split in ("train", "evaluate", "test"):
    txt = setup / f"fold1_{split}.txt"
    header = "filename\tscene_label" if split != "test" else "filename"
    _write_lines(setup / f"fold1_{split}.csv", [header] + _lines(txt))
    txt.unlink()
  ds = dcase.load(d18, progress=False)
  assert [len(ds.splits[s]) for s in ("train", "evaluate", "test")] == [6, 3, 3]


def test_own_data_any_layout_infers_classes(tmp_path):
  root = testing.write_dcase2017(tmp_path / "mine", clips=6, folds=2,
                                 classes=["kitchen", "garden", "garage"])
  ds = dcase.load(root, progress=False)
  assert ds.classes == ("garage", "garden", "kitchen")
  explicit = dcase.load(root, classes=["kitchen", "garden", "garage"], progress=False)
  assert explicit.classes == ("kitchen", "garden", "garage")


def test_detects_layout_and_refuses_ambiguity(d17, d18):
  assert dcase.detect_layout(d17) == "dcase2017"
  assert dcase.detect_layout(d18) == "dcase2018"
  (d17 / "meta.csv").write_text("filename\tscene_label\n")
  with pytest.raises(dcase.DataError, match="both meta.txt and meta.csv"):
    dcase.detect_layout(d17)
  assert dcase.load(d17, layout="dcase2017", progress=False).layout == "dcase2017"
  with pytest.raises(dcase.DataError, match="no meta.txt"):
    dcase.detect_layout(d17 / "audio")


def test_fold_less_evaluation_set(tmp_path):
  root = testing.write_dcase2017(tmp_path / "eval", clips=4, folds=1)
  setup = root / "evaluation_setup"
  (setup / "fold1_evaluate.txt").rename(setup / "evaluate.txt")
  (setup / "fold1_test.txt").rename(setup / "test.txt")
  (setup / "fold1_train.txt").unlink()
  ds = dcase.load(root, fold=None, progress=False)
  assert sorted(ds.splits) == ["evaluate", "test"] and len(ds.splits["evaluate"]) == 4
  with pytest.raises(dcase.DataError, match="fold1_train.txt: split file missing"):
    dcase.load(root, progress=False)


# -- bad input: every error names the file and the line -------------------------


def test_missing_audio_file(d17):
  (d17 / "audio/a003_0_10.wav").unlink()
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, progress=False)
  p = _single_problem(e)
  assert p.file.endswith("meta.txt") and p.line == 4
  assert "a003_0_10.wav" in p.message and "not found" in p.message
  assert re.search(r"meta\.txt:4: audio/a003_0_10\.wav", str(e.value))


def test_unreadable_audio(d18):
  path = d18 / _lines(d18 / "meta.csv")[2].split("\t")[0]
  path.write_bytes(b"this is not a wav file" * 10)
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d18, progress=False)
  p = _single_problem(e)
  assert p.file.endswith("meta.csv") and p.line == 3 and "unreadable audio" in p.message


def test_truncated_audio(d18):
  rel = _lines(d18 / "meta.csv")[4].split("\t")[0]
  data = (d18 / rel).read_bytes()
  (d18 / rel).write_bytes(data[: len(data) // 2])
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d18, progress=False)
  p = _single_problem(e)
  assert p.line == 5 and rel in p.message and "truncated" in p.message


def test_short_clip_against_explicit_duration(d18):
  rel = _lines(d18 / "meta.csv")[1].split("\t")[0]
  testing.write_wav(d18 / rel, 0.1, 48000)  # a complete file, just too short
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d18, audio=dcase.AudioSpec(duration=0.2), progress=False)
  p = _single_problem(e)
  assert p.line == 2 and "0.100 s long, expected 0.200 s" in p.message


@pytest.mark.parametrize("kwargs, needle", [
    (dict(sample_rate=22050), "sample rate 22050 Hz, expected 44100 Hz"),
    (dict(sample_rate=44100, channels=1), "1 channel(s), expected 2"),
])
def test_unexpected_rate_or_channels(d17, kwargs, needle):
  testing.write_wav(d17 / "audio/a005_0_10.wav", 0.2, **kwargs)
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, progress=False)
  p = _single_problem(e)
  assert p.line == 6 and needle in p.message and "a005" in p.message


def test_explicit_audio_spec(d18):
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d18, audio=dcase.AudioSpec(sample_rate=44100), progress=False)
  assert len(e.value.problems) == 9  # every clip, each on its own meta line
  assert sorted(p.line for p in e.value.problems) == list(range(2, 11))


def test_fold_file_names_clip_missing_from_meta(d18):
  train = d18 / "evaluation_setup/fold1_train.txt"
  lines = _lines(train)
  lines.insert(2, "audio/ghost-city-9-9-a.wav\tairport")
  _write_lines(train, lines)
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d18, progress=False)
  p = _single_problem(e)
  assert p.file.endswith("fold1_train.txt") and p.line == 3
  assert "ghost-city-9-9-a.wav is not in the meta file" in p.message


def test_empty_split(d17):
  (d17 / "evaluation_setup/fold1_evaluate.txt").write_text("\n")
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, progress=False)
  p = _single_problem(e)
  assert p.file.endswith("fold1_evaluate.txt") and p.line == 1 and "is empty" in p.message


def test_label_outside_class_list_in_meta(d18):
  meta = d18 / "meta.csv"
  lines = _lines(meta)
  lines[6] = lines[6].replace("\tstreet_traffic\t", "\tstreet-traffic\t")  # a typo
  _write_lines(meta, lines)
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d18, progress=False)
  lines_hit = sorted((p.file.rsplit("/", 1)[-1], p.line) for p in e.value.problems)
  # The meta line, and the evaluate line whose label now disagrees with it.
  assert lines_hit == [("fold1_evaluate.txt", 2), ("meta.csv", 7)]
  assert "meta.csv:7: audio/street_traffic-city-2-5-a.wav: label 'street-traffic' is not in " \
      "the class list" in str(e.value)


def test_label_outside_explicit_class_list(d17):
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, classes=K17[1:], progress=False)  # no "beach": clip a000
  where = sorted((p.file.rsplit("/", 1)[-1], p.line) for p in e.value.problems)
  assert where == [("fold1_evaluate.txt", 1), ("meta.txt", 1)]
  assert all("'beach' is not in the class list" in p.message for p in e.value.problems)


def test_fold_label_disagrees_with_meta(d17):
  ev = d17 / "evaluation_setup/fold1_evaluate.txt"
  lines = _lines(ev)
  path, label = lines[1].split("\t")
  lines[1] = f"{path}\tbeach" if label != "beach" else f"{path}\tbus"
  _write_lines(ev, lines)
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, progress=False)
  p = _single_problem(e)
  assert p.file.endswith("fold1_evaluate.txt") and p.line == 2 and "disagrees" in p.message


def test_malformed_and_duplicate_meta_lines(d17):
  meta = d17 / "meta.txt"
  lines = _lines(meta)
  lines[2] = lines[2].split("\t")[0]  # path only
  lines.append(lines[0])  # duplicate
  _write_lines(meta, lines)
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, progress=False)
  found = {p.line: p.message for p in e.value.problems if p.file.endswith("meta.txt")}
  assert "expected at least 2" in found[3]
  assert "listed twice (first on line 1)" in found[9]


def test_missing_header_in_dcase2018_meta(d18):
  meta = d18 / "meta.csv"
  _write_lines(meta, _lines(meta)[1:])
  with pytest.raises(dcase.DataError, match=r"meta\.csv:1: expected a header"):
    dcase.load(d18, progress=False)


def test_all_problems_reported_together(d17):
  (d17 / "audio/a001_0_10.wav").unlink()
  testing.write_wav(d17 / "audio/a006_0_10.wav", 0.2, 8000)
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, progress=False)
  assert sorted(p.line for p in e.value.problems) == [2, 7]
  assert "2 problem(s)" in str(e.value) and "on_error='skip'" in str(e.value)


# -- opting in to skipping: counted and reported, never silent -------------------


def test_skip_counts_and_reports(d17):
  (d17 / "audio/a001_0_10.wav").unlink()  # fold 2 evaluate
  (d17 / "audio/a004_0_10.wav").write_bytes(b"junk")  # fold 1 evaluate
  with pytest.warns(UserWarning, match="skipped 2 problem line"):
    ds = dcase.load(d17, on_error="skip", progress=False)
  assert ds.report.num_skipped == 2
  assert {p.line for p in ds.report.skipped} == {2, 5}
  assert len(ds.clips) == 6
  assert ds.report.dropped_from_splits == {"train": 1, "evaluate": 1, "test": 1}
  assert len(ds.splits["train"]) == 5 and len(ds.splits["evaluate"]) == 1
  assert "a004_0_10.wav" in ds.report.summary()


def test_skip_never_leaves_an_empty_split(d17):
  for name in ("a000", "a004"):  # both fold-1 evaluate clips
    (d17 / f"audio/{name}_0_10.wav").unlink()
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, on_error="skip", progress=False)
  msg = str(e.value)
  assert "fold1_evaluate.txt:1: split 'evaluate' is empty: all 2 entries were skipped" in msg
  assert "meta.txt:1: audio/a000_0_10.wav" in msg and "meta.txt:5: audio/a004" in msg


def test_no_audio_check_mode_reads_only_text(tmp_path):
  root = testing.write_dcase2018(tmp_path / "noaudio", clips=6, audio=False)
  ds = dcase.load(root, check_audio=False)
  assert ds.audio is None and len(ds.clips) == 6
  with pytest.raises(dcase.DataError) as e:
    dcase.load(root, progress=False)
  assert len(e.value.problems) == 6


def test_24_bit_input_is_read(d17):
  info = sf.info(str(d17 / "audio/a000_0_10.wav"))
  assert info.subtype == "PCM_24"
