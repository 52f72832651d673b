"""experiments.asc.report against fabricated run folders (the RUN_FOLDER contract only)."""

import json
import pathlib
import re

import numpy as np
import pytest

from experiments.asc import report

CLASSES = ("traffic_hum", "busy_street", "park_birds", "quiet_office", "reverberant_hall",
           "rain_on_roof")


def resnet_families(n=30):
  """CP-ResNet-like family names and sizes (``stageS/blockB/convC``, shortcuts ``+N``)."""
  names = ["stem_conv+4"]
  for s, width in ((1, 128), (2, 256), (3, 512)):
    for b in range(1, 6):
      names.append(f"stage{s}/block{b}/conv1")
      if b == 1 and s > 1:
        names.append(f"stage{s}/block{b}/conv2+4")
  while len(names) < n:
    names.append(f"stage4/block{len(names)}/conv1")
  sizes = [128 if "stage1" in m or "stem" in m else 256 if "stage2" in m else 512 for m in names]
  return list(zip(names[:n], sizes[:n]))


def write_run(run_dir, *, model="cp_resnet", optimizer="hspg", lam=1e-3, dataset="synthetic",
              cell=None, seed=0, accuracy=0.7, sparsity=0.5, epochs=20, warmup=8,
              families=None, classes=CLASSES, finished=True, params=(1_000_000, 300_000),
              macs=(2_000_000_000, 500_000_000), batch_size=32, lr=(1e-3, 1e-5),
              direction="sgd", summary=True):
  """Writes config.json, metrics.jsonl and (if ``summary``) summary.json as the engine would.

  Sparsity is 0 up to epoch ``warmup`` and rises to ``sparsity`` after it; the
  summary reports exactly ``accuracy`` and ``sparsity``.
  """
  run_dir = pathlib.Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  families = families if families is not None else resnet_families(6)
  config = {
      "model": {"name": model, "kwargs": {}},
      "optimizer": {"name": optimizer, "direction": direction, "learning_rate": lr[0],
                    "final_learning_rate": lr[1], "reg_strength": lam, "epsilon": 0.0,
                    "warmup_epochs": warmup},
      "data": {"root": "synthetic", "name": dataset},
      "train": {"epochs": epochs, "batch_size": batch_size},
      "seed": seed,
      "cell": cell,
  }
  (run_dir / "config.json").write_text(json.dumps(config, indent=2))
  num_groups = {name: size for name, size in families}
  final_zero = {name: min(size, int(round(sparsity * size * rng.uniform(0.6, 1.4))))
                for name, size in families}
  lines = []
  for e in range(1, epochs + 1):
    progress = 0.0 if e <= warmup else min(1.0, (e - warmup) / max(1, (epochs - warmup) * 0.6))
    zero = {k: int(progress * v) for k, v in final_zero.items()}
    lines.append({
        "epoch": e, "step": 50 * e, "lr": lr[0] + (lr[1] - lr[0]) * (e - 1) / max(epochs - 1, 1),
        "stage": "warmup" if e <= warmup else "half_space",
        "train_loss": 1.8 * np.exp(-e / 6) + 0.3, "train_acc": 0.95 - 0.7 * np.exp(-e / 5),
        "eval_loss": 1.9 * np.exp(-e / 7) + 0.5, "eval_acc": accuracy - 0.5 * np.exp(-e / 5),
        "group_sparsity": sum(zero.values()) / sum(num_groups.values()),
        "zero_groups": zero, "num_groups": num_groups, "skipped_steps": int(e == 3),
        "examples_per_sec": 1500.0 + e, "epoch_time_s": 12.5,
    })
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  if summary:
    k = len(classes)
    confusion = rng.integers(0, 6, size=(k, k)) + np.diag(rng.integers(30, 60, size=k))
    ev = {"accuracy": accuracy, "loss": 0.8,
          "per_class": list(np.diag(confusion) / confusion.sum(axis=1)),
          "confusion": confusion.tolist(), "num_examples": int(confusion.sum())}
    (run_dir / "summary.json").write_text(json.dumps({
        "run_dir": str(run_dir), "finished": finished, "classes": list(classes),
        "dataset": dataset, "model": model, "optimizer": optimizer, "seed": seed,
        "cell": cell, "epochs": epochs, "half_space_start_epoch": warmup + 1,
        "eval": ev, "eval_before_recalibration": {**ev, "accuracy": accuracy - 0.013},
        "group_sparsity": sparsity,
        "families": [{"name": n, "groups": s, "zero": final_zero[n]} for n, s in families],
        "params": {"dense": params[0], "pruned": params[1]},
        "macs": {"dense": macs[0], "pruned": macs[1]},
        "pruned_agrees": True, "wall_time_s": 321.0,
    }, indent=2))
  return run_dir


def _append(path, text):
  with open(path, "a") as f:
    f.write(text)


def test_read_metrics_keeps_the_last_record_per_epoch(tmp_path):
  run = write_run(tmp_path / "r", epochs=6)
  # A resume from the end of epoch 3 rewrites epochs 4..6 with other values.
  _append(run / "metrics.jsonl", "".join(
      json.dumps({"epoch": e, "train_loss": 10.0 + e}) + "\n" for e in (4, 5, 6)))
  records = report.read_metrics(run)
  assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert [r["train_loss"] for r in records[3:]] == [14.0, 15.0, 16.0]
  assert records[0]["train_loss"] == pytest.approx(1.8 * np.exp(-1 / 6) + 0.3)


def test_read_metrics_skips_a_truncated_last_line_with_a_warning(tmp_path):
  run = write_run(tmp_path / "r", epochs=4)
  _append(run / "metrics.jsonl", '{"epoch": 5, "step": 250, "lr": 0.0')
  with pytest.warns(UserWarning, match=r"metrics.jsonl:5: skipping a truncated last line"):
    records = report.read_metrics(run)
  assert [r["epoch"] for r in records] == [1, 2, 3, 4]


def test_read_metrics_names_file_and_line_of_a_malformed_line(tmp_path):
  run = write_run(tmp_path / "r", epochs=4)
  lines = (run / "metrics.jsonl").read_text().splitlines()
  lines[1] = lines[1][:20]
  (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: malformed JSON"):
    report.read_metrics(run)
  (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"step": 3}\n{"epoch": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected an object with an integer"):
    report.read_metrics(run)
  with pytest.raises(FileNotFoundError, match="no such metrics file"):
    report.read_metrics(tmp_path)


def test_plot_run_writes_the_four_pngs(tmp_path):
  run = write_run(tmp_path / "r", families=resnet_families(30), epochs=12, warmup=5)
  paths = report.plot_run(run)
  names = sorted(p.name for p in paths)
  assert names == ["channels.png", "confusion.png", "curves.png", "sparsity.png"]
  for p in paths:
    assert p.parent == run / "plots"
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_plot_run_without_summary_draws_curves_and_sparsity_only(tmp_path):
  run = write_run(tmp_path / "r", epochs=5, warmup=2, summary=False)
  assert sorted(p.name for p in report.plot_run(run)) == ["curves.png", "sparsity.png"]
  assert not (run / "plots" / "confusion.png").exists()


def test_format_summary_reports_accuracy_sparsity_and_ratios(tmp_path):
  run = write_run(tmp_path / "r", accuracy=0.7746, sparsity=0.7125,
                  params=(1_234_567, 345_678), macs=(2_000_000_000, 500_000_000))
  summary = json.loads((run / "summary.json").read_text())
  text = report.format_summary(summary, report.read_metrics(run),
                               config=json.loads((run / "config.json").read_text()))
  assert "accuracy 77.46%" in text
  assert "76.16% before -> 77.46% after (+1.30 points)" in text
  assert "Group sparsity: 71.25%" in text
  # The ratios, computed here from the fabricated counts.
  assert f"{100 * 345_678 / 1_234_567:.1f}% of dense, {1_234_567 / 345_678:.2f}x smaller" in text
  assert f"{100 * 5e8 / 2e9:.1f}% of dense, {2e9 / 5e8:.2f}x smaller" in text
  assert "HSPG (sgd), lambda 1e-3" in text
  assert f"Run folder: {run}" in text
  per_class = np.diag(summary["eval"]["confusion"]) / np.sum(summary["eval"]["confusion"], axis=1)
  assert re.search(rf"busy_street +{100 * per_class[1]:.2f}%", text)
  for f in summary["families"]:  # every family with its zero/groups count
    assert re.search(rf"{re.escape(f['name'])} +{f['zero']}/{f['groups']} ", text)
  assert max(len(line) for line in text.splitlines()) <= 100


def test_format_summary_abbreviates_long_family_lists_and_fits_100_columns(tmp_path):
  many = [(f"stage{s}/block{b}/conv{c}", 64) for s in (1, 2, 3) for b in range(1, 11)
          for c in (1, 2)]
  run = write_run(tmp_path / "r", families=many, classes=tuple(f"scene_{i:02d}" for i in range(15)))
  summary = json.loads((run / "summary.json").read_text())
  text = report.format_summary(summary)
  assert "60 families, summed per top-level module" in text
  zeros = {s: sum(f["zero"] for f in summary["families"] if f["name"].startswith(s + "/"))
           for s in ("stage1", "stage2", "stage3")}
  for s, z in zeros.items():
    assert re.search(rf"{s}/\* \(20\) +{z}/1280 ", text)
  assert max(len(line) for line in text.splitlines()) <= 100


def test_format_lambda_and_run_title():
  assert [report.format_lambda(x) for x in (1e-3, 3e-4, 1e-4, 0, 3e-3)] == [
      "1e-3", "3e-4", "1e-4", "0", "3e-3"]
  assert report.run_title(None, {"model": "vgg", "optimizer": "sgd", "dataset": "dcase2017"}) == (
      "vgg | SGD | dcase2017")
