"""Working on finished (or interrupted) runs: evaluate and prune from a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.asc import checkpoint as ckpt_lib
from experiments.asc import config as config_lib
from experiments.asc import data as data_lib
from experiments.asc import export as export_lib
from experiments.asc import train as train_lib

__all__ = ["evaluate_run", "load_run", "prune_run"]


def load_run(run_dir, *, which: str = "last", data_root=None, progress: bool = True):
  """``(run, state)`` of a run folder's ``last`` or ``best`` checkpoint."""
  run_dir = Path(run_dir)
  cfg = config_lib.from_dict(json.loads((run_dir / "config.json").read_text()))
  if data_root is not None:
    cfg.data.root = str(data_root)
  data = data_lib.load(cfg, progress=progress)
  run = train_lib.build(cfg, data)
  ckpts = ckpt_lib.Checkpoints(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
  try:
    restored = ckpts.restore(run.stepper.abstract_state(cfg.seed), which=which)
  finally:
    ckpts.close()
  if restored is None:
    raise FileNotFoundError(f"{run_dir}/checkpoints/{which}: no checkpoint")
  state, meta = restored
  return run, run.stepper.put(state), meta


def _format_eval(title: str, ev, classes) -> str:
  lines = [f"{title}: accuracy {100 * ev.accuracy:.2f}% on {ev.num_examples} clips"
           + (f", loss {ev.loss:.4f}" if ev.loss == ev.loss else "")]
  width = max(len(c) for c in classes)
  lines.append("per class:")
  lines += [f"  {c:<{width}}  {100 * a:6.2f}%" for c, a in zip(classes, ev.per_class)]
  lines.append("confusion matrix (rows: true class, columns: predicted, in class order):")
  lines += ["  " + " ".join(f"{v:5d}" for v in row) for row in ev.confusion]
  return "\n".join(lines)


def evaluate_run(run_dir, *, which: str = "last", data_root=None, split: str = "evaluate",
                 recalibrate: bool = True, progress: bool = True) -> str:
  """Evaluates a checkpoint (``last``/``best``) or the exported ``pruned`` model."""
  run_dir = Path(run_dir)
  if which == "pruned":
    exported = export_lib.load(run_dir / "pruned")
    cfg = config_lib.from_dict(json.loads((run_dir / "config.json").read_text()))
    if data_root is not None:
      cfg.data.root = str(data_root)
    data = data_lib.load(cfg, progress=progress)
    if tuple(data.classes) != tuple(exported.info["classes"]):
      raise config_lib.ConfigError(f"--data: classes {data.classes} differ from the model's "
                                   f"{tuple(exported.info['classes'])}")
    source = data.sources[split]
    # Batch by batch (a DCASE evaluate split does not fit in memory at once),
    # un-normalised: the export carries its own statistics.
    order = data_lib.eval_order(len(source), cfg.train.eval_batch_size)
    logits = np.concatenate([exported.predict(b["features"]) for b in data_lib.Batches(
        source, None, order, threads=cfg.train.loader_threads)])[:len(source)]
    ev = train_lib.scores(logits, np.asarray(source.labels), len(data.classes), float("nan"))
    return _format_eval(f"{run_dir} pruned model, {split} split", ev, data.classes)
  run, state, meta = load_run(run_dir, which=which, data_root=data_root, progress=progress)
  stats = state.batch_stats
  if recalibrate and run.cfg.train.recalibrate_bn:
    stats = train_lib.recalibrate(run, state.params, stats, progress=progress)
  ev = train_lib.evaluate(run, state.params, stats, split, progress=progress)
  title = (f"{run_dir} {which} checkpoint (epoch {meta['epoch']}, batch {meta['batch']}), "
           f"{split} split{', BatchNorm recalibrated' if stats is not state.batch_stats else ''}")
  return _format_eval(title, ev, run.data.classes)


def prune_run(run_dir, *, which: str = "last", recalibrate: bool = True,
              progress: bool = True) -> str:
  """Prunes a checkpoint, checks it against the dense model, exports ``pruned/``."""
  run_dir = Path(run_dir)
  run, state, _ = load_run(run_dir, which=which, progress=progress)
  stats = state.batch_stats
  if recalibrate and run.cfg.train.recalibrate_bn:
    stats = train_lib.recalibrate(run, state.params, stats, progress=progress)
  params = run.stepper.host(state.params)
  rep = train_lib.prune_and_export(run, params, run.stepper.host(stats), run_dir)
  p, m = rep["params"], rep["macs"]
  ok = rep["pruned_agrees"]
  summary_path = run_dir / "summary.json"
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    summary.update(rep)
    train_lib.write_json(summary_path, summary)
  return (f"params {p['dense']:,} -> {p['pruned']:,} ({p['dense'] / p['pruned']:.2f}x smaller), "
          f"MACs {m['dense']:,} -> {m['pruned']:,} ({m['dense'] / m['pruned']:.2f}x fewer)\n"
          + (f"pruned predictions equal the dense model's on the evaluate split; exported to "
             f"{run_dir / 'pruned'}" if ok else
             "the pruned model's predictions DIFFER from the dense model's: not exported"))
