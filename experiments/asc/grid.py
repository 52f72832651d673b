"""``hspg-asc grid``: run the cells of the seed's tables, resumably.

Each (cell, seed) is one run folder ``RUNS/<table>/<column>_<row>/seed<k>``.
A cell whose folder holds a finished run (``summary.json``) is skipped; one
that holds an unfinished run resumes from its last checkpoint (see
:func:`experiments.asc.train.train`), so an interrupted grid continues where it
stopped when the same command is run again.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path

from experiments.asc import config as config_lib

__all__ = ["add_arguments", "plan", "main_args"]

PROTOCOLS = ("seed", "reduced")


def add_arguments(p: argparse.ArgumentParser):
  p.add_argument("--data", metavar="ROOT", required=True,
                 help="the data set: a DCASE2017 or DCASE2018 Task 1 layout root, or "
                      "'synthetic'")
  p.add_argument("--table", choices=("dcase2017", "dcase2018"),
                 help="which of the seed's tables (default: from the layout of --data)")
  p.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds per cell (default 1)")
  p.add_argument("--only", metavar="PATTERN", action="append",
                 help="run only cells whose name matches this glob, e.g. 'resnet_*' or "
                      "'*hspg*' (repeatable)")
  p.add_argument("--protocol", choices=PROTOCOLS, default="seed",
                 help="seed: 350 epochs at full width (days of GPU time); reduced: the "
                      "reduced-scale protocol of the README")
  p.add_argument("--lambdas", metavar="L1,L2,...",
                 help="add HSPG rows for these lambdas (a sweep), e.g. 0,1e-4,3e-4,1e-3,3e-3")
  p.add_argument("--label", metavar="NAME",
                 help="the data set's name in reports and under --runs (default: the table, "
                      "dcase2017/dcase2018, with --protocol seed; the folder name of --data "
                      "with --protocol reduced; 'synthetic' for the synthetic set)")
  p.add_argument("--smoke", action="store_true", help="shrink every cell to a smoke run")
  p.add_argument("--runs", metavar="DIR", default="runs/grid",
                 help="where the run folders go (default runs/grid)")
  p.add_argument("--list", action="store_true", help="list the cells and their state, run nothing")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                 help="config overrides applied to every cell")


def _lambdas(text):
  if not text:
    return ()
  out = []
  for part in text.split(","):
    try:
      value = float(part)
    except ValueError:
      raise config_lib.ConfigError(f"--lambdas: {part!r} is not a number") from None
    if value < 0:
      raise config_lib.ConfigError(f"--lambdas: lambda must be >= 0, got {value}")
    out.append(value)
  return tuple(out)


def plan(args) -> list[tuple[str, object, Path]]:
  """``(name, config, run folder)`` for every (cell, seed) the arguments select."""
  from experiments.configs import seed_tables  # pylint: disable=g-import-not-at-top

  if args.seeds < 1:
    raise config_lib.ConfigError(f"--seeds: must be >= 1, got {args.seeds}")
  table = args.table
  if table is None:
    if args.data == "synthetic":
      table = "dcase2018"
    else:
      from experiments.data import dcase  # pylint: disable=g-import-not-at-top

      root = Path(args.data).expanduser()
      if not root.is_dir():
        raise config_lib.ConfigError(f"--data: {root} is not a folder")
      table = dcase.detect_layout(root)
  cells = [(c, r) for t, c, r in seed_tables.cells() if t == table]
  from experiments.asc.report import format_lambda  # pylint: disable=g-import-not-at-top

  for lam in _lambdas(args.lambdas):
    for column in seed_tables.COLUMNS:
      row = f"HSPG {format_lambda(lam)}"
      if (column, row) not in cells:
        cells.append((column, row))
  out = []
  # Seed-major: after the first pass every cell has one run (a table to look at).
  for seed, (column, row) in ((s, cell) for s in range(args.seeds) for cell in cells):
    name = Path(seed_tables.file_name(column, row)).stem
    if args.only and not any(fnmatch.fnmatch(name, pat) for pat in args.only):
      continue
    cfg = _cell_config(seed_tables, table, column, row)
    if args.protocol == "reduced":
      seed_tables.reduced(cfg)
    cfg.data.root = args.data
    cfg.data.name = cfg.cell.table = _label(args, table)
    cfg.seed = seed
    config_lib.apply_overrides(cfg, args.overrides or [])
    if args.smoke:
      cfg = config_lib.smoke(cfg)
    config_lib.validate(cfg)
    out.append((name, cfg, Path(args.runs) / cfg.cell.table / name / f"seed{seed}"))
  if not out:
    raise config_lib.ConfigError(f"--only {args.only}: matches no cell of {table}")
  return out


def _label(args, table: str) -> str:
  if args.label:
    return args.label
  if args.data == "synthetic":
    return "synthetic"
  return table if args.protocol == "seed" else Path(args.data).expanduser().name


def _cell_config(seed_tables, table, column, row):
  if row.startswith("HSPG") and row not in seed_tables.ROWS[column]:
    cfg = seed_tables.cell(table, column, "HSPG 1e-3")
    cfg.cell.row = row
    cfg.optimizer.reg_strength = float(row.split()[1])
    return cfg
  return seed_tables.cell(table, column, row)


def state_of(run_dir: Path) -> str:
  """``finished``, ``partial (epoch k/n)`` or ``missing``."""
  if (run_dir / "summary.json").is_file():
    try:
      if json.loads((run_dir / "summary.json").read_text()).get("finished"):
        return "finished"
    except json.JSONDecodeError:
      pass
  metrics = run_dir / "metrics.jsonl"
  if metrics.is_file():
    epochs = [json.loads(line).get("epoch", 0) for line in metrics.read_text().splitlines()
              if line.strip().startswith("{") and line.strip().endswith("}")]
    cfg = json.loads((run_dir / "config.json").read_text())
    return f"partial (epoch {max(epochs, default=0)}/{cfg['train']['epochs']})"
  return "missing"


def main_args(args) -> int:
  jobs = plan(args)
  if args.list:
    width = max(len(n) for n, _, _ in jobs)
    for name, cfg, run_dir in jobs:
      print(f"{name:<{width}}  seed {cfg.seed}  {state_of(run_dir):<22} {run_dir}")
    return 0
  from experiments.asc import train  # pylint: disable=g-import-not-at-top

  todo = [(n, c, d) for n, c, d in jobs if state_of(d) != "finished"]
  print(f"{len(jobs)} runs, {len(jobs) - len(todo)} finished, {len(todo)} to run")
  data_cache = {}
  for k, (name, cfg, run_dir) in enumerate(todo, 1):
    print(f"[{k}/{len(todo)}] {name} seed {cfg.seed} -> {run_dir}")
    key = (cfg.data.root, cfg.data.features, cfg.data.n_mels, cfg.data.fold,
           cfg.data.limit_per_split, cfg.seed if cfg.data.limit_per_split else 0)
    if key not in data_cache:
      from experiments.asc import data as data_lib  # pylint: disable=g-import-not-at-top

      data_cache.clear()
      data_cache[key] = data_lib.load(cfg, progress=not args.no_progress)
    train.train(cfg, run_dir, progress=not args.no_progress, data=data_cache[key])
  return 0
