"""Run configuration: the schema, config files, dotted overrides, validation, ``--smoke``.

A config is an ``ml_collections.ConfigDict``. A config file is a Python file whose
``get_config()`` returns one (big_vision style); it starts from
:func:`default_config` and changes what it needs, so every field exists with a
type. Fields are overridden from the command line by their dotted names
(``optimizer.reg_strength=3e-3``); a name that is not in the schema is an
error listing the valid ones.

Everything is checked here, before any data is touched: names of models,
optimizers and base directions, ranges, the batch size against the device
count.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any

import ml_collections

__all__ = [
    "ConfigError",
    "OPTIMIZERS",
    "DIRECTIONS",
    "PARALLEL",
    "default_config",
    "load",
    "apply_overrides",
    "flatten",
    "smoke",
    "validate",
]

# hspg_jax's optimizers by name (see experiments/asc/optim.py); "base" is the plain
# direction without a regulariser (the dense baseline).
OPTIMIZERS = ("hspg", "proxsg", "proxsg_l1", "admm", "obproxsg", "dhspg", "hierarchical", "base")
# The ones whose steps are built on plain SGD (with momentum).
SGD_ONLY = ("proxsg", "proxsg_l1", "admm", "obproxsg", "hierarchical")
DIRECTIONS = ("sgd", "adam")
SCHEDULES = ("constant", "hold_then_linear", "cosine")
PARALLEL = ("sharded", "pmap")
FEATURES = ("cp_resnet", "logmel")


class ConfigError(ValueError):
  """A bad config field, override or config file; the message names it."""


def default_config() -> ml_collections.ConfigDict:
  """The main job: HSPG on a reduced-width CP-ResNet, built-in synthetic scenes.

  The defaults are chosen so that the run ends clearly group-sparse within a few
  minutes on 2 CPU cores (see the README, "How lambda, the learning rate and the
  direction govern sparsity").
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Where the cell of the seed's tables this run belongs to (set by grid configs).
  c.cell = ml_collections.ConfigDict({"table": "", "row": "", "column": ""})

  c.data = ml_collections.ConfigDict()
  c.data.root = "synthetic"        # "synthetic" or a DCASE2017 / DCASE2018 layout root
  c.data.name = "synthetic"        # a label for reports
  c.data.fold = 1                  # DCASE2017 has folds 1-4; 0 = the full development split
  c.data.features = "cp_resnet"    # cp_resnet (256 mel, perceptual weighting) | logmel
  c.data.n_mels = 256
  c.data.on_error = "raise"        # raise | skip (bad clips are left out and reported)
  c.data.limit_per_split = 0       # >0: use only this many clips per split (seeded)
  c.data.workers = 0               # feature-extraction processes; 0 = all cores

  c.model = ml_collections.ConfigDict()
  c.model.name = "cp_resnet"
  c.model.width_mult = 0.125
  c.model.rho = 5                  # CP-ResNet only; ignored by the other models
  # Other model keyword arguments, e.g. {"growth": 16} for DenseNet.
  c.model.kwargs = ml_collections.ConfigDict(type_safe=False)

  c.optimizer = ml_collections.ConfigDict()
  # hspg | proxsg | proxsg_l1 | admm | obproxsg | dhspg | hierarchical | base (the plain
  # direction: dense baseline). The first stage of two-stage methods is warmup_epochs
  # long: HSPG's subgradient stage, OBProx-SG's Prox-SG stage, DHSPG's warm-up before
  # the partition.
  c.optimizer.name = "hspg"
  c.optimizer.direction = "sgd"    # sgd (with momentum) | adam
  c.optimizer.momentum = 0.9       # sgd direction only; 0 = plain SGD
  c.optimizer.learning_rate = 0.05
  c.optimizer.final_learning_rate = 0.005
  c.optimizer.schedule = "hold_then_linear"  # constant | hold_then_linear | cosine
  c.optimizer.warmup_epochs = 8    # HSPG's first stage; the lr is held constant meanwhile
  c.optimizer.reg_strength = 0.05  # lambda (the l1 weight for proxsg_l1 / obproxsg; 0 = the
                                   # issue's default per direction for dhspg)
  c.optimizer.l1_strength = 0.0    # hierarchical: lambda_1 of the element-wise l1 term
  c.optimizer.target_group_sparsity = 0.5  # dhspg: the fraction of groups to zero
  # dhspg: reach the target within this many epochs after the partition (HESSO's
  # shrink of the groups still missing); 0 = the reference DHSPG, no guarantee.
  c.optimizer.pruning_epochs = 10
  # dhspg: the group size measure in its score: rms (||x_g|| / sqrt(n_g)) | mean (the
  # reference's ||x_g|| / n_g, which on CP-ResNet empties the residual stream).
  c.optimizer.magnitude = "rms"
  c.optimizer.rho = 1.0            # admm: the penalty of the augmented Lagrangian
  c.optimizer.epsilon = 0.0        # half-space control, in [0, 1)
  c.optimizer.restart_momentum = True  # fresh direction state at the half-space stage
  c.optimizer.weight_decay = 0.0   # decoupled, on ungrouped leaves too
  c.optimizer.max_nonfinite = 5    # stop after this many non-finite batches in a row

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 30
  c.train.batch_size = 32          # global: split over all devices of all processes
  c.train.eval_batch_size = 64
  c.train.eval_every = 1           # epochs; the last epoch is always evaluated
  c.train.mixup_alpha = 0.0        # 0 = off
  c.train.parallel = "sharded"     # sharded (jit over a NamedSharding mesh) | pmap
  c.train.max_steps_per_epoch = 0  # >0: cut epochs short (smoke runs)
  c.train.checkpoint_every_steps = 0  # >0: also checkpoint inside epochs
  c.train.keep_checkpoints = 2
  c.train.recalibrate_bn = True    # recompute BatchNorm statistics before the final evaluation
  c.train.recalibrate_batches = 0  # 0 = the whole training split
  # Per-epoch evaluation recomputes BatchNorm statistics from this many training
  # batches first (0: use the running averages, which lag a fast-changing network).
  c.train.eval_recalibrate_batches = 8
  c.train.prune = True             # prune and export at the end
  c.train.loader_threads = 4
  return c


# ----------------------------------------------------------------------------- files


def load(path: str | Path | None) -> ml_collections.ConfigDict:
  """The default config, or ``get_config()`` of the Python file at ``path``."""
  if path is None:
    return default_config()
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"--config {path}: no such file")
  spec = importlib.util.spec_from_file_location(f"_hspg_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - report any error in the user's file
    raise ConfigError(f"--config {path}: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config {path}: defines no get_config()")
  cfg = module.get_config()
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"--config {path}: get_config() returned {type(cfg).__name__}, "
                      "expected an ml_collections.ConfigDict (start from "
                      "experiments.asc.config.default_config())")
  _check_schema(cfg, default_config(), str(path))
  return cfg


def _check_schema(cfg, ref, where: str, prefix: str = ""):
  for key in cfg.keys():
    name = prefix + key
    if key not in ref:
      if prefix == "model.kwargs.":
        continue
      raise ConfigError(f"{where}: unknown field {name!r}{_suggest(name)}")
    if isinstance(ref[key], ml_collections.ConfigDict) and name != "model.kwargs":
      if not isinstance(cfg[key], ml_collections.ConfigDict):
        raise ConfigError(f"{where}: field {name!r} must be a group of fields")
      _check_schema(cfg[key], ref[key], where, name + ".")


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
  """``{"a.b": value}`` for every leaf field."""
  out = {}
  for key in cfg.keys():
    value = cfg[key]
    if isinstance(value, ml_collections.ConfigDict) and (prefix + key) != "model.kwargs":
      out.update(flatten(value, prefix + key + "."))
    else:
      out[prefix + key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  return out


def _suggest(name: str) -> str:
  fields = sorted(flatten(default_config()))
  close = difflib.get_close_matches(name, fields, n=3)
  hint = f"; did you mean {', '.join(close)}?" if close else ""
  return f"{hint}\nvalid fields: {', '.join(fields)}"


# ----------------------------------------------------------------------------- overrides


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word is a string: optimizer.name=proxsg


def apply_overrides(cfg: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """Applies ``["a.b=value", ...]`` (values parsed as Python literals, else strings).

  Raises:
    ConfigError: naming the override, for a missing ``=``, an unknown field
      (listing the valid ones) or a value of the wrong type.
  """
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r}: expected FIELD=VALUE, e.g. optimizer.reg_strength=1e-3")
    name, text = item.split("=", 1)
    name = name.strip()
    if name.startswith("--"):
      name = name[2:]
    if name.startswith("config."):
      name = name[len("config."):]
    value = _parse_value(text.strip())
    *parents, leaf = name.split(".")
    node = cfg
    for i, part in enumerate(parents):
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ConfigError(f"override {item!r}: unknown field {name!r}{_suggest(name)}")
      node = node[part]
    if ".".join(parents) == "model.kwargs":
      node[leaf] = value
      continue
    if name == "model.kwargs":
      if not isinstance(value, dict):
        raise ConfigError(f"override {item!r}: model.kwargs takes a dict, e.g. "
                          "model.kwargs={'growth': 16}")
      node[leaf] = ml_collections.ConfigDict(value, type_safe=False)
      continue
    if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
      raise ConfigError(f"override {item!r}: unknown field {name!r}{_suggest(name)}")
    old = node[leaf]
    if isinstance(old, bool) and not isinstance(value, bool):
      raise ConfigError(f"override {item!r}: {name} takes True or False")
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if isinstance(old, str) and not isinstance(value, str):
      value = text.strip()
    if old is not None and type(value) is not type(old):
      raise ConfigError(f"override {item!r}: {name} takes a {type(old).__name__}, "
                        f"got {type(value).__name__} {value!r}")
    node[leaf] = value
  return cfg


# ----------------------------------------------------------------------------- smoke


def smoke(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config so that it runs in about a minute on CPU.

  Keeps the model family, the optimizer and the shape of the schedule (warm-up,
  then the half-space stage); cuts widths, epochs, steps and the data.
  """
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.model.width_mult = min(cfg.model.width_mult, 1 / 16)
  cfg.train.epochs = min(cfg.train.epochs, 3)
  cfg.optimizer.warmup_epochs = min(cfg.optimizer.warmup_epochs, 1)
  cfg.optimizer.pruning_epochs = min(cfg.optimizer.pruning_epochs,
                                     cfg.train.epochs - cfg.optimizer.warmup_epochs)
  cfg.train.max_steps_per_epoch = 4 if cfg.train.max_steps_per_epoch <= 0 else \
      min(cfg.train.max_steps_per_epoch, 4)
  cfg.train.batch_size = min(cfg.train.batch_size, 16)
  cfg.train.eval_batch_size = min(cfg.train.eval_batch_size, 32)
  cfg.train.recalibrate_batches = 2
  cfg.train.eval_recalibrate_batches = min(cfg.train.eval_recalibrate_batches, 2)
  if cfg.data.root != "synthetic":
    cfg.data.limit_per_split = 64 if cfg.data.limit_per_split <= 0 else \
        min(cfg.data.limit_per_split, 64)
  return cfg


# ----------------------------------------------------------------------------- checks


def _require(ok: bool, field: str, message: str):
  if not ok:
    raise ConfigError(f"{field}: {message}")


def _one_of(cfg_value, field: str, choices):
  _require(cfg_value in choices, field,
           f"unknown value {cfg_value!r}; valid: {', '.join(map(str, choices))}")


def validate(cfg: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
  """Checks every field that can be checked without data; raises :class:`ConfigError`."""
  import models  # pylint: disable=g-import-not-at-top

  _check_schema(cfg, default_config(), "config")
  o, t, d, m = cfg.optimizer, cfg.train, cfg.data, cfg.model
  _one_of(m.name, "model.name", models.available_models())
  _one_of(o.name, "optimizer.name", OPTIMIZERS)
  _one_of(o.direction, "optimizer.direction", DIRECTIONS)
  _one_of(o.schedule, "optimizer.schedule", SCHEDULES)
  _one_of(t.parallel, "train.parallel", PARALLEL)
  _one_of(d.features, "data.features", FEATURES)
  _one_of(d.on_error, "data.on_error", ("raise", "skip"))
  _one_of(o.magnitude, "optimizer.magnitude", ("mean", "rms"))
  _require(m.width_mult > 0, "model.width_mult", f"must be > 0, got {m.width_mult}")
  _require(o.learning_rate > 0, "optimizer.learning_rate", f"must be > 0, got {o.learning_rate}")
  _require(o.final_learning_rate >= 0, "optimizer.final_learning_rate",
           f"must be >= 0, got {o.final_learning_rate}")
  _require(o.reg_strength >= 0, "optimizer.reg_strength", f"must be >= 0, got {o.reg_strength}")
  _require(0 <= o.epsilon < 1, "optimizer.epsilon", f"must be in [0, 1), got {o.epsilon}")
  _require(0 <= o.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {o.momentum}")
  _require(o.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}")
  _require(o.max_nonfinite >= 1, "optimizer.max_nonfinite", f"must be >= 1, got {o.max_nonfinite}")
  _require(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
  _require(0 <= o.warmup_epochs <= t.epochs, "optimizer.warmup_epochs",
           f"must be in [0, train.epochs={t.epochs}], got {o.warmup_epochs}")
  _require(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
  _require(t.eval_batch_size >= 1, "train.eval_batch_size",
           f"must be >= 1, got {t.eval_batch_size}")
  _require(t.eval_every >= 1, "train.eval_every", f"must be >= 1, got {t.eval_every}")
  _require(t.mixup_alpha >= 0, "train.mixup_alpha", f"must be >= 0, got {t.mixup_alpha}")
  _require(t.keep_checkpoints >= 1, "train.keep_checkpoints",
           f"must be >= 1, got {t.keep_checkpoints}")
  for f in ("max_steps_per_epoch", "checkpoint_every_steps", "recalibrate_batches",
            "eval_recalibrate_batches", "loader_threads"):
    _require(t[f] >= 0, f"train.{f}", f"must be >= 0, got {t[f]}")
  _require(d.limit_per_split >= 0, "data.limit_per_split", f"must be >= 0, got {d.limit_per_split}")
  _require(d.n_mels >= 1, "data.n_mels", f"must be >= 1, got {d.n_mels}")
  _require(d.fold >= 0, "data.fold", f"must be >= 0, got {d.fold}")
  if d.root != "synthetic":
    root = Path(d.root).expanduser()
    _require(root.is_dir(), "data.root", f"{root} is not a folder (give a DCASE-layout root, "
             "or 'synthetic')")
  if device_count is not None:
    for f in ("batch_size", "eval_batch_size"):
      _require(t[f] % device_count == 0, f"train.{f}",
               f"{t[f]} is not divisible by the {device_count} devices it is split over")
  _require(o.l1_strength >= 0, "optimizer.l1_strength", f"must be >= 0, got {o.l1_strength}")
  _require(0 < o.target_group_sparsity < 1, "optimizer.target_group_sparsity",
           f"must be in (0, 1), got {o.target_group_sparsity}")
  _require(o.pruning_epochs >= 0, "optimizer.pruning_epochs",
           f"must be >= 0 (0 = off), got {o.pruning_epochs}")
  if o.name == "dhspg" and o.pruning_epochs:
    _require(o.warmup_epochs + o.pruning_epochs <= t.epochs, "optimizer.pruning_epochs",
             f"warmup_epochs ({o.warmup_epochs}) + pruning_epochs ({o.pruning_epochs}) is "
             f"past train.epochs ({t.epochs}): the target would not be reached in the run; "
             "shorten it, or 0 for the reference DHSPG")
  _require(o.rho > 0, "optimizer.rho", f"must be > 0, got {o.rho}")
  if o.name in SGD_ONLY:
    _require(o.direction == "sgd", "optimizer.direction",
             f"optimizer.name={o.name} steps along SGD (with momentum); use "
             "optimizer.direction=sgd")


def to_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """A config from ``config.json`` of a run (missing newer fields take defaults)."""
  cfg = default_config()
  _merge(cfg, d, "")
  return cfg


def _merge(cfg, d, prefix):
  for key, value in d.items():
    name = prefix + key
    if name == "model.kwargs":
      cfg[key] = ml_collections.ConfigDict(value, type_safe=False)
    elif isinstance(value, dict) and key in cfg and isinstance(cfg[key], ml_collections.ConfigDict):
      _merge(cfg[key], value, name + ".")
    elif key in cfg:
      cfg[key] = value
    else:
      raise ConfigError(f"config.json: unknown field {name!r}")
