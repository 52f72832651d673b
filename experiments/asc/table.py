"""The seed-format results table over finished ASC runs (``hspg-asc table RUN_DIRS...``).

Finished runs (``summary.json`` with ``finished: true``) are grouped by their
config's ``cell`` (``table``, ``row``, ``column``) and aggregated over seeds:
one table per data set, rows ``baseline, RN1, RN2, RN3, DN1``, then ``HSPG
<lambda>`` by decreasing lambda, then any others; columns ``VGG, DenseNet,
ResNet``, then any others. A cell is the evaluate-split accuracy in % as
``mean +/- std`` over seeds (std with ddof=1; no std for one seed), HSPG rows
add ``/ group sparsity %``. Runs without a ``cell`` get labels from
``(data.name, model.name, optimizer.name, optimizer.reg_strength)``.

Reads only the run-folder contract (``config.json``, ``summary.json``,
``metrics.jsonl``); writes ``table.md``, ``table.csv`` (long format, one line
per cell) and, when HSPG rows exist, ``tradeoff.png`` into an output folder.

Example::

  from experiments.asc import table
  print(table.run(["runs/asc"], "runs/table", with_seed=True))
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import pathlib
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence

import numpy as np

from experiments.asc import report

__all__ = [
    "Cell",
    "RunResult",
    "SEED_FIGURES",
    "Skipped",
    "add_arguments",
    "aggregate",
    "collect",
    "find_run_dirs",
    "format_tables",
    "main",
    "plot_tradeoff",
    "run",
    "write_csv",
]

ROW_ORDER = ("baseline", "RN1", "RN2", "RN3", "DN1")
COLUMN_ORDER = ("VGG", "DenseNet", "ResNet")
# Column labels for runs without a cell (one label per model name, so no two merge).
MODEL_COLUMNS = {"vgg": "VGG", "densenet": "DenseNet", "cp_resnet": "ResNet"}
SPARSE_OPTIMIZERS = ("hspg", "proxsg")

# Everything known of the seed's results (talk "DNN Pruning for Acoustic Scene
# Classification", Tianyi Chen): these figures only. Accuracy and sparsity in %.
SEED_FIGURES = {
    "source": 'talk "DNN Pruning for Acoustic Scene Classification" (Tianyi Chen)',
    "cells": {
        ("dcase2018", "baseline", "ResNet"): {"acc": 71.05, "acc_std": 0.87},
        ("dcase2018", "HSPG 1e-3", "ResNet"): {"acc": 77.46, "sparsity": 71.25},
        ("dcase2017", "baseline", "ResNet"): {"acc": 67.19, "acc_std": 1.72},
        ("dcase2017", "HSPG 1e-3", "ResNet"): {"acc": 72.28, "sparsity": 69.38},
    },
    # Over all of VGG / ResNet / DenseNet, HSPG reached this group sparsity (%).
    "hspg_sparsity_range": (50.0, 71.0),
}

CSV_FIELDS = ("table", "row", "column", "n_seeds", "seeds", "acc_mean", "acc_std",
              "sparsity_mean", "sparsity_std", "params_dense", "params_pruned", "macs_dense",
              "macs_pruned", "seed_acc", "seed_acc_std", "seed_sparsity", "run_dirs")


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One finished run, as the table sees it. Accuracy and sparsity are fractions."""

  run_dir: pathlib.Path
  table: str
  row: str
  column: str
  seed: int | None
  optimizer: str
  accuracy: float
  sparsity: float | None
  params: tuple[int | None, int | None]  # dense, pruned
  macs: tuple[int | None, int | None]
  protocol: dict


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A run left out of the table, and why."""

  run_dir: pathlib.Path
  table: str | None
  reason: str


@dataclasses.dataclass
class Cell:
  """The runs of one (table, row, column), aggregated over seeds (percentages)."""

  table: str
  row: str
  column: str
  runs: list[RunResult]

  @property
  def n(self) -> int:
    return len(self.runs)

  def _stats(self, values):
    values = np.array([v for v in values if v is not None], float)
    if not values.size:
      return None, None
    return float(values.mean()), (float(values.std(ddof=1)) if values.size >= 2 else None)

  @property
  def acc(self) -> tuple[float | None, float | None]:
    """Mean and std (ddof=1, None for one seed) of the accuracy in %."""
    return self._stats(100 * r.accuracy for r in self.runs)

  @property
  def sparsity(self) -> tuple[float | None, float | None]:
    """Mean and std of the group sparsity in %."""
    return self._stats(None if r.sparsity is None else 100 * r.sparsity for r in self.runs)

  def mean_count(self, what: str, which: int) -> float | None:
    """Mean of ``params`` / ``macs`` (``which``: 0 dense, 1 pruned) over runs that have it."""
    return self._stats(getattr(r, what)[which] for r in self.runs)[0]

  def as_row(self, with_seed: bool = False) -> dict:
    """The cell as a CSV row (``CSV_FIELDS``; None where unknown)."""
    seed = SEED_FIGURES["cells"].get((self.table, self.row, self.column), {}) if with_seed else {}
    return {
        "table": self.table, "row": self.row, "column": self.column, "n_seeds": self.n,
        "seeds": " ".join(str(r.seed) for r in self.runs),
        "acc_mean": self.acc[0], "acc_std": self.acc[1],
        "sparsity_mean": self.sparsity[0], "sparsity_std": self.sparsity[1],
        "params_dense": self.mean_count("params", 0), "params_pruned": self.mean_count("params", 1),
        "macs_dense": self.mean_count("macs", 0), "macs_pruned": self.mean_count("macs", 1),
        "seed_acc": seed.get("acc"), "seed_acc_std": seed.get("acc_std"),
        "seed_sparsity": seed.get("sparsity"),
        "run_dirs": " ".join(str(r.run_dir) for r in self.runs),
    }


# --- finding and reading runs ----------------------------------------------------------


def _is_run_dir(d: pathlib.Path) -> bool:
  # pruned/ may hold its own config.json, so config.json alone does not make a run.
  return (d / "summary.json").is_file() or (
      (d / "config.json").is_file() and (d / "metrics.jsonl").is_file())


def find_run_dirs(paths: Iterable) -> list[pathlib.Path]:
  """Run folders among ``paths`` and below them (not descending into a run folder)."""
  found: list[pathlib.Path] = []
  for p in map(pathlib.Path, paths):
    if not p.exists():
      raise FileNotFoundError(f"{p}: no such run folder or directory")
    if p.is_file():
      p = p.parent  # e.g. a summary.json given by a shell glob
    if _is_run_dir(p):
      found.append(p)
      continue
    for root, dirs, _ in os.walk(p):
      dirs.sort()
      if root != str(p) and _is_run_dir(pathlib.Path(root)):
        found.append(pathlib.Path(root))
        dirs.clear()
  return list(dict.fromkeys(found))


def _lambda_of(row: str) -> float | None:
  m = re.fullmatch(r"\S+\s+([-+0-9.eE]+)", row.strip())
  try:
    return float(m.group(1)) if m else None
  except ValueError:
    return None


def _canonical_row(row: str) -> str:
  """``HSPG 0.001 -> HSPG 1e-3`` so labels match across configs and the seed's figures."""
  lam = _lambda_of(row)
  return f"HSPG {report.format_lambda(lam)}" if row.startswith("HSPG") and lam is not None else row


def _auto_cell(config: dict, summary: dict) -> tuple[str, str, str]:
  get = report.lookup
  data = get(config, "data.name") or summary.get("dataset") or "?"
  model = get(config, "model.name") or summary.get("model") or "?"
  opt = get(config, "optimizer.name") or summary.get("optimizer") or "?"
  lam = get(config, "optimizer.reg_strength")
  if opt in SPARSE_OPTIMIZERS:
    row = f"{'HSPG' if opt == 'hspg' else 'Prox-SG'} {report.format_lambda(lam or 0)}"
  else:
    row = {"sgd": "SGD", "adam": "Adam"}.get(opt, opt)
  return data, row, MODEL_COLUMNS.get(model, model)


def _protocol(config: dict) -> dict:
  get = report.lookup
  opt = get(config, "optimizer.name")
  return {
      "epochs": get(config, "train.epochs"),
      "warmup_epochs": get(config, "optimizer.warmup_epochs") if opt == "hspg" else None,
      "lr": (get(config, "optimizer.learning_rate"), get(config, "optimizer.final_learning_rate")),
      "direction": get(config, "optimizer.direction") or opt,
      "batch_size": get(config, "train.batch_size"),
  }


def _last_epoch(run_dir: pathlib.Path) -> int | None:
  try:
    records = report.read_metrics(run_dir)
  except (OSError, ValueError):
    return None
  return records[-1]["epoch"] if records else None


def load_run(run_dir) -> RunResult | Skipped:
  """Reads one run folder; an unfinished or unreadable run is a :class:`Skipped`."""
  run_dir = pathlib.Path(run_dir)
  try:
    config = report.read_json_if_exists(run_dir / "config.json") or {}
    summary = report.read_json_if_exists(run_dir / "summary.json")
  except ValueError as e:
    return Skipped(run_dir, None, str(e))
  cell = config.get("cell") or (summary or {}).get("cell")
  table = ((cell or {}).get("table") or report.lookup(config, "data.name")
           or (summary or {}).get("dataset"))
  if summary is None or summary.get("finished") is not True:
    epoch, total = _last_epoch(run_dir), report.lookup(config, "train.epochs")
    progress = f"last logged epoch {epoch if epoch is not None else '-'} of {total or '?'}"
    why = "no summary.json" if summary is None else "summary.json says finished: false"
    return Skipped(run_dir, table, f"{why}; {progress}")
  accuracy = report.lookup(summary, "eval.accuracy")
  if not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 1:
    return Skipped(run_dir, table, f"{run_dir / 'summary.json'}: eval.accuracy must be a "
                   f"fraction in [0, 1], got {accuracy!r}")
  if cell:
    missing = [k for k in ("table", "row", "column") if not cell.get(k)]
    if missing:
      return Skipped(run_dir, table, f"{run_dir / 'config.json'}: cell lacks {missing}")
    key = (cell["table"], _canonical_row(str(cell["row"])), str(cell["column"]))
  else:
    key = _auto_cell(config, summary)
  params, macs = summary.get("params") or {}, summary.get("macs") or {}
  return RunResult(
      run_dir=run_dir, table=key[0], row=key[1], column=key[2],
      seed=config.get("seed", summary.get("seed")),
      optimizer=report.lookup(config, "optimizer.name") or summary.get("optimizer") or "?",
      accuracy=float(accuracy), sparsity=summary.get("group_sparsity"),
      params=(params.get("dense"), params.get("pruned")),
      macs=(macs.get("dense"), macs.get("pruned")),
      protocol=_protocol(config))


def collect(paths: Iterable) -> tuple[list[RunResult], list[Skipped]]:
  """Finished runs and skipped runs found under ``paths``."""
  paths = list(paths)
  dirs = find_run_dirs(paths)
  if not dirs:
    raise FileNotFoundError(f"no run folders (summary.json, or config.json with metrics.jsonl) "
                            f"under {', '.join(map(str, paths))}")
  loaded = [load_run(d) for d in dirs]
  return ([r for r in loaded if isinstance(r, RunResult)],
          [r for r in loaded if isinstance(r, Skipped)])


# --- aggregation and ordering ----------------------------------------------------------


def _row_key(row: str):
  if row in ROW_ORDER:
    return (0, ROW_ORDER.index(row), 0.0, "")
  lam = _lambda_of(row)
  if row.startswith("HSPG") and lam is not None:
    return (1, 0, -lam, "")
  return (2, 0, -(lam or 0.0), row.split()[0] if row.split() else row)


def _column_key(column: str):
  return (0, COLUMN_ORDER.index(column), "") if column in COLUMN_ORDER else (1, 0, column)


def aggregate(results: Iterable[RunResult]) -> list[Cell]:
  """Groups runs by (table, row, column), ordered table, row, column as in the seed."""
  cells: dict[tuple[str, str, str], Cell] = {}
  for r in results:
    cells.setdefault((r.table, r.row, r.column), Cell(r.table, r.row, r.column, [])).runs.append(r)
  for c in cells.values():
    c.runs.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, str(r.run_dir)))
  return sorted(cells.values(),
                key=lambda c: (c.table, _row_key(c.row), _column_key(c.column)))


def _is_sparse_row(row: str, cells: Sequence[Cell]) -> bool:
  return row.startswith("HSPG") or any(
      r.optimizer in SPARSE_OPTIMIZERS for c in cells if c.row == row for r in c.runs)


# --- text ------------------------------------------------------------------------------


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
  widths = [max(len(x) for x in col) for col in zip(header, *rows)]

  def line(cells):
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

  rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return [line(header), rule] + [line(r) for r in rows]


def _acc_text(mean, std, sparsity=None) -> str:
  text = f"{mean:.2f}" + (f" +/- {std:.2f}" if std is not None else "")
  return text + (f" / {sparsity:.2f}%" if sparsity is not None else "")


def _seed_text(table: str, row: str, column: str) -> str:
  fig = SEED_FIGURES["cells"].get((table, row, column))
  if fig is None:
    return "?"
  return _acc_text(fig["acc"], fig.get("acc_std"), fig.get("sparsity"))


def _distinct(values, fmt=str) -> str:
  vals = list(dict.fromkeys(fmt(v) for v in values))
  return vals[0] if len(vals) == 1 else " / ".join(vals) + " (runs differ)"


def _protocol_line(results: Sequence[RunResult]) -> str:
  ps = [r.protocol for r in results]
  def fmt_lr(lr):
    return " -> ".join("?" if x is None else report.format_lambda(x) for x in lr)

  def show(v):
    return "?" if v is None else str(v)

  parts = [f"epochs {_distinct((p['epochs'] for p in ps), show)}"]
  warm = [p["warmup_epochs"] for p in ps if p["warmup_epochs"] is not None]
  if warm:  # the half-space stage starts after them
    parts.append(f"HSPG warm-up epochs {_distinct(warm, show)}")
  parts.append(f"lr {_distinct((p['lr'] for p in ps), fmt_lr)}")
  parts.append(f"direction {_distinct((p['direction'] for p in ps), show)}")
  parts.append(f"batch size {_distinct((p['batch_size'] for p in ps), show)}")
  return "Protocol: " + "; ".join(parts) + "."


def _count_text(mean: float | None, dense: float | None) -> str:
  if mean is None:
    return "-"
  return report.human_count(mean) + (f" ({100 * mean / dense:.1f}%)" if dense else "")


def format_tables(cells: Sequence[Cell], skipped: Sequence[Skipped] = (),
                  with_seed: bool = False) -> str:
  """The Markdown text: one accuracy table per data set, then the pruned-size table."""
  out: list[str] = []
  tables = sorted({c.table for c in cells} | {s.table for s in skipped if s.table})
  for name in tables:
    tcells = [c for c in cells if c.table == name]
    seed_here = with_seed and any(k[0] == name for k in SEED_FIGURES["cells"])
    rows = {c.row for c in tcells}
    if seed_here:
      rows |= {k[1] for k in SEED_FIGURES["cells"] if k[0] == name}
    rows = sorted(rows, key=_row_key)
    columns = sorted({c.column for c in tcells}, key=_column_key)
    if seed_here:
      columns = sorted(set(columns) | {k[2] for k in SEED_FIGURES["cells"] if k[0] == name},
                       key=_column_key)
    by_key = {(c.row, c.column): c for c in tcells}
    out += [f"## {name}", ""]
    if not tcells:
      out += ["No finished runs."]
    else:
      header = [""] + [x for col in columns
                       for x in ([col, f"{col} (seed)"] if seed_here else [col])]
      body = []
      for row in rows:
        sparse = _is_sparse_row(row, tcells)
        line = [row]
        for col in columns:
          c = by_key.get((row, col))
          if c is None:
            line.append("-")
          else:
            line.append(_acc_text(*c.acc, c.sparsity[0] if sparse else None))
          if seed_here:
            line.append(_seed_text(name, row, col))
        body.append(line)
      out += _markdown(header, body) + [""]
      notes = ["Accuracy (%) on the evaluate split, mean +/- std over seeds (std with ddof=1, "
               "none for one seed); HSPG rows: / group sparsity (%), mean. `-`: no run."]
      if seed_here:
        lo, hi = SEED_FIGURES["hspg_sparsity_range"]
        notes.append(f"(seed): figures from the {SEED_FIGURES['source']}; `?`: not known. Over "
                     f"VGG, ResNet and DenseNet, the seed's HSPG reached {lo:g}-{hi:g}% group "
                     "sparsity.")
      ns = sorted(c.n for c in tcells)
      notes.append(f"Seeds per cell: {ns[0]}." if ns[0] == ns[-1] else
                   f"Seeds per cell: {ns[0]}-{ns[-1]} (not uniform).")
      dupes = [f"{c.row} / {c.column} seed {s}" for c in tcells
               for s in sorted({r.seed for r in c.runs if r.seed is not None})
               if [r.seed for r in c.runs].count(s) > 1]
      if dupes:
        notes.append("Repeated seeds (each run counted): " + "; ".join(dupes) + ".")
      notes.append(_protocol_line([r for c in tcells for r in c.runs]))
      out += _bullets(notes)
      out += _pruned_table(tcells, rows, columns)
    here = [f"Skipped: {s.run_dir}: {s.reason}" for s in skipped if s.table == name]
    out += ([""] + _bullets(here, wrap=False)) if here else []
    out.append("")
  rest = [f"{s.run_dir}: {s.reason}" for s in skipped if not s.table]
  if rest:
    out += ["## Skipped runs", ""] + _bullets(rest, wrap=False) + [""]
  return "\n".join(out).rstrip() + "\n"


def _bullets(items: Sequence[str], wrap: bool = True) -> list[str]:
  """Markdown list items wrapped at 100 columns (continuations indented, as Markdown wants)."""
  if not wrap:  # e.g. paths: keep them whole for copy and grep
    return [f"- {item}" for item in items]
  return [line for item in items for line in textwrap.wrap(
      item, report.WIDTH, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False,
      break_long_words=False)]


def _pruned_table(tcells, rows, columns) -> list[str]:
  rows = [r for r in rows if _is_sparse_row(r, tcells)
          and any(c.mean_count("params", 1) is not None for c in tcells if c.row == r)]
  if not rows:
    return []
  by_key = {(c.row, c.column): c for c in tcells}
  body = []
  for row in rows:
    line = [row]
    for col in columns:
      c = by_key.get((row, col))
      line.append("-" if c is None else
                  f"{_count_text(c.mean_count('params', 1), c.mean_count('params', 0))} / "
                  f"{_count_text(c.mean_count('macs', 1), c.mean_count('macs', 0))}")
    body.append(line)
  return (["", "Pruned models (mean over seeds): parameters / MACs (% of dense)", ""]
          + _markdown([""] + list(columns), body))


def _csv_value(v):
  return "" if v is None else v


def write_csv(cells: Sequence[Cell], path, with_seed: bool = False) -> pathlib.Path:
  """Long format: one line per cell, ``CSV_FIELDS`` columns; percentages for acc/sparsity."""
  path = pathlib.Path(path)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
  writer.writeheader()
  done = set()
  for c in cells:
    writer.writerow({k: _csv_value(v) for k, v in c.as_row(with_seed).items()})
    done.add((c.table, c.row, c.column))
  if with_seed:  # the seed's known figures where we have no run, in tables we have
    tables = {c.table for c in cells}
    for key, fig in SEED_FIGURES["cells"].items():
      if key[0] in tables and key not in done:
        writer.writerow({"table": key[0], "row": key[1], "column": key[2], "n_seeds": 0,
                         "seed_acc": fig["acc"], "seed_acc_std": _csv_value(fig.get("acc_std")),
                         "seed_sparsity": _csv_value(fig.get("sparsity"))})
  path.write_text(buf.getvalue())
  return path


# --- the trade-off plot ----------------------------------------------------------------


def _float(v):
  return None if v in (None, "") else float(v)


def _label_lambdas(ax, labels):
  """One ``lambda=`` label per lambda when its points sit together, else one per point."""
  ys = [y for pts in labels.values() for _, y, _ in pts]
  y_span = max(max(ys) - min(ys), 1.0)
  for lam, pts in labels.items():
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    together = max(xs) - min(xs) < 6 and max(ys) - min(ys) < 0.12 * y_span
    for x, y, color in ([max(pts, key=lambda p: p[1])[:2] + ("0.15",)] if together else pts):
      ax.annotate(f"λ={report.format_lambda(lam)}", (x, y), xytext=(5, 6),
                  textcoords="offset points", fontsize=7.5, color=color)


def plot_tradeoff(run_dirs_or_rows, path) -> pathlib.Path:
  """Accuracy against group sparsity over a lambda sweep: one line per model, per data set.

  Args:
    run_dirs_or_rows: run folders (or parents), or :class:`Cell` objects, or CSV
      row dicts (``table.csv`` read back with ``csv.DictReader``). Rows ``HSPG
      <lambda>`` are the sweep; a ``baseline`` row is drawn as a dashed level.
    path: the PNG to write.

  Returns:
    ``path``. Raises ``ValueError`` if there is no HSPG row with sparsity.
  """
  items = list(run_dirs_or_rows)
  if items and all(isinstance(x, (str, os.PathLike)) for x in items):
    items = aggregate(collect(items)[0])
  rows = [x.as_row() if isinstance(x, Cell) else x for x in items]
  points: dict[str, dict[str, list]] = {}
  baselines: dict[tuple[str, str], tuple[float, float | None]] = {}
  for r in rows:
    lam, acc = _lambda_of(r["row"]), _float(r.get("acc_mean"))
    if acc is None:
      continue
    if r["row"] == "baseline":
      baselines[(r["table"], r["column"])] = (acc, _float(r.get("acc_std")))
    elif r["row"].startswith("HSPG") and lam is not None:
      sparsity = _float(r.get("sparsity_mean"))
      if sparsity is not None:
        points.setdefault(r["table"], {}).setdefault(r["column"], []).append(
            (lam, sparsity, _float(r.get("sparsity_std")), acc, _float(r.get("acc_std"))))
  if not points:
    raise ValueError("plot_tradeoff: no 'HSPG <lambda>' rows with accuracy and group sparsity")
  path = pathlib.Path(path)
  tables = sorted(points)
  fig = report.new_figure(max(8.0, 6.0 * len(tables)), 5.0)
  axes = np.atleast_1d(fig.subplots(1, len(tables), squeeze=False)[0])
  for ax, table in zip(axes, tables):
    columns = sorted(points[table], key=_column_key)
    labels: dict[float, list] = {}  # lambda -> [(sparsity, accuracy, colour)]
    for k, column in enumerate(columns):
      pts = sorted(points[table][column])  # by lambda: the sweep's order
      lam, sp, sp_std, acc, acc_std = (np.array([np.nan if v is None else v for v in col], float)
                                       for col in zip(*pts))
      color = f"C{k}"
      ax.errorbar(sp, acc, xerr=np.nan_to_num(sp_std), yerr=np.nan_to_num(acc_std), color=color,
                  marker="o", ms=5, capsize=3, lw=1.5, label=column)
      for x, y, l in zip(sp, acc, lam):
        labels.setdefault(l, []).append((x, y, color))
      if (table, column) in baselines:
        ax.axhline(baselines[(table, column)][0], color=color, ls="--", lw=1, alpha=0.7,
                   label=f"{column} baseline")
    _label_lambdas(ax, labels)
    ax.set_xlabel("group sparsity (%)")
    ax.set_ylabel("accuracy on the evaluate split (%)")
    ax.set_title(table)
    ax.set_xlim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
  fig.suptitle("Accuracy vs group sparsity over the HSPG lambda sweep "
               "(mean over seeds, bars: std)", fontsize=10)
  fig.savefig(path, dpi=110)
  return path


# --- entry points ----------------------------------------------------------------------


def run(run_dirs: Sequence, out_dir, with_seed: bool = False, plot: bool = True) -> str:
  """Builds the tables from ``run_dirs`` (run folders or parents) into ``out_dir``.

  Writes ``table.md``, ``table.csv`` and (if ``plot`` and HSPG rows exist)
  ``tradeoff.png``; returns the Markdown text.
  """
  results, skipped = collect(run_dirs)
  cells = aggregate(results)
  text = format_tables(cells, skipped, with_seed=with_seed)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "table.md").write_text(text)
  write_csv(cells, out_dir / "table.csv", with_seed=with_seed)
  if plot and any(c.row.startswith("HSPG") and c.sparsity[0] is not None for c in cells):
    plot_tradeoff(cells, out_dir / "tradeoff.png")
  return text


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds the ``table`` options to ``parser`` (for the ``hspg-asc`` subcommand)."""
  parser.add_argument("run_dirs", nargs="+", type=pathlib.Path,
                      help="run folders, or folders to search for them recursively")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/table"),
                      help="where to write table.md, table.csv, tradeoff.png (default runs/table)")
  parser.add_argument("--with-seed", action="store_true",
                      help="show the seed's published figures beside ours (`?` where unknown)")
  parser.add_argument("--no-plot", action="store_true", help="skip tradeoff.png")
  return parser


def main(argv=None) -> int:
  """``hspg-asc table RUN_DIRS... [--out DIR] [--with-seed] [--no-plot]``."""
  parser = add_arguments(argparse.ArgumentParser(
      prog="hspg-asc table",
      description="Aggregate finished ASC runs over seeds into the seed's results tables."))
  args = parser.parse_args(argv)
  try:
    text = run(args.run_dirs, args.out, with_seed=args.with_seed, plot=not args.no_plot)
  except FileNotFoundError as e:
    parser.error(str(e))
  print(text, end="")
  print(f"wrote {args.out / 'table.md'} and {args.out / 'table.csv'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
