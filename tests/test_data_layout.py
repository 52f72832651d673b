"""DCASE layout readers: good data in both layouts, and every kind of bad input."""

import re
import warnings

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from experiments.data import dcase  # noqa: E402
from experiments.data import testing  # noqa: E402

K17 = dcase.KNOWN_CLASSES["dcase2017"]
K18 = dcase.KNOWN_CLASSES["dcase2018"]

# The tiny test sets have 0.2 s clips, far from the documented 10 s; the warning
# this gives is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore::experiments.data.dcase.AudioFormatWarning")


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


def _the_problem(root, **kwargs):
  """The one problem ``dcase.load(root)`` raises, and the error itself."""
  with pytest.raises(dcase.DataError) as e:
    dcase.load(root, progress=False, **kwargs)
  return _single_problem(e), e.value


# -- good data ----------------------------------------------------------------


def test_dcase2017_layout(d17):
  ds = dcase.load(d17, progress=False)
  assert ds.layout == "dcase2017"
  assert ds.classes == K17
  assert len(ds.clips) == 8
  assert [len(ds.splits[s]) for s in ("train", "evaluate")] == [6, 2]
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
  assert [len(ds.splits[s]) for s in ("train", "evaluate")] == [6, 3]
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
  assert [len(ds.splits[s]) for s in ("train", "evaluate")] == [6, 3]
  assert len(ds.test_list) == 3


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
  assert sorted(ds.splits) == ["evaluate"] and len(ds.splits["evaluate"]) == 4
  assert ds.test_list_is_evaluate
  with pytest.raises(dcase.DataError, match="fold1_train.txt: split file missing") as e:
    dcase.load(root, progress=False)
  assert "load with fold=None" in str(e.value)
  assert "load with --fold none" in e.value.message(cli=True)


# -- bad input: every error names the file and the line -------------------------


def test_missing_audio_file(d17):
  (d17 / "audio/a003_0_10.wav").unlink()
  p, err = _the_problem(d17)
  assert p.file.endswith("meta.txt") and p.line == 4
  assert "a003_0_10.wav" in p.message and "not found" in p.message
  assert re.search(r"meta\.txt:4: audio/a003_0_10\.wav", str(err))


def test_unreadable_audio(d18):
  path = d18 / _lines(d18 / "meta.csv")[2].split("\t")[0]
  path.write_bytes(b"this is not a wav file" * 10)
  p, err = _the_problem(d18)
  assert p.file.endswith("meta.csv") and p.line == 3 and "unreadable audio" in p.message


def test_truncated_audio(d18):
  rel = _lines(d18 / "meta.csv")[4].split("\t")[0]
  data = (d18 / rel).read_bytes()
  (d18 / rel).write_bytes(data[: len(data) // 2])
  p, err = _the_problem(d18)
  assert p.line == 5 and rel in p.message and "truncated" in p.message


def test_short_clip_against_explicit_duration(d18):
  rel = _lines(d18 / "meta.csv")[1].split("\t")[0]
  testing.write_wav(d18 / rel, 0.1, 48000)  # a complete file, just too short
  p, err = _the_problem(d18, audio=dcase.AudioSpec(duration=0.2))
  assert p.line == 2 and "0.100 s long, expected 0.200 s" in p.message


@pytest.mark.parametrize("kwargs, needle", [
    (dict(sample_rate=22050), "sample rate 22050 Hz, expected 44100 Hz"),
    (dict(sample_rate=44100, channels=1), "1 channel(s), expected 2"),
])
def test_unexpected_rate_or_channels(d17, kwargs, needle):
  testing.write_wav(d17 / "audio/a005_0_10.wav", 0.2, **kwargs)
  p, err = _the_problem(d17)
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
  p, err = _the_problem(d18)
  assert p.file.endswith("fold1_train.txt") and p.line == 3
  assert "ghost-city-9-9-a.wav is not in the meta file" in p.message


def test_empty_split(d17):
  (d17 / "evaluation_setup/fold1_evaluate.txt").write_text("\n")
  p, err = _the_problem(d17)
  assert p.file.endswith("fold1_evaluate.txt") and p.line == 1 and "is empty" in p.message


def test_label_outside_class_list_in_meta(d18):
  meta = d18 / "meta.csv"
  lines = _lines(meta)
  lines[6] = lines[6].replace("\tstreet_traffic\t", "\tstreet-traffic\t")  # a typo
  _write_lines(meta, lines)
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d18, progress=False)
  # The meta line only: the evaluate line that now disagrees with it is a
  # consequence, not a second problem.
  p = _single_problem(e)
  assert (p.file.rsplit("/", 1)[-1], p.line) == ("meta.csv", 7)
  assert "meta.csv:7: audio/street_traffic-city-e5-5-a.wav: label 'street-traffic' is not in " \
      "the class list" in str(e.value)


def test_label_outside_explicit_class_list(d17):
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, classes=K17[1:], progress=False)  # no "beach": clip a000
  p = _single_problem(e)
  assert (p.file.rsplit("/", 1)[-1], p.line) == ("meta.txt", 1)
  assert "'beach' is not in the class list" in p.message


def test_fold_label_disagrees_with_meta(d17):
  ev = d17 / "evaluation_setup/fold1_evaluate.txt"
  lines = _lines(ev)
  path, label = lines[1].split("\t")
  lines[1] = f"{path}\tbeach" if label != "beach" else f"{path}\tbus"
  _write_lines(ev, lines)
  p, err = _the_problem(d17)
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
  assert ds.report.dropped_from_splits == {"train": 1, "evaluate": 1, "test_list": 1}
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


# -- the fold's test list: kept apart, named for what it is ----------------------


def test_test_list_is_not_a_split(d18):
  ds = dcase.load(d18, progress=False)
  assert sorted(ds.splits) == ["evaluate", "train"]
  assert [c.path for c in ds.test_list] == [c.path for c in ds.splits["evaluate"]]
  assert ds.test_list_is_evaluate
  assert "fold1_test lists the 3 evaluate clips again without labels (not a held-out test " \
      "set)" in ds.summary()
  with pytest.raises(KeyError, match="test_list"):
    ds.files("test")


def test_empty_or_missing_test_list_does_not_stop_a_run(d17):
  test = d17 / "evaluation_setup/fold1_test.txt"
  test.write_text("\n")
  ds = dcase.load(d17, progress=False)
  assert ds.test_list == [] and "fold1_test list is empty" in ds.summary()
  test.unlink()
  ds = dcase.load(d17, progress=False)
  assert ds.test_list is None and ds.describe_test_list() == ""


# -- train / evaluate leakage --------------------------------------------------------


def test_clip_on_both_sides_is_an_error(d17):
  ev = d17 / "evaluation_setup/fold1_evaluate.txt"
  train_first = _lines(d17 / "evaluation_setup/fold1_train.txt")[0]  # a001, line 1
  _write_lines(ev, _lines(ev) + [train_first])
  p, err = _the_problem(d17)
  assert p.file.endswith("fold1_evaluate.txt") and p.line == 3
  assert "audio/a001_0_10.wav is in the train split too (fold1_train.txt:1)" in p.message
  assert "overlap='warn'" in str(err) and "--allow-overlap" in err.message(cli=True)


def test_recording_identifier_on_both_sides_is_an_error(d18):
  meta = d18 / "meta.csv"
  lines = _lines(meta)
  lines[3] = lines[3].replace("\tcity-e2\t", "\tcity-0\t")  # evaluate clip 2, a train location
  _write_lines(meta, lines)
  p, err = _the_problem(d18)
  assert p.file.endswith("fold1_evaluate.txt") and p.line == 1
  assert "recording identifier 'city-0' is in the train split too" in p.message
  assert "fold1_train.txt:1" in p.message

  with pytest.warns(dcase.SplitOverlapWarning, match="1 row"):
    ds = dcase.load(d18, overlap="warn", progress=False)
  assert len(ds.splits["evaluate"]) == 3
  with pytest.warns(dcase.SkippedDataWarning):
    ds = dcase.load(d18, on_error="skip", progress=False)
  assert len(ds.splits["evaluate"]) == 2 and len(ds.test_list) == 3
  assert ds.report.dropped_from_splits["evaluate"] == 1


# -- file encodings and separators ----------------------------------------------------


def test_byte_order_marks_are_accepted(d17, d18):
  for path in [d17 / "meta.txt", d17 / "evaluation_setup/fold1_train.txt",
               d18 / "meta.csv", d18 / "evaluation_setup/fold1_evaluate.txt"]:
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
  ds17 = dcase.load(d17, progress=False)
  assert len(ds17.clips) == 8 and len(ds17.splits["train"]) == 6  # first rows kept
  assert ds17.splits["train"][0].path == "audio/a001_0_10.wav"
  ds18 = dcase.load(d18, progress=False)
  assert len(ds18.clips) == 9 and len(ds18.splits["evaluate"]) == 3


@pytest.mark.parametrize("sep, name", [(",", "commas"), (" ", "spaces")])
def test_meta_file_with_wrong_separator_is_named_once(d18, sep, name):
  meta = d18 / "meta.csv"
  meta.write_text(meta.read_text().replace("\t", sep))
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d18, progress=False)
  p = _single_problem(e)  # not one error per row, nor the fold files' consequences
  assert p.file.endswith("meta.csv")
  assert f"the whole file is separated by {name}, not tabs" in p.message


def test_fold_file_with_wrong_separator_is_named_once(d17):
  train = d17 / "evaluation_setup/fold1_train.txt"
  train.write_text(train.read_text().replace("\t", ","))
  p, err = _the_problem(d17)
  assert p.file.endswith("fold1_train.txt") and "separated by commas" in p.message


def test_meta_problems_come_first(d17):
  meta = d17 / "meta.txt"
  lines = _lines(meta)
  lines[7] = lines[7].split("\t")[0]  # a meta row without a label (clip a007, in train)
  _write_lines(meta, lines)
  ev = d17 / "evaluation_setup/fold1_evaluate.txt"
  _write_lines(ev, ["audio/ghost.wav\tbeach"] + _lines(ev))
  with pytest.raises(dcase.DataError) as e:
    dcase.load(d17, progress=False)
  where = [(p.file.rsplit("/", 1)[-1], p.line) for p in e.value.problems]
  # The meta row once (its fold-file rows are its consequences), then the fold file.
  assert where == [("meta.txt", 8), ("fold1_evaluate.txt", 1)]
  assert str(e.value).index("meta.txt:8") < str(e.value).index("fold1_evaluate.txt:1")


# -- skip counts ---------------------------------------------------------------------


def test_skip_counts_fold_rows_and_each_bad_meta_row_once(d17):
  meta = d17 / "meta.txt"
  lines = _lines(meta)
  lines[6] = "audio/a006_0_10.wav\tbeech\ta006"  # an unknown label
  _write_lines(meta, lines)
  train = d17 / "evaluation_setup/fold1_train.txt"
  _write_lines(train, _lines(train) + ["audio/ghost.wav\tbus"])  # a row naming no clip
  with pytest.warns(dcase.SkippedDataWarning) as rec:
    ds = dcase.load(d17, on_error="skip", progress=False)
  assert len([w for w in rec if w.category is dcase.SkippedDataWarning]) == 1  # one report
  assert [(p.file.rsplit("/", 1)[-1], p.line) for p in ds.report.skipped] == [
      ("meta.txt", 7), ("fold1_train.txt", 7)]
  # fold1_train lists a006 (bad meta row) and the ghost: both rows dropped.
  assert ds.report.dropped_from_splits == {"train": 2, "evaluate": 0, "test_list": 0}
  assert len(ds.splits["train"]) == 5
  assert "skipped 2 problem line(s); entries dropped from the fold lists: train: -2" in \
      ds.report.summary()


# -- the documented audio format ---------------------------------------------------


def test_whole_set_off_the_documented_format_warns_once(tmp_path):
  root = testing.write_dcase2018(tmp_path / "d", clips=6, sample_rate=22050, seconds=0.2)
  with pytest.warns(dcase.AudioFormatWarning) as rec:
    ds = dcase.load(root, progress=False)
  assert len(rec) == 1
  msg = str(rec[0].message)
  assert "22050 Hz instead of 48000 Hz" in msg and "0.2 s long instead of 10 s" in msg
  assert "TUT Urban Acoustic Scenes 2018" in msg
  assert ds.audio.sample_rate == 22050  # still loads: one odd clip is what fails a clip
  # Declaring the format (audio=...) silences it.
  with warnings.catch_warnings():
    warnings.simplefilter("error", dcase.AudioFormatWarning)
    dcase.load(root, audio=dcase.AudioSpec(sample_rate=22050, channels=2, duration=0.2),
               progress=False)


def test_documented_format_gives_no_warning(tmp_path):
  root = testing.write_dcase2017(tmp_path / "d", clips=2, folds=2, seconds=10.0)
  with warnings.catch_warnings():
    warnings.simplefilter("error", dcase.AudioFormatWarning)
    ds = dcase.load(root, progress=False)
  assert ds.audio == dcase.AudioSpec(44100, 2, 10.0)


def test_synthetic_set_declares_its_own_format(tmp_path):
  from experiments.data import synthetic  # pylint: disable=g-import-not-at-top

  root = synthetic.make_default(tmp_path / "s", progress=False, clips_per_class=2,
                                locations_per_class=2, evaluate_locations=1, clip_seconds=0.3)
  with warnings.catch_warnings():
    warnings.simplefilter("error", dcase.AudioFormatWarning)
    dcase.load(root, progress=False)  # 0.3 s at 48 kHz: what its manifest says
  testing.write_wav(next((root / "audio").iterdir()), 0.3, 48000)  # (same format)
  manifest = root / synthetic.MANIFEST
  manifest.write_text(manifest.read_text().replace('"clip_seconds": 0.3', '"clip_seconds": 3.0'))
  with pytest.warns(dcase.AudioFormatWarning, match="declares in its manifest"):
    dcase.load(root, progress=False)


def test_load_argument_errors(d17):
  for kwargs, needle in [(dict(fold=0), "fold must be"), (dict(on_error="ignore"), "on_error"),
                         (dict(overlap="maybe"), "overlap")]:
    with pytest.raises(ValueError, match=needle):
      dcase.load(d17, progress=False, **kwargs)
