"""The data CLI: synth, check, features and tfds-build subcommands."""

import pytest

pytest.importorskip("librosa")

from experiments.data import cli  # noqa: E402
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
  out = capsys.readouterr().out
  assert out.startswith("OK:") and "48000 Hz, 2 channel(s), 0.300 s" in out
  assert cli.main(["features", str(root), "--kind", "logmel", "--n-mels", "16",
                   "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]) == 0
  assert "shape (16, 13, 2)" in capsys.readouterr().out


def test_check_reports_file_and_line(tmp_path, capsys):
  root = testing.write_dcase2017(tmp_path / "d", clips=8)
  (root / "audio/a002_0_10.wav").unlink()
  assert cli.main(["check", str(root)]) == 1
  assert "meta.txt:3: audio/a002_0_10.wav: audio file not found" in capsys.readouterr().err
  with pytest.warns(UserWarning, match="skipped 1"):
    assert cli.main(["check", str(root), "--skip-bad"]) == 0
  assert "skipped 1 problem line" in capsys.readouterr().out


def test_tfds_build_custom(tmp_path, capsys):
  root = tmp_path / "syn"
  cli.main(["synth", "--root", str(root), "--workers", "1"] + TINY)
  assert cli.main(["tfds-build", "custom", "--manual-dir", str(root), "--data-dir",
                   str(tmp_path / "tfds"), "--config", "logmel128", "--cache-dir",
                   str(tmp_path / "cache"), "--workers", "1"]) == 0
  out = capsys.readouterr().out
  assert "train: 6 examples" in out and "evaluate: 6 examples" in out
