"""The data CLI: synth, check, features and tfds-build subcommands."""

import os
from pathlib import Path

import pytest

pytest.importorskip("librosa")

from experiments.data import cli  # noqa: E402
from experiments.data import features as F  # noqa: E402
from experiments.data import pipeline  # noqa: E402
from experiments.data import testing  # noqa: E402

TINY = ["--clips-per-class", "2", "--locations", "2", "--evaluate-locations", "1",
        "--clip-seconds", "0.3"]


def test_help_lists_subcommands(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for cmd in ("synth", "check", "features", "tfds-build"):
    assert cmd in out


def test_synth_then_check_then_features(tmp_path, capsys):
  root = tmp_path / "syn"
  assert cli.main(["synth", "--root", str(root), "--workers", "1"] + TINY) == 0
  assert "6 classes, 12 clips" in capsys.readouterr().out
  assert cli.main(["check", str(root)]) == 0
  captured = capsys.readouterr()
  assert captured.out.startswith("OK:") and "48000 Hz, 2 channel(s), 0.300 s" in captured.out
  assert "fold1_test lists the 6 evaluate clips again without labels" in captured.out
  assert captured.err == ""  # the set declares its 0.3 s format: no format warning
  assert cli.main(["features", str(root), "--kind", "logmel", "--n-mels", "16",
                   "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]) == 0
  out = capsys.readouterr().out
  assert "train 6, evaluate 6; shape (16, 13, 2)" in out  # no "test" split
  assert "note: fold1_test lists the 6 evaluate clips again" in out


def _error_line(capsys) -> str:
  err = capsys.readouterr().err
  assert "Traceback" not in err
  return err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, needle", [
    (["synth", "--sample-rate", "-5"], "argument --sample-rate: must be a positive integer"),
    (["synth", "--clips-per-class", "0"], "argument --clips-per-class: must be a positive"),
    (["synth", "--locations", "4", "--clips-per-class", "3"],
     "argument --clips-per-class: must be at least --locations (4), got 3"),
    (["synth", "--evaluate-locations", "8"], "argument --evaluate-locations: must be smaller"),
    (["synth", "--clip-seconds", "0"], "argument --clip-seconds: must be a positive number"),
    (["synth", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    (["synth", "--workers", "0"], "argument --workers: must be a positive integer"),
    (["features", "{root}", "--n-mels", "0"], "argument --n-mels: must be a positive integer"),
    (["features", "{root}", "--sample-rate", "0"], "argument --sample-rate: must be a positive"),
    (["features", "{root}", "--fold", "0"], "argument --fold: expected a fold number (1, 2, "
     "...) or 'none'"),
    (["features", "{root}", "--classes", ","], "argument --classes: expected comma-separated"),
    (["features", "{root}/nowhere"], "argument root: {root}/nowhere: no such directory"),
    (["features", "{root}", "--cache-dir", "{root}/meta.csv"],
     "argument --cache-dir: {root}/meta.csv exists and is not a directory"),
    (["check", "{root}/meta.csv"], "argument root: {root}/meta.csv: not a directory"),
    (["tfds-build", "custom", "--manual-dir", "{root}/x"], "argument --manual-dir: {root}/x: "
     "no such directory"),
])
def test_bad_arguments_name_the_flag_before_any_work(tmp_path, capsys, argv, needle):
  root = testing.write_dcase2018(tmp_path / "d", clips=3, audio=False)
  argv = [a.format(root=root) for a in argv]
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  line = _error_line(capsys)
  assert line.startswith(f"hspg-data {argv[0]}: error: ") and needle.format(root=root) in line


def _unwritable(tmp_path) -> Path:
  """A folder this process cannot create files in (even as root: /proc refuses)."""
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  if os.access(locked, os.W_OK):  # root ignores mode bits
    if not Path("/proc/self").is_dir():
      pytest.skip("no folder this process cannot write to")
    return Path("/proc/hspg-test/cache")
  return locked / "cache"


def test_unwritable_cache_dir_is_refused_up_front(tmp_path, capsys):
  root = testing.write_dcase2018(tmp_path / "d", clips=3, audio=False)
  target = _unwritable(tmp_path)
  with pytest.raises(SystemExit):
    cli.main(["features", str(root), "--cache-dir", str(target)])
  assert f"argument --cache-dir: cannot write to {target}: " in _error_line(capsys)


def test_synth_refuses_foreign_or_other_roots_naming_the_flags(tmp_path, capsys):
  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("my data")
  with pytest.raises(SystemExit):
    cli.main(["synth", "--root", str(foreign)] + TINY)
  assert "argument --root: " in _error_line(capsys)
  assert (foreign / "notes.txt").read_text() == "my data" and len(list(foreign.iterdir())) == 1

  root = tmp_path / "syn"
  assert cli.main(["synth", "--root", str(root), "--workers", "1"] + TINY) == 0
  capsys.readouterr()
  with pytest.raises(SystemExit):
    cli.main(["synth", "--root", str(root), "--seed", "3", "--workers", "1"] + TINY)
  line = _error_line(capsys)
  assert "pass --overwrite to replace it" in line and "overwrite=True" not in line
  assert cli.main(["synth", "--root", str(root), "--seed", "3", "--overwrite",
                   "--workers", "1"] + TINY) == 0


def test_check_reports_file_and_line(tmp_path, capsys):
  root = testing.write_dcase2017(tmp_path / "d", clips=8)
  (root / "audio/a002_0_10.wav").unlink()
  assert cli.main(["check", str(root)]) == 1
  err = capsys.readouterr().err
  assert "meta.txt:3: audio/a002_0_10.wav: audio file not found" in err
  assert "--skip-bad" in err and "on_error" not in err and "Traceback" not in err
  assert cli.main(["check", str(root), "--skip-bad"]) == 0
  captured = capsys.readouterr()
  assert captured.out.count("skipped 1 problem line") == 1  # reported once
  assert "skipped" not in captured.err
  # The short test clips are reported as one plain warning line, not a Python warning.
  assert captured.err.startswith("hspg-data: warning: ") and "10 s" in captured.err


def test_fold_hint_names_the_command_line_option(tmp_path, capsys):
  root = testing.write_dcase2017(tmp_path / "eval", clips=4, folds=1, audio=False)
  setup = root / "evaluation_setup"
  (setup / "fold1_test.txt").rename(setup / "test.txt")
  for name in ("fold1_train.txt", "fold1_evaluate.txt"):
    (setup / name).unlink()
  assert cli.main(["check", str(root), "--no-audio"]) == 1
  err = capsys.readouterr().err
  assert "--fold none" in err and "fold=None" not in err
  assert cli.main(["check", str(root), "--no-audio", "--fold", "none"]) == 0


def test_feature_failure_is_a_file_line_message(tmp_path, capsys, monkeypatch):
  root = testing.write_dcase2018(tmp_path / "d", clips=6, seconds=0.3)
  real = F.extract

  def failing(path, config):
    if "city-0-1" in str(path):
      raise ValueError("codec error")
    return real(path, config)

  monkeypatch.setattr(F, "extract", failing)
  argv = ["features", str(root), "--kind", "logmel", "--n-mels", "16", "--cache-dir",
          str(tmp_path / "cache"), "--workers", "1"]
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert "Traceback" not in err and "RuntimeError" not in err
  assert "meta.csv:3: audio/shopping_mall-city-0-1-a.wav: features failed: ValueError: codec " \
      "error" in err and "--skip-bad" in err
  assert cli.main(argv + ["--skip-bad"]) == 0
  out = capsys.readouterr().out
  assert out.count("left out 1 clip(s) whose features failed") == 1


def test_ctrl_c_is_one_line(tmp_path, capsys, monkeypatch):
  root = testing.write_dcase2018(tmp_path / "d", clips=3, audio=False)

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(pipeline, "prepare", interrupted)
  assert cli.main(["features", str(root), "--cache-dir", str(tmp_path / "c")]) == 130
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("hspg-data: interrupted")


def test_tfds_build_custom(tmp_path, capsys):
  root = tmp_path / "syn"
  cli.main(["synth", "--root", str(root), "--workers", "1"] + TINY)
  assert cli.main(["tfds-build", "custom", "--manual-dir", str(root), "--data-dir",
                   str(tmp_path / "tfds"), "--config", "logmel128", "--cache-dir",
                   str(tmp_path / "cache"), "--workers", "1"]) == 0
  out = capsys.readouterr().out
  assert "train: 6 examples" in out and "evaluate: 6 examples" in out


def test_failed_tfds_build_names_the_flag_and_leaves_nothing(tmp_path, capsys):
  root = testing.write_dcase2018(tmp_path / "manual", clips=6, seconds=0.3)
  meta = root / "meta.csv"
  meta.write_text(meta.read_text().replace("\tshopping_mall\t", "\tshopping-mall\t"))
  data_dir = tmp_path / "tfds"
  assert cli.main(["tfds-build", "dcase2018", "--manual-dir", str(root), "--data-dir",
                   str(data_dir), "--config", "logmel128", "--cache-dir",
                   str(tmp_path / "cache"), "--workers", "1"]) == 1
  err = capsys.readouterr().err
  assert "meta.csv:3: audio/shopping_mall-city-0-1-a.wav: label 'shopping-mall'" in err
  assert "--skip-bad" in err and "on_error" not in err and "Traceback" not in err
  assert list(data_dir.iterdir()) == []  # created by the argument check, left empty
