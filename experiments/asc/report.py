"""Reading and reporting one ASC run folder: metrics, plots, the end-of-training text.

Depends only on the run-folder contract shared with the training engine
(``config.json``, ``metrics.jsonl``, ``summary.json``), never on the engine's
code, so it also reports runs written by older or newer engines. Plots use
matplotlib's object API with the Agg canvas (no pyplot state, no display).

Example::

  from experiments.asc import report
  metrics = report.read_metrics("runs/asc/resnet_hspg")
  print(report.summarize_run("runs/asc/resnet_hspg"))
  report.plot_run("runs/asc/resnet_hspg")  # -> [.../plots/curves.png, ...]
"""

from __future__ import annotations

import json
import math
import pathlib
import warnings
from typing import Any

import numpy as np

__all__ = [
    "format_lambda",
    "format_summary",
    "human_count",
    "half_space_start",
    "load_json",
    "lookup",
    "new_figure",
    "plot_run",
    "read_json_if_exists",
    "read_metrics",
    "run_title",
    "summarize_run",
]

WIDTH = 100  # format_summary's lines fit this many columns
_OPTIMIZER_LABELS = {"hspg": "HSPG", "proxsg": "Prox-SG", "sgd": "SGD", "adam": "Adam"}
_SPARSE_OPTIMIZERS = ("hspg", "proxsg")


# --- reading ---------------------------------------------------------------------------


def load_json(path) -> Any:
  """Parses a JSON file; a syntax error names the file and line."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def read_json_if_exists(path) -> Any:
  """:func:`load_json` of ``path``, or None if there is no such file."""
  path = pathlib.Path(path)
  return load_json(path) if path.is_file() else None


def read_metrics(run_dir) -> list[dict]:
  """The per-epoch records of ``run_dir/metrics.jsonl``, one per epoch, by epoch.

  A resumed run re-appends epochs it had already logged, so for each epoch the
  LAST line wins. A malformed line is an error naming ``file:line``, except a
  malformed last line: that is a write cut short by a crash, skipped with a
  warning.

  Args:
    run_dir: the run folder (or the ``metrics.jsonl`` file itself).

  Returns:
    The records (dicts as written) sorted by their ``epoch``.

  Example:
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.jsonl").write_text(
    ...     '{"epoch": 1, "train_loss": 2.0}\\n{"epoch": 2, "train_loss": 1.5}\\n'
    ...     '{"epoch": 2, "train_loss": 1.4}\\n{"epoch": 3, "tr')
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...   warnings.simplefilter("ignore")
    ...   [(r["epoch"], r["train_loss"]) for r in read_metrics(d)]
    [(1, 2.0), (2, 1.4)]
  """
  path = pathlib.Path(run_dir)
  if path.is_dir():
    path = path / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such metrics file")
  lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
  by_epoch: dict[int, dict] = {}
  for k, (lineno, line) in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if k == len(lines) - 1:
        warnings.warn(f"{path}:{lineno}: skipping a truncated last line (the run was "
                      f"interrupted mid-write): {line[:60]!r}", stacklevel=2)
        break
      raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool):
      raise ValueError(f"{path}:{lineno}: expected an object with an integer 'epoch', "
                       f"got {line[:60]!r}")
    by_epoch[epoch] = record
  return [by_epoch[e] for e in sorted(by_epoch)]


# --- small formatting helpers (shared with table.py) -----------------------------------


def format_lambda(x: float) -> str:
  """A regularisation strength as written in the seed's tables: ``1e-3``, ``3e-4``, ``0``.

  >>> [format_lambda(v) for v in (0.001, 3e-4, 0.0, 2.5e-5, 0.5)]
  ['1e-3', '3e-4', '0', '2.5e-5', '0.5']
  """
  x = float(x)
  if x == 0:
    return "0"
  if 1e-2 <= abs(x) < 1e3:
    return f"{x:g}"
  mantissa, exponent = f"{x:.6e}".split("e")
  mantissa = mantissa.rstrip("0").rstrip(".")
  return f"{mantissa}e{int(exponent)}"


def human_count(n: float | None, unit: str = "") -> str:
  """``1234567 -> '1.23M'``; ``None -> 'n/a'``.

  >>> human_count(1234567), human_count(950), human_count(2.5e9, "MACs"), human_count(3e5)
  ('1.23M', '950', '2.5G MACs', '300K')
  """
  if n is None or (isinstance(n, float) and math.isnan(n)):
    return "n/a"
  for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
    if abs(n) >= scale:
      text = f"{n / scale:.3g}{suffix}"
      break
  else:
    text = f"{n:.0f}"
  return f"{text} {unit}".rstrip()


def lookup(d: dict | None, dotted: str, default=None):
  """``d["a"]["b"]`` for ``"a.b"``, or ``default`` where a key or dict is missing."""
  for key in dotted.split("."):
    if not isinstance(d, dict) or key not in d:
      return default
    d = d[key]
  return d


def run_title(config: dict | None = None, summary: dict | None = None) -> str:
  """What a run is, in one line: model, optimizer (direction, lambda), data set, seed.

  >>> run_title({"model": {"name": "cp_resnet"}, "data": {"name": "dcase2018"}, "seed": 1,
  ...            "optimizer": {"name": "hspg", "direction": "sgd", "reg_strength": 1e-3}})
  'cp_resnet | HSPG (sgd), lambda 1e-3 | dcase2018 | seed 1'
  """
  model = lookup(config, "model.name") or lookup(summary, "model") or "?"
  opt = lookup(config, "optimizer.name") or lookup(summary, "optimizer") or "?"
  direction = lookup(config, "optimizer.direction")
  lam = lookup(config, "optimizer.reg_strength")
  data = lookup(config, "data.name") or lookup(summary, "dataset") or "?"
  seed = lookup(config, "seed", lookup(summary, "seed"))
  text = _OPTIMIZER_LABELS.get(opt, opt)
  if direction and direction != opt:
    text += f" ({direction})"
  if opt in _SPARSE_OPTIMIZERS and lam is not None:
    text += f", lambda {format_lambda(lam)}"
  parts = [model, text, data] + ([f"seed {seed}"] if seed is not None else [])
  return " | ".join(parts)


def half_space_start(metrics: list[dict] | None, summary: dict | None = None,
                     config: dict | None = None) -> int | None:
  """1-based epoch whose steps are the first in the half-space stage, or None.

  Read from the metrics' ``stage`` (what happened), else the summary, else the
  config (HSPG's ``warmup_epochs``: the half-space stage starts after them).
  """
  for r in metrics or ():
    if r.get("stage") == "half_space":
      return int(r["epoch"])
  if summary and summary.get("half_space_start_epoch") is not None:
    return int(summary["half_space_start_epoch"])
  warmup = lookup(config, "optimizer.warmup_epochs")
  if lookup(config, "optimizer.name") == "hspg" and warmup is not None:
    return int(warmup) + 1
  return None


def _abbreviate(name: str, width: int) -> str:
  """Shortens ``name`` to ``width`` by cutting its middle: both ends carry meaning."""
  if len(name) <= width:
    return name
  head = (width - 3) // 2
  return name[:head] + "..." + name[len(name) - (width - 3 - head):]


def _grid(cells: list[str], indent: int, header: str | None = None) -> list[str]:
  """Lays text cells out column by column in as many columns as fit in ``WIDTH``."""
  if not cells:
    return []
  cell_w = max(len(c) for c in cells + ([header] if header else []))
  ncols = max(1, (WIDTH - indent + 3) // (cell_w + 3))
  nrows = math.ceil(len(cells) / ncols)
  ncols = math.ceil(len(cells) / nrows)
  rows = [[header] * ncols] if header else []
  rows += [[cells[c * nrows + r] for c in range(ncols) if c * nrows + r < len(cells)]
           for r in range(nrows)]
  return [" " * indent + "   ".join(c.ljust(cell_w) for c in row).rstrip() for row in rows]


def _wrap_items(items: list[str], indent: int = 2, sep: str = "; ") -> list[str]:
  """Joins ``items`` with ``sep`` into lines of at most ``WIDTH`` columns."""
  lines = [" " * indent + items[0]]
  for item in items[1:]:
    if len(lines[-1]) + len(sep) + len(item) <= WIDTH:
      lines[-1] += sep + item
    else:
      lines.append(" " * indent + item)
  return lines


# --- the end-of-training text ----------------------------------------------------------


def _accuracy_lines(summary: dict) -> list[str]:
  ev = summary.get("eval")
  if not ev:
    return ["Evaluate split: no evaluation in summary.json"]
  lines = [f"Evaluate split: accuracy {100 * ev['accuracy']:.2f}%"
           + (f", loss {ev['loss']:.4f}" if ev.get("loss") is not None else "")
           + (f", {ev['num_examples']:,} examples" if ev.get("num_examples") else "")]
  before = summary.get("eval_before_recalibration")
  if before and before.get("accuracy") is not None:
    delta = 100 * (ev["accuracy"] - before["accuracy"])
    lines.append(f"  BatchNorm recalibration: {100 * before['accuracy']:.2f}% before -> "
                 f"{100 * ev['accuracy']:.2f}% after ({delta:+.2f} points)")
  per_class = ev.get("per_class")
  if per_class:
    classes = summary.get("classes") or [f"class {i}" for i in range(len(per_class))]
    name_w = min(22, max(len(c) for c in classes))
    cells = [f"{_abbreviate(c, name_w):<{name_w}} {100 * a:6.2f}%"
             for c, a in zip(classes, per_class)]
    lines.append("  per class:")
    lines.extend(_grid(cells, indent=4))
  return lines


def _family_lines(families: list[dict], max_listed: int = 40) -> list[str]:
  """Per-family sparsity in two columns; beyond ``max_listed`` families, per top module."""
  note = None
  if len(families) > max_listed:
    merged: dict[str, list[int]] = {}
    for f in families:
      key = f["name"].split("/")[0]
      acc = merged.setdefault(key, [0, 0, 0])
      acc[0] += 1
      acc[1] += f["groups"]
      acc[2] += f["zero"]
    families = [{"name": f"{k}/* ({n})", "groups": g, "zero": z}
                for k, (n, g, z) in merged.items()]
    note = (f"  ({sum(n for n, _, _ in merged.values())} families, summed per top-level "
            "module; per family: summary.json and plots/channels.png)")
  name_w = min(26, max(len(f["name"]) for f in families))  # two columns fit in WIDTH
  num_w = max(11, max(len(f"{f['zero']}/{f['groups']}") for f in families))
  header = f"{'family':<{name_w}} {'zero/groups':>{num_w}} {'sparsity':>8}"
  cells = [f"{_abbreviate(f['name'], name_w):<{name_w}} "
           f"{str(f['zero']) + '/' + str(f['groups']):>{num_w}} "
           f"{100 * f['zero'] / max(f['groups'], 1):7.1f}%" for f in families]
  return _grid(cells, indent=2, header=header) + ([note] if note else [])


def _size_lines(summary: dict) -> list[str]:
  """Parameters and MACs, dense vs pruned, in aligned columns."""
  rows = [(label, (summary.get(key) or {}).get("dense"), (summary.get(key) or {}).get("pruned"))
          for label, key in (("Parameters:", "params"), ("MACs:", "macs"))]
  w = max(len(f"{n:,}") for _, d, p in rows for n in (d, p, 0) if n is not None)
  lines = []
  for label, dense, pruned in rows:
    if dense is None:
      lines.append(f"{label:<12}n/a")
    elif pruned is None:
      lines.append(f"{label:<12}{dense:>{w},} dense ({human_count(dense)}); not pruned")
    else:
      ratio = f"{100 * pruned / dense:.1f}% of dense" if dense else "n/a"
      smaller = f", {dense / pruned:.2f}x smaller" if pruned else ""
      lines.append(f"{label:<12}{dense:>{w},} dense -> {pruned:>{w},} pruned ({ratio}{smaller})")
  return lines


def _training_lines(metrics: list[dict]) -> list[str]:
  last = metrics[-1]
  items = [f"Training: {len(metrics)} epochs logged (last epoch {last['epoch']}, "
           f"step {last.get('step', '?')})"]
  if last.get("train_loss") is not None:
    items.append(f"final train loss {last['train_loss']:.4f}")
  if last.get("train_acc") is not None:
    items.append(f"final train acc {100 * last['train_acc']:.2f}%")
  evals = [(r["eval_acc"], r["epoch"]) for r in metrics if r.get("eval_acc") is not None]
  if evals:
    best, epoch = max(evals)
    items.append(f"best eval acc {100 * best:.2f}% (epoch {epoch})")
  skipped = sum(int(r.get("skipped_steps") or 0) for r in metrics)
  items.append(f"non-finite batches skipped: {skipped}")
  speeds = [r["examples_per_sec"] for r in metrics if r.get("examples_per_sec")]
  if speeds:
    items.append(f"median {np.median(speeds):,.0f} examples/s")
  times = [r["epoch_time_s"] for r in metrics if r.get("epoch_time_s") is not None]
  if times:
    items.append(f"{sum(times) / 60:.1f} min in epochs")
  lines = _wrap_items(items, indent=0)
  return lines[:1] + ["  " + line for line in lines[1:]]


def format_summary(summary: dict, metrics: list[dict] | None = None, *,
                   config: dict | None = None) -> str:
  """The text printed at the end of training (plain text, lines of at most 100 columns).

  Args:
    summary: the dict of ``summary.json``.
    metrics: optional records from :func:`read_metrics` (adds a training line).
    config: optional ``config.json`` dict (adds lambda and direction to the title).

  Returns:
    Accuracy (overall, per class, before/after BatchNorm recalibration),
    group sparsity overall and per family, parameters and MACs dense vs pruned,
    and the run folder.
  """
  lines = [f"Run: {run_title(config, summary)}"]
  cell = summary.get("cell") or lookup(config, "cell")
  if cell:
    lines.append(f"Table cell: {cell.get('table')} / {cell.get('row')} / {cell.get('column')}")
  lines.extend(_accuracy_lines(summary))
  families = summary.get("families") or []
  if summary.get("group_sparsity") is not None:
    total = sum(f["groups"] for f in families)
    zero = sum(f["zero"] for f in families)
    counts = f" ({zero:,} of {total:,} groups zero, {len(families)} families)" if families else ""
    lines.append(f"Group sparsity: {100 * summary['group_sparsity']:.2f}%{counts}")
  if families:
    lines.extend(_family_lines(families))
  lines.extend(_size_lines(summary))
  agrees = summary.get("pruned_agrees")
  if agrees is not None:
    lines.append("Pruned model predictions equal the dense model's on the evaluate split: "
                 + ("yes" if agrees else "NO"))
  if metrics:
    lines.extend(_training_lines(metrics))
  if summary.get("wall_time_s") is not None:
    lines.append(f"Wall time: {summary['wall_time_s'] / 60:.1f} min")
  lines.append(f"Run folder: {summary.get('run_dir', '?')}")
  return "\n".join(lines)


def summarize_run(run_dir) -> str:
  """:func:`format_summary` of a run folder (reads summary, metrics and config)."""
  run_dir = pathlib.Path(run_dir)
  summary = read_json_if_exists(run_dir / "summary.json")
  if summary is None:
    raise FileNotFoundError(f"{run_dir / 'summary.json'}: no summary (run not finished?)")
  summary = {"run_dir": str(run_dir), **summary}
  metrics = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else None
  return format_summary(summary, metrics, config=read_json_if_exists(run_dir / "config.json"))


# --- plots -----------------------------------------------------------------------------


def new_figure(width, height):
  """A constrained-layout matplotlib Figure (``fig.savefig`` writes PNGs)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  # Figure() without pyplot renders with the Agg canvas and keeps no global state.
  return Figure(figsize=(width, height), layout="constrained")


def _series(metrics, key, scale=1.0):
  return np.array([np.nan if r.get(key) is None else scale * r[key] for r in metrics], float)


def _epoch_axis(ax):
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("epoch")


def _mark_half_space(ax, start, label=True):
  # The stage switches once epoch start-1 has finished, i.e. at x = start - 1.
  ax.axvline(start - 1, color="0.3", ls=":", lw=1.2,
             label=f"half-space stage from epoch {start}" if label else None)


def _plot_curves(metrics, title, start, path):
  epochs = np.array([r["epoch"] for r in metrics])
  fig = new_figure(11, 4.2)
  axes = fig.subplots(1, 2)
  for ax, key, ylabel in ((axes[0], "loss", "cross-entropy loss"),
                          (axes[1], "acc", "accuracy (%)")):
    scale = 100.0 if key == "acc" else 1.0
    for split, style in (("train", "-"), ("eval", "--")):
      y = _series(metrics, f"{split}_{key}", scale)
      if np.isfinite(y).any():
        ax.plot(epochs, y, style, marker="o", ms=3,
                label="train" if split == "train" else "evaluate split")
    if start is not None:
      _mark_half_space(ax, start, label=key == "acc")
    _epoch_axis(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set_title("Loss")
  axes[1].set_title("Accuracy")
  fig.suptitle(title)
  fig.savefig(path, dpi=110)


def _plot_sparsity(metrics, title, start, path, max_family_lines=8):
  epochs = np.array([r["epoch"] for r in metrics])
  fig = new_figure(8.5, 4.6)
  ax = fig.subplots()
  families = list(metrics[-1].get("num_groups") or {})
  if families:
    grey = len(families) > max_family_lines
    for k, name in enumerate(families):
      frac = [100 * (r.get("zero_groups") or {}).get(name, np.nan)
              / max((r.get("num_groups") or {}).get(name, 0), 1) for r in metrics]
      label = (f"per family ({len(families)})" if k == 0 else None) if grey else name
      ax.plot(epochs, frac, lw=0.7, alpha=0.35 if grey else 0.8,
              color="0.55" if grey else None, label=label)
  overall = _series(metrics, "group_sparsity", 100.0)
  ax.plot(epochs, overall, color="C3", lw=2.4, marker="o", ms=3.5, label="all groups", zorder=5)
  if np.isfinite(overall[-1]):
    ax.annotate(f"{overall[-1]:.1f}%", xy=(epochs[-1], overall[-1]), xytext=(0, 6),
                textcoords="offset points", ha="center", fontsize=8, color="C3")
  if start is not None:
    _mark_half_space(ax, start, label=False)
    ax.annotate(f"half-space\nfrom epoch {start}", xy=(start - 1, 97), xytext=(4, 0),
                textcoords="offset points", fontsize=8, va="top", color="0.25")
  ax.set_ylim(-2, 102)
  _epoch_axis(ax)
  ax.set_ylabel("zero groups (%)")
  ax.grid(alpha=0.3)
  handles, labels = ax.get_legend_handles_labels()
  lr = _series(metrics, "lr")
  if np.isfinite(lr).any():
    ax2 = ax.twinx()
    (line,) = ax2.plot(epochs, lr, color="C0", ls="--", lw=1.2, label="learning rate")
    pos = lr[np.isfinite(lr) & (lr > 0)]
    if pos.size and pos.max() / pos.min() > 100:
      ax2.set_yscale("log")
    ax2.set_ylabel("learning rate", color="C0")
    ax2.tick_params(axis="y", colors="C0")
    handles.append(line)
    labels.append(line.get_label())
  ax.legend(handles, labels, fontsize=7, loc="center left",
            ncol=2 if len(labels) > 6 else 1)
  ax.set_title("Group sparsity")
  fig.suptitle(title)
  fig.savefig(path, dpi=110)


def _plot_channels(families, title, params, path):
  names = [f["name"] for f in families]
  dense = np.array([f["groups"] for f in families], float)
  kept = dense - np.array([f["zero"] for f in families], float)
  n = len(families)
  fig = new_figure(9.5, max(3.0, 0.26 * n + 1.6))
  ax = fig.subplots()
  y = np.arange(n)
  ax.barh(y, dense, color="0.85", edgecolor="0.6", lw=0.5, label="dense")
  ax.barh(y, kept, height=0.55, color="C2", label="kept (nonzero groups)")
  for yi, k, d in zip(y, kept, dense):
    ax.text(d, yi, f" {k:.0f}/{d:.0f} ({100 * k / max(d, 1):.0f}%)", va="center", fontsize=7)
  ax.set_yticks(y, names, fontsize=8 if n <= 40 else 6)
  ax.set_ylim(n - 0.5, -0.5)  # first family (input side) on top, no empty margins
  ax.set_xlim(0, dense.max() * 1.25 if n else 1)
  ax.set_xlabel("channels (groups)")
  ax.grid(axis="x", alpha=0.3)
  ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1), ncol=2, frameon=False)
  heading = (f"Kept channels per family: {kept.sum():.0f} of {dense.sum():.0f} "
             f"({100 * kept.sum() / max(dense.sum(), 1):.1f}%)")
  if params and params.get("dense") and params.get("pruned") is not None:
    heading += (f"; pruned model: {human_count(params['pruned'])} of "
                f"{human_count(params['dense'])} params")
  fig.suptitle(f"{title}\n{heading}", fontsize=11)
  fig.savefig(path, dpi=110)


def _plot_confusion(ev, classes, title, path):
  counts = np.asarray(ev["confusion"], float)
  k = counts.shape[0]
  if counts.ndim != 2 or counts.shape[1] != k:
    raise ValueError(f"summary.json: eval.confusion must be square, got shape {counts.shape}")
  classes = list(classes or ())
  if len(classes) != k:  # unnamed or mismatched: number the classes rather than mislabel them
    classes = [str(i) for i in range(k)]
  rows = counts.sum(axis=1, keepdims=True)
  norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
  size = max(4.5, 0.55 * k + 2.5)
  fig = new_figure(size + 1.0, size)
  ax = fig.subplots()
  im = ax.imshow(100 * norm, cmap="Blues", vmin=0, vmax=100)
  fontsize = 8 if k <= 10 else 7 if k <= 16 else 6
  recall = [f"{c} ({100 * norm[i, i]:.0f}%)" for i, c in enumerate(classes)]
  for i in range(k):
    for j in range(k):
      if counts[i, j]:
        ax.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=fontsize,
                color="white" if norm[i, j] > 0.55 else "black")
  ax.set_xticks(np.arange(k), classes, rotation=45, ha="right", rotation_mode="anchor",
                fontsize=8)
  ax.set_yticks(np.arange(k), recall, fontsize=8)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true (class accuracy)")
  fig.colorbar(im, ax=ax, shrink=0.8, label="% of the true class (row)")
  ax.set_title(f"Confusion on the evaluate split: accuracy {100 * ev['accuracy']:.2f}% "
               f"({int(counts.sum())} examples; cells: counts)", fontsize=9)
  fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=110)


def plot_run(run_dir) -> list[pathlib.Path]:
  """Writes the run's PNGs into ``run_dir/plots/``, each only if its inputs exist.

  * ``curves.png``: loss and accuracy per epoch, train and evaluate (metrics.jsonl);
  * ``sparsity.png``: group sparsity per epoch in %, the half-space start marked,
    per-family sparsity as thin lines, the learning rate on a twin axis;
  * ``channels.png``: kept vs dense channels per family (summary.json);
  * ``confusion.png``: row-normalised confusion matrix with counts (summary.json).

  Returns:
    The paths written.
  """
  run_dir = pathlib.Path(run_dir)
  if not run_dir.is_dir():
    raise FileNotFoundError(f"{run_dir}: no such run folder")
  config = read_json_if_exists(run_dir / "config.json")
  summary = read_json_if_exists(run_dir / "summary.json")
  metrics = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
  title = run_title(config, summary)
  start = half_space_start(metrics, summary, config)
  jobs = []  # (file name, plot function, its arguments before ``path``)
  if metrics:
    jobs.append(("curves.png", _plot_curves, (metrics, title, start)))
    if any(r.get("group_sparsity") is not None for r in metrics):
      jobs.append(("sparsity.png", _plot_sparsity, (metrics, title, start)))
  if summary and summary.get("families"):
    jobs.append(("channels.png", _plot_channels,
                 (summary["families"], title, summary.get("params"))))
  ev = (summary or {}).get("eval") or {}
  if ev.get("confusion"):
    jobs.append(("confusion.png", _plot_confusion, (ev, summary.get("classes"), title)))
  out = run_dir / "plots"
  out.mkdir(exist_ok=True)
  for name, fn, args in jobs:
    fn(*args, out / name)
  return [out / name for name, _, _ in jobs]
