"""experiments.asc.table: the seed-format table over fabricated run folders."""

import csv
import json

import numpy as np
import pytest

from experiments.asc import table
from tests.test_asc_report import write_run

# (row as written in the config, column, model, optimizer, lambda) -> per-seed (accuracy, sparsity)
GRID = {
    ("baseline", "ResNet", "cp_resnet", "sgd", 0.0): [(0.7012, 0.0), (0.7188, 0.0), (0.7105, 0.0)],
    ("HSPG 1e-3", "ResNet", "cp_resnet", "hspg", 1e-3): [(0.7702, 0.70), (0.7790, 0.7250),
                                                         (0.7746, 0.7125)],
    ("HSPG 0.0001", "ResNet", "cp_resnet", "hspg", 1e-4): [(0.7411, 0.52), (0.7533, 0.55)],
    ("HSPG 1e-3", "VGG", "vgg", "hspg", 1e-3): [(0.6601, 0.61)],  # one seed: no +/-
}
PRUNED = {"cp_resnet": (3_000_000, 800_000, 1_200_000_000, 300_000_000),
          "vgg": (5_000_000, 2_000_000, 900_000_000, 450_000_000)}


@pytest.fixture()
def grid(tmp_path):
  root = tmp_path / "runs"
  for (row, column, model, opt, lam), seeds in GRID.items():
    p_dense, p_pruned, m_dense, m_pruned = PRUNED[model]
    for seed, (acc, sp) in enumerate(seeds):
      write_run(root / f"{model}_{opt}_{lam}_{seed}", model=model, optimizer=opt, lam=lam,
                dataset="dcase2018", cell={"table": "dcase2018", "row": row, "column": column},
                seed=seed, accuracy=acc, sparsity=sp, epochs=4, warmup=1, lr=(1e-4, 5e-6),
                params=(p_dense, p_pruned if opt == "hspg" else None),
                macs=(m_dense, m_pruned if opt == "hspg" else None))
  cell = {"table": "dcase2018", "row": "HSPG 1e-3", "column": "VGG"}
  write_run(root / "crashed", model="vgg", dataset="dcase2018", cell=cell, epochs=4, summary=False)
  unfinished = write_run(root / "unfinished", model="vgg", dataset="dcase2018", cell=cell, epochs=4)
  summary = json.loads((unfinished / "summary.json").read_text())
  (unfinished / "summary.json").write_text(json.dumps({**summary, "finished": False}))
  # An exported model folder with its own config.json must not count as a run.
  (root / "crashed" / "pruned").mkdir()
  (root / "crashed" / "pruned" / "config.json").write_text("{}")
  return root


def _expected_cell(key, with_sparsity):
  acc = 100 * np.array([a for a, _ in GRID[key]])
  text = f"{acc.mean():.2f}"
  if acc.size > 1:
    text += f" +/- {np.std(acc, ddof=1):.2f}"
  if with_sparsity:
    text += f" / {100 * np.mean([s for _, s in GRID[key]]):.2f}%"
  return text


def _pipe_table(rows):
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  text = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
  return text[:1] + ["|" + "|".join("-" * (w + 2) for w in widths) + "|"] + text[1:]


def test_table_text_matches_numpy_aggregates(grid, tmp_path):
  text = table.run([grid], tmp_path / "out", plot=False)
  keys = list(GRID)
  # Rows: baseline, then HSPG by decreasing lambda; columns VGG before ResNet; '-' where no run.
  expected = _pipe_table([
      ["", "VGG", "ResNet"],
      ["baseline", "-", _expected_cell(keys[0], False)],
      ["HSPG 1e-3", _expected_cell(keys[3], True), _expected_cell(keys[1], True)],
      ["HSPG 1e-4", "-", _expected_cell(keys[2], True)],
  ])
  lines = text.splitlines()
  start = lines.index("## dcase2018") + 2
  assert lines[start:start + len(expected)] == expected
  assert "- Seeds per cell: 1-3 (not uniform)." in text
  assert "- Protocol: epochs 4; HSPG warm-up epochs 1; lr 1e-4 -> 5e-6; direction sgd;" in text
  assert f"Skipped: {grid / 'crashed'}: no summary.json; last logged epoch 4 of 4" in text
  assert f"{grid / 'unfinished'}: summary.json says finished: false" in text
  assert "pruned" not in {p.name for p in table.find_run_dirs([grid])}
  assert (tmp_path / "out" / "table.md").read_text() == text


def test_pruned_size_table_and_csv(grid, tmp_path):
  text = table.run([grid], tmp_path / "out", plot=False)
  p_dense, p_pruned, m_dense, m_pruned = PRUNED["cp_resnet"]
  # 800K of 3M params (26.7%), 300M of 1.2G MACs (25.0%): computed here from PRUNED.
  assert f"800K ({100 * p_pruned / p_dense:.1f}%) / 300M ({100 * m_pruned / m_dense:.1f}%)" in text
  with open(tmp_path / "out" / "table.csv") as f:
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(f)}
  assert set(rows) == {("baseline", "ResNet"), ("HSPG 1e-3", "ResNet"), ("HSPG 1e-4", "ResNet"),
                       ("HSPG 1e-3", "VGG")}
  for (row, column, *_), seeds in GRID.items():
    r = rows[(row.replace("0.0001", "1e-4"), column)]
    acc = 100 * np.array([a for a, _ in seeds])
    assert int(r["n_seeds"]) == len(seeds)
    assert float(r["acc_mean"]) == pytest.approx(acc.mean())
    assert (r["acc_std"] == "") if len(seeds) == 1 else (
        float(r["acc_std"]) == pytest.approx(np.std(acc, ddof=1)))
    assert float(r["sparsity_mean"]) == pytest.approx(100 * np.mean([s for _, s in seeds]))
  assert float(rows[("HSPG 1e-3", "ResNet")]["params_pruned"]) == p_pruned
  assert rows[("baseline", "ResNet")]["params_pruned"] == ""
  assert rows[("HSPG 1e-3", "ResNet")]["seed_acc"] == ""  # only filled with_seed


def test_with_seed_shows_only_the_known_figures(grid, tmp_path):
  text = table.run([grid], tmp_path / "out", with_seed=True, plot=False)
  header = next(line for line in text.splitlines() if line.startswith("|  "))
  assert [c.strip() for c in header.strip("|").split("|")] == [
      "", "VGG", "VGG (seed)", "ResNet", "ResNet (seed)"]
  accuracy_table = text.split("\n\n")[1].splitlines()  # the first table, not the pruned sizes
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")][1:]
          for line in accuracy_table[2:]}
  assert rows["baseline"] == ["-", "?", _expected_cell(list(GRID)[0], False), "71.05 +/- 0.87"]
  assert rows["HSPG 1e-3"][1::2] == ["?", "77.46 / 71.25%"]
  assert rows["HSPG 1e-4"][1::2] == ["?", "?"]
  assert "50-71% group sparsity" in text
  with open(tmp_path / "out" / "table.csv") as f:
    seed_acc = {(r["row"], r["column"]): r["seed_acc"] for r in csv.DictReader(f)}
  assert seed_acc[("HSPG 1e-3", "ResNet")] == "77.46" and seed_acc[("HSPG 1e-3", "VGG")] == ""


def test_seed_figures_are_exactly_the_talks():
  assert table.SEED_FIGURES["cells"] == {
      ("dcase2018", "baseline", "ResNet"): {"acc": 71.05, "acc_std": 0.87},
      ("dcase2018", "HSPG 1e-3", "ResNet"): {"acc": 77.46, "sparsity": 71.25},
      ("dcase2017", "baseline", "ResNet"): {"acc": 67.19, "acc_std": 1.72},
      ("dcase2017", "HSPG 1e-3", "ResNet"): {"acc": 72.28, "sparsity": 69.38},
  }


def test_runs_without_cell_get_automatic_labels_and_differing_protocols_are_flagged(tmp_path):
  accs = {}
  for lam in (1e-3, 3e-4):
    for seed in range(2):
      acc = 0.8 - 50 * lam + 0.01 * seed
      accs.setdefault(lam, []).append(acc)
      write_run(tmp_path / f"r_{lam}_{seed}", model="cp_resnet", optimizer="hspg", lam=lam,
                seed=seed, accuracy=acc, sparsity=0.3 + 100 * lam, epochs=5 + seed)
  write_run(tmp_path / "rn1", model="cp_resnet_rn1", optimizer="sgd", lam=0.0, accuracy=0.5,
            epochs=5)
  results, skipped = table.collect([tmp_path])
  assert not skipped
  cells = {(c.table, c.row, c.column): c for c in table.aggregate(results)}
  assert set(cells) == {("synthetic", "HSPG 1e-3", "ResNet"), ("synthetic", "HSPG 3e-4", "ResNet"),
                        ("synthetic", "SGD", "cp_resnet_rn1")}
  mean, std = cells[("synthetic", "HSPG 3e-4", "ResNet")].acc
  assert mean == pytest.approx(100 * np.mean(accs[3e-4]))
  assert std == pytest.approx(100 * np.std(accs[3e-4], ddof=1))
  text = table.format_tables(table.aggregate(results))
  assert "- Protocol: epochs 5 / 6 (runs differ); HSPG warm-up epochs 8;" in text
  # Rows: HSPG by decreasing lambda, other rows after.
  order = [line.split("|")[1].strip() for line in text.split("\n\n")[1].splitlines()[2:]]
  assert order == ["HSPG 1e-3", "HSPG 3e-4", "SGD"]


def test_plot_tradeoff_from_runs_and_from_csv_rows(tmp_path):
  for lam in (0.0, 1e-4, 1e-3):
    for model in ("vgg", "cp_resnet"):
      for seed in range(2):
        write_run(tmp_path / "runs" / f"{model}_{lam}_{seed}", model=model, lam=lam, seed=seed,
                  accuracy=0.9 - 20 * lam - 0.01 * seed, sparsity=min(0.9, 300 * lam), epochs=3)
  png = table.plot_tradeoff([tmp_path / "runs"], tmp_path / "a.png")
  assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
  table.run([tmp_path / "runs"], tmp_path / "out")
  with open(tmp_path / "out" / "table.csv") as f:
    rows = list(csv.DictReader(f))
  assert table.plot_tradeoff(rows, tmp_path / "b.png").stat().st_size > 10_000
  assert (tmp_path / "out" / "tradeoff.png").is_file()
  with pytest.raises(ValueError, match="no 'HSPG <lambda>' rows"):
    table.plot_tradeoff([r for r in rows if not r["row"].startswith("HSPG")], tmp_path / "c.png")


def test_main_prints_and_writes(grid, tmp_path, capsys):
  assert table.main([str(grid), "--out", str(tmp_path / "o"), "--no-plot"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("## dcase2018") and "wrote " in out
  assert {p.name for p in (tmp_path / "o").iterdir()} == {"table.md", "table.csv"}
  with pytest.raises(SystemExit):
    table.main([str(tmp_path / "missing")])
  assert "no such run folder" in capsys.readouterr().err
