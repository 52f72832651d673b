"""The training loop: one loop for every model, optimizer and data set.

:func:`train` runs a config into a run folder (see ``RUN_FOLDER`` in the
README): it resumes from the folder's last checkpoint if there is one,
evaluates every ``train.eval_every`` epochs, keeps the last and the best
checkpoints, and at the end recomputes the BatchNorm statistics over the
training split, evaluates before and after, prunes the zero groups into a slim
model (checked against the dense one on the evaluate split), exports it, and
writes ``summary.json`` and the plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import hspg_jax
import hspg_jax.flax
import models
from experiments.asc import checkpoint as ckpt_lib
from experiments.asc import config as config_lib
from experiments.asc import data as data_lib
from experiments.asc import export as export_lib
from experiments.asc import optim
from experiments.asc import step as step_lib

__all__ = ["Run", "TrainingStopped", "build", "evaluate", "model_kwargs", "recalibrate", "scores",
           "train", "write_json"]

# Fields that do not change results: a resumed run may differ in them.
_NEUTRAL = ("data.workers", "train.loader_threads")


class TrainingStopped(RuntimeError):
  """The run stopped on purpose (non-finite gradients); the message says why."""


def model_kwargs(cfg) -> dict:
  kw = dict(cfg.model.kwargs.to_dict()) if cfg.model.kwargs else {}
  kw.setdefault("width_mult", cfg.model.width_mult)
  if cfg.model.name == "cp_resnet":
    kw.setdefault("rho", cfg.model.rho)
  return kw


@dataclasses.dataclass
class Run:
  """Everything built from a config and its data."""

  cfg: object
  data: object
  model: nnx.Module
  graph: hspg_jax.flax.ChannelGraph
  stepper: step_lib.Stepper
  steps_per_epoch: int
  input_shape: tuple[int, ...]


def build(cfg, data, *, devices=None) -> Run:
  """Model, groups, optimizer and compiled steps for ``cfg`` on ``data``."""
  input_shape = tuple(data.input_shape)
  n_classes = len(data.classes)
  try:
    model = models.get_model(cfg.model.name, n_classes, rngs=nnx.Rngs(cfg.seed),
                             **model_kwargs(cfg))
  except TypeError as e:
    raise config_lib.ConfigError(f"model.kwargs: {cfg.model.name} does not take them: {e}") from e
  graph = hspg_jax.flax.analyze_channels(model, (1, *input_shape))
  n_train = len(data.sources["train"])
  steps = n_train // cfg.train.batch_size
  if steps == 0:
    raise config_lib.ConfigError(
        f"train.batch_size: {cfg.train.batch_size} is larger than the training split "
        f"({n_train} clips)")
  if cfg.train.max_steps_per_epoch:
    steps = min(steps, cfg.train.max_steps_per_epoch)
  tx = optim.build(cfg, graph.spec, steps)
  stepper = step_lib.Stepper(model, tx, cfg.train.parallel, devices=devices)
  return Run(cfg, data, model, graph, stepper, steps, input_shape)


# ----------------------------------------------------------------------------- helpers


def _is_main() -> bool:
  return jax.process_index() == 0


def _say(msg: str):
  if _is_main():
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    tqdm.write(msg, file=sys.stdout)


def _barrier(name: str, timeout_s: int = 1800):
  """Waits for every process (multi-process runs), through jax.distributed's service.

  The first collective of a run initialises gloo's context with a 30-s deadline;
  processes that reach it far apart (data preparation, compilation on a loaded
  machine) would fail there, so they meet here first.
  """
  if jax.process_count() > 1:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top

    distributed.global_state.client.wait_at_barrier(f"hspg-asc/{name}", timeout_s * 1000)


def _gather(x) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def write_json(path: Path, obj):
  """Writes ``obj`` to ``path`` atomically (process 0 only)."""
  if not _is_main():
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))
  tmp.replace(path)


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(type(o))


def _group_stats(params, graph) -> dict:
  masks = hspg_jax.zero_group_masks(params, graph.spec)
  zero = {k: int(np.sum(v)) for k, v in masks.items()}
  total = {k: int(np.size(v)) for k, v in masks.items()}
  n = sum(total.values())
  return {"zero_groups": zero, "num_groups": total,
          "group_sparsity": (sum(zero.values()) / n) if n else 0.0}


def _progress(iterable, total, desc, enabled):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(iterable, total=total, desc=desc, unit="step", leave=False,
              disable=not enabled or not _is_main(), dynamic_ncols=True)


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class EvalResult:
  accuracy: float
  loss: float
  per_class: list
  confusion: list
  num_examples: int
  predictions: np.ndarray

  def to_json(self) -> dict:
    return {"accuracy": self.accuracy, "loss": self.loss, "per_class": self.per_class,
            "confusion": self.confusion, "num_examples": self.num_examples}


def evaluate(run: Run, params, stats, split: str = "evaluate", *, progress: bool = False,
             desc: str = "evaluate") -> EvalResult:
  """Accuracy, loss, per-class accuracy and confusion matrix on ``split``."""
  source = run.data.sources[split]
  n = len(source)
  batches = data_lib.Batches(source, run.data.stats,
                             data_lib.eval_order(n, run.cfg.train.eval_batch_size),
                             jax.process_index(), jax.process_count(),
                             threads=run.cfg.train.loader_threads)
  logits, losses = [], []
  for b in _progress(batches, len(batches), desc, progress):
    lg, ce = run.stepper.eval_batch(params, stats, b)
    logits.append(_gather(lg))
    losses.append(_gather(ce))
  logits = np.concatenate(logits)[:n]
  loss = float(np.sum(np.concatenate(losses)[:n]) / max(n, 1))
  return scores(logits, np.asarray(source.labels), len(run.data.classes), loss)


def scores(logits, labels, n_classes, loss) -> EvalResult:
  """Accuracy, per-class accuracy and confusion matrix of ``logits`` against ``labels``."""
  pred = np.argmax(logits, -1)
  confusion = np.zeros((n_classes, n_classes), np.int64)
  np.add.at(confusion, (labels, pred), 1)
  support = confusion.sum(1)
  per_class = [float(confusion[i, i] / support[i]) if support[i] else float("nan")
               for i in range(n_classes)]
  acc = float(np.mean(pred == labels)) if len(labels) else float("nan")
  return EvalResult(acc, loss, per_class, confusion.tolist(), int(len(labels)), pred)


def recalibrate(run: Run, params, stats, *, progress: bool = False, max_batches: int | None = None):
  """BatchNorm statistics recomputed over the training split.

  The running statistics are replaced by the average over training batches of
  each batch's own statistics (train-mode forward with momentum 0), as
  PyTorch's ``update_bn`` does: after HSPG has zeroed many channels, the
  exponential averages collected during training describe an older network.
  """
  cfg = run.cfg
  source = run.data.sources["train"]
  gb = cfg.train.batch_size
  # A fixed shuffle: fold files are often sorted by class, and a few batches of
  # one class would describe no network state well.
  order = np.random.default_rng([cfg.seed, 0xBA7C]).permutation(len(source))
  order = order[:(len(source) // gb) * gb].reshape(-1, gb)
  limit = cfg.train.recalibrate_batches if max_batches is None else max_batches
  if limit:
    order = order[:limit]
  batches = data_lib.Batches(source, run.data.stats, order, jax.process_index(),
                             jax.process_count(), threads=cfg.train.loader_threads)
  total = None
  for b in _progress(batches, len(batches), "BatchNorm recalibration", progress):
    new = run.stepper.recal_batch(params, stats, b)
    total = new if total is None else jax.tree.map(jnp.add, total, new)
  if total is None:
    return stats
  return jax.tree.map(lambda t: t / len(order), total)


# ----------------------------------------------------------------------------- the run folder


class OtherConfigError(config_lib.ConfigError):
  """The run folder holds a run with a different config (``overwrite`` starts over)."""


def _check_folder(workdir: Path, cfg, overwrite: bool):
  cfg_path = workdir / "config.json"
  if not cfg_path.exists():
    if workdir.exists() and any(workdir.iterdir()) and not overwrite:
      raise config_lib.ConfigError(
          f"--workdir {workdir}: the folder is not empty and holds no run (no config.json); "
          "choose another folder or pass --overwrite")
    return False
  try:
    old = config_lib.flatten(config_lib.from_dict(json.loads(cfg_path.read_text())))
  except (ValueError, config_lib.ConfigError) as e:
    if overwrite:
      return False
    raise config_lib.ConfigError(f"{cfg_path}: unreadable ({e}); pass --overwrite to start over")
  new = config_lib.flatten(cfg)
  diff = [k for k in sorted(set(old) | set(new))
          if k not in _NEUTRAL and old.get(k) != new.get(k)]
  if diff and not overwrite:
    lines = "\n".join(f"  {k}: {old.get(k)!r} in the folder, {new.get(k)!r} now" for k in diff[:20])
    raise OtherConfigError(
        f"--workdir {workdir} holds a run with a different config:\n{lines}\n"
        "resume it with the same config, choose another --workdir, or pass --overwrite")
  return not diff


def _clear(workdir: Path):
  if _is_main() and workdir.exists():
    for child in workdir.iterdir():
      if child.is_dir():
        shutil.rmtree(child)
      else:
        child.unlink()


def _metrics_upto(path: Path, epoch: int):
  """Keeps the metrics lines of epochs <= ``epoch`` (drops a truncated last line)."""
  if not _is_main() or not path.exists():
    return
  keep = []
  for line in path.read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue
    if rec.get("epoch", 0) <= epoch:
      keep.append(line)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(line + "\n" for line in keep))
  tmp.replace(path)


def _append_metrics(path: Path, record: dict):
  if not _is_main():
    return
  with open(path, "a") as f:
    f.write(json.dumps(record, default=_json_default) + "\n")
    f.flush()
    os.fsync(f.fileno())


# ----------------------------------------------------------------------------- train


def train(cfg, workdir, *, overwrite: bool = False, progress: bool = True,
          data=None, devices=None, finalize: bool = True) -> dict:
  """Trains ``cfg`` into ``workdir`` (resuming it if it holds the same config).

  Args:
    cfg: an ``ml_collections.ConfigDict`` (see :mod:`experiments.asc.config`).
    workdir: the run folder.
    overwrite: start over in a folder that holds another run.
    progress: progress bars.
    data: prepared data (default: loaded as ``cfg.data`` says).
    devices: devices to train on (default: all).
    finalize: recalibrate, evaluate, prune, export and report at the end.

  Returns:
    The summary (also written to ``workdir/summary.json``).

  Raises:
    ConfigError: a bad config, or a folder holding another run.
    TrainingStopped: ``optimizer.max_nonfinite`` non-finite batches in a row.
  """
  t_start = time.time()
  n_dev = len(devices) if devices is not None else jax.device_count()
  config_lib.validate(cfg, device_count=n_dev)
  workdir = Path(workdir).absolute()
  same = _check_folder(workdir, cfg, overwrite) and not overwrite  # --overwrite: start over
  if not same:
    _clear(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if _is_main():
    (workdir / "config.json").write_text(config_lib.to_json(cfg))
  summary_path = workdir / "summary.json"
  if same and summary_path.exists():
    summary = json.loads(summary_path.read_text())
    if summary.get("finished"):
      _say(f"{workdir}: already finished (summary.json); nothing to do")
      return summary

  if data is None:
    data = data_lib.load(cfg, progress=progress)
  run = build(cfg, data, devices=devices)
  stepper, graph = run.stepper, run.graph
  _barrier("built")
  ckpts = ckpt_lib.Checkpoints(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
  restored = ckpts.restore(stepper.abstract_state(cfg.seed))
  if restored is None:
    state = stepper.init_state(cfg.seed)
    meta = {"epoch": 0, "batch": 0, "best_acc": -1.0, "best_epoch": 0}
    if _is_main():
      (workdir / "metrics.jsonl").write_text("")
  else:
    state, meta = restored
    state = stepper.put(state)
    _say(f"resuming {workdir} at epoch {meta['epoch'] + 1}, batch {meta['batch']} "
         f"(step {int(stepper.host(state.step))})")
  metrics_path = workdir / "metrics.jsonl"
  _metrics_upto(metrics_path, meta["epoch"])
  _say(f"run folder: {workdir}\n{data.dataset.summary()}\n"
       f"model {cfg.model.name} ({hspg_jax.flax.count_params(run.model):,} params, "
       f"{graph.structure.num_groups} groups in {len(graph.families)} families), "
       f"optimizer {cfg.optimizer.name}/{cfg.optimizer.direction}, "
       f"{run.steps_per_epoch} steps/epoch x {cfg.train.epochs} epochs on {n_dev} device(s) "
       f"({cfg.train.parallel})")

  gb = cfg.train.batch_size
  n_train = len(data.sources["train"])
  lr_at = optim.learning_rate_schedule(cfg, run.steps_per_epoch)
  streak = 0
  try:
    for epoch in range(meta["epoch"], cfg.train.epochs):
      order = data_lib.train_order(n_train, gb, cfg.seed, epoch, cfg.train.max_steps_per_epoch)
      start = meta["batch"] if epoch == meta["epoch"] else 0
      batches = data_lib.Batches(
          data.sources["train"], data.stats, order, jax.process_index(), jax.process_count(),
          start=start, mixup_alpha=cfg.train.mixup_alpha, mixup_seed=(cfg.seed, epoch),
          threads=cfg.train.loader_threads)
      t0 = time.time()
      sums = {"loss": 0.0, "correct": 0.0, "count": 0.0, "skipped": 0, "steps": 0}
      if start and meta.get("sums"):
        sums = dict(meta["sums"])  # the part of this epoch done before the checkpoint
      bar = _progress(batches, len(batches), f"epoch {epoch + 1}/{cfg.train.epochs}", progress)
      pending = None
      for i, b in enumerate(bar, start=start):
        state, m = stepper.train_step(state, b)
        if pending is not None:
          streak = _account(sums, pending, streak, cfg, bar)
        pending = m
        if cfg.train.checkpoint_every_steps and (i + 1) % cfg.train.checkpoint_every_steps == 0 \
            and i + 1 < len(order):
          streak = _account(sums, pending, streak, cfg, bar)
          pending = None
          ckpts.save(int(stepper.host(state.step)), state,
                     {**meta, "epoch": epoch, "batch": i + 1, "sums": sums})
      if pending is not None:
        streak = _account(sums, pending, streak, cfg, bar)
      bar.close()
      dt = time.time() - t0
      params_host = stepper.host(state.params)
      record = {
          "epoch": epoch + 1, "step": int(stepper.host(state.step)),
          "lr": float(lr_at((epoch + 1) * run.steps_per_epoch - 1)),
          "stage": optim.stage(cfg, epoch),
          "train_loss": sums["loss"] / max(sums["steps"] - sums["skipped"], 1),
          "train_acc": sums["correct"] / max(sums["count"], 1),
          "eval_loss": None, "eval_acc": None,
          **_group_stats(params_host, graph),
          "skipped_steps": sums["skipped"],
          "examples_per_sec": sums["steps"] * gb / max(dt, 1e-9),
          "epoch_time_s": dt,
      }
      is_best = False
      if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
        eval_stats = state.batch_stats
        if cfg.train.eval_recalibrate_batches:
          eval_stats = recalibrate(run, state.params, state.batch_stats,
                                   max_batches=cfg.train.eval_recalibrate_batches)
        ev = evaluate(run, state.params, eval_stats, progress=progress)
        record["eval_loss"], record["eval_acc"] = ev.loss, ev.accuracy
        if ev.accuracy > meta["best_acc"]:
          is_best = True
          meta = {**meta, "best_acc": ev.accuracy, "best_epoch": epoch + 1}
      meta = {**meta, "epoch": epoch + 1, "batch": 0, "sums": None}
      ckpts.save(int(stepper.host(state.step)), state, meta, best=is_best)
      _append_metrics(metrics_path, record)
      _say(_epoch_line(record, cfg))
  finally:
    ckpts.close()

  if not finalize:
    return {}
  _barrier("trained")
  summary = finish(run, state, workdir, progress=progress, best=meta)
  summary["wall_time_s"] = time.time() - t_start
  write_json(summary_path, summary)
  if _is_main():
    _report(workdir, summary)
  return summary


def _account(sums, m, streak, cfg, bar) -> int:
  m = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), m)
  finite = bool(m["finite"])
  sums["steps"] += 1
  if finite:
    sums["loss"] += float(m["loss"])
    sums["correct"] += float(m["correct"])
    sums["count"] += float(m["count"])
    streak = 0
  else:
    sums["skipped"] += 1
    streak += 1
    if streak >= cfg.optimizer.max_nonfinite:
      raise TrainingStopped(
          f"{streak} batches in a row had non-finite gradients (optimizer.max_nonfinite="
          f"{cfg.optimizer.max_nonfinite}); parameters were left untouched by them and the "
          "last checkpoint is intact. Lower optimizer.learning_rate or check the data.")
  if sums["count"]:
    bar.set_postfix(loss=f"{sums['loss'] / max(sums['steps'] - sums['skipped'], 1):.3f}",
                    acc=f"{sums['correct'] / sums['count']:.3f}", refresh=False)
  return streak


def _epoch_line(r, cfg) -> str:
  ev = f" | eval loss {r['eval_loss']:.3f} acc {r['eval_acc']:.3f}" if r["eval_acc"] is not None \
      else ""
  skipped = f" | skipped {r['skipped_steps']}" if r["skipped_steps"] else ""
  return (f"epoch {r['epoch']:>3}/{cfg.train.epochs} [{r['stage']}] lr {r['lr']:.2e} | "
          f"train loss {r['train_loss']:.3f} acc {r['train_acc']:.3f}{ev} | "
          f"group sparsity {100 * r['group_sparsity']:5.1f}% | "
          f"{r['examples_per_sec']:.0f} ex/s{skipped}")


# ----------------------------------------------------------------------------- the end of a run


def finish(run: Run, state, workdir: Path, *, progress: bool = True, best=None) -> dict:
  """BatchNorm recalibration, final evaluation, pruning, export; returns the summary."""
  cfg = run.cfg
  before = evaluate(run, state.params, state.batch_stats, progress=progress,
                    desc="final evaluation")
  stats = state.batch_stats
  after = None
  if cfg.train.recalibrate_bn:
    stats = recalibrate(run, state.params, state.batch_stats, progress=progress)
    after = evaluate(run, state.params, stats, progress=progress,
                     desc="evaluation after recalibration")
  final = after or before
  params_host = run.stepper.host(state.params)
  stats_host = run.stepper.host(stats)
  groups = _group_stats(params_host, run.graph)
  summary = {
      "run_dir": str(workdir), "finished": True, "classes": list(run.data.classes),
      "dataset": cfg.data.name, "model": cfg.model.name, "optimizer": cfg.optimizer.name,
      "direction": cfg.optimizer.direction, "reg_strength": cfg.optimizer.reg_strength,
      "seed": cfg.seed, "cell": cfg.cell.to_dict() if cfg.cell.row else None,
      "epochs": cfg.train.epochs,
      "half_space_start_epoch": (cfg.optimizer.warmup_epochs + 1
                                 if cfg.optimizer.name in optim.STAGES else None),
      "eval": final.to_json(),
      "eval_before_recalibration": before.to_json() if after is not None else None,
      "group_sparsity": groups["group_sparsity"],
      "families": [{"name": k, "groups": groups["num_groups"][k], "zero": groups["zero_groups"][k]}
                   for k in groups["num_groups"]],
      "best": {"epoch": best.get("best_epoch"), "eval_acc": best.get("best_acc")} if best else None,
      "params": {"dense": hspg_jax.flax.count_params(run.model), "pruned": None},
      "macs": {"dense": hspg_jax.flax.count_macs(run.model, (1, *run.input_shape)),
               "pruned": None},
      "pruned_agrees": None,
  }
  if cfg.train.prune:
    summary.update(prune_and_export(run, params_host, stats_host, workdir, final.predictions,
                                    progress=progress))
  return summary


def live_model(run: Run, params, stats) -> nnx.Module:
  """The model in eval mode holding ``params`` and ``stats`` (host arrays)."""
  return step_lib.merge(run.stepper.defs, "eval", jax.tree.map(jnp.asarray, params),
                        jax.tree.map(jnp.asarray, stats))


def predict(model: nnx.Module, run: Run, split: str = "evaluate") -> np.ndarray:
  """Logits of ``model`` (eval mode) on ``split``, on this process's default device."""
  f = export_lib.forward(model)
  source = run.data.sources[split]
  order = data_lib.eval_order(len(source), run.cfg.train.eval_batch_size)
  batches = data_lib.Batches(source, run.data.stats, order, threads=run.cfg.train.loader_threads)
  return np.concatenate([f(b["features"]) for b in batches])[:len(source)]


def prune_and_export(run: Run, params, stats, workdir: Path, dense_pred=None, *,
                     progress: bool = True) -> dict:
  """Prunes the zero groups, checks predictions on the evaluate split, exports ``pruned/``."""
  del progress
  dense = live_model(run, params, stats)
  try:
    small = hspg_jax.flax.prune(dense, run.graph)  # checks itself on a probe input
  except ValueError as e:
    _say(f"WARNING: pruning failed its check, nothing exported: {e}")
    return {"pruned_agrees": False, "prune_error": str(e)}
  small.eval()
  if dense_pred is None:
    dense_pred = np.argmax(predict(dense, run), -1)
  small_logits = predict(small, run)
  small_pred = np.argmax(small_logits, -1)
  agrees = bool(np.array_equal(small_pred, dense_pred))
  if not agrees:
    bad = int(np.sum(small_pred != dense_pred))
    _say(f"WARNING: the pruned model disagrees with the dense one on {bad} of "
         f"{len(dense_pred)} evaluate clips; not exported")
  shape = (1, *run.input_shape)
  report = {"params": {"dense": hspg_jax.flax.count_params(dense),
                       "pruned": hspg_jax.flax.count_params(small)},
            "macs": {"dense": hspg_jax.flax.count_macs(dense, shape),
                     "pruned": hspg_jax.flax.count_macs(small, shape)},
            "pruned_agrees": agrees,
            "kept_channels": _kept_channels(small, run)}
  if agrees and _is_main():
    info = {"model": run.cfg.model.name, "n_classes": len(run.data.classes),
            "kwargs": model_kwargs(run.cfg), "input_shape": list(run.input_shape),
            "classes": list(run.data.classes),
            "features": data_lib.feature_config(run.cfg).to_dict()}
    export_lib.save(workdir / "pruned", small, info=info, norm=run.data.stats)
  return report


def _kept_channels(small, run: Run) -> list:
  params = nnx.state(small, nnx.Param).to_pure_dict()
  flat = {hspg_jax.groups.path_str(p): np.shape(x)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  out = []
  for fam in run.graph.families:
    path, axis = next((p, a) for p, a in fam.members if p in flat)
    out.append({"name": fam.name, "dense": fam.size, "kept": int(flat[path][axis])})
  return out


def _report(workdir: Path, summary: dict):
  try:
    from experiments.asc import report  # pylint: disable=g-import-not-at-top

    report.plot_run(workdir)
    print(report.format_summary(summary, report.read_metrics(workdir)))
  except Exception as e:  # noqa: BLE001 - a plotting failure must not lose the run
    print(f"(report failed: {type(e).__name__}: {e}; summary.json is written)")


