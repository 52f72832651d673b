"""``hspg-asc``: train, evaluate, prune and tabulate acoustic scene classifiers.

  hspg-asc train                         # the main job: HSPG, synthetic scenes, CP-ResNet
  hspg-asc train --config experiments/configs/dcase2018/cp_resnet_hspg_1e-3.py \\
      --data /data/TUT-urban-acoustic-scenes-2018-development optimizer.epsilon=0.2
  hspg-asc evaluate runs/main            # accuracy, per class, confusion matrix
  hspg-asc prune runs/main               # slim model, checked and exported
  hspg-asc grid --data ROOT --list       # the seed's table cells and their state
  hspg-asc table runs/grid               # seed-format tables over seeds

Every argument is checked before any data is touched; errors name the option
or config field and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


class _Fail(Exception):
  """A user error: printed as one line (or a short block), exit status 2."""


def _add_train_args(p: argparse.ArgumentParser):
  p.add_argument("--config", metavar="FILE",
                 help="a Python file whose get_config() returns the run's config "
                      "(default: the main job, experiments.asc.config.default_config)")
  p.add_argument("--data", metavar="ROOT",
                 help="'synthetic' (the built-in scene set) or the root of a data set in the "
                      "DCASE2017 or DCASE2018 Task 1 layout (overrides data.root)")
  p.add_argument("--smoke", action="store_true",
                 help="shrink the config to run in about a minute on CPU (tiny widths, "
                      "3 epochs of 4 steps, at most 64 clips per split)")
  p.add_argument("--overwrite", action="store_true",
                 help="start over in --workdir, deleting the run it holds (by default a run with the same config is resumed, and another config is refused)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  _add_distributed_args(p)


def _add_distributed_args(p):
  g = p.add_argument_group("multi-process (jax.distributed)")
  g.add_argument("--coordinator", metavar="HOST:PORT",
                 help="coordinator address of a multi-process run (process 0 listens there)")
  g.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
  g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")
  g.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() with cluster auto-detection "
                      "(TPU pods, SLURM, ...) instead of the three flags above")


def _parser() -> argparse.ArgumentParser:
  from experiments.asc import table  # pylint: disable=g-import-not-at-top

  ap = argparse.ArgumentParser(
      prog="hspg-asc", description=__doc__.split("\n\n")[0],
      epilog="Run `hspg-asc COMMAND --help` for the options of each command.")
  sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

  p = sub.add_parser(
      "train", help="train a scene classifier (HSPG by default), prune it and report",
      description="Trains, evaluates, recalibrates BatchNorm, prunes and reports. Resumes the "
                  "run in --workdir if it holds the same config. Trailing FIELD=VALUE "
                  "arguments override config fields by dotted name, e.g. "
                  "optimizer.reg_strength=1e-3 train.epochs=10.")
  p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE", help="config overrides")
  p.add_argument("--workdir", metavar="DIR",
                 help="the run folder (default: runs/<model>_<optimizer>_<data>_seed<seed>)")
  _add_train_args(p)

  p = sub.add_parser("evaluate", help="evaluate a run's checkpoint or its pruned model",
                     description="Accuracy, per-class accuracy and the confusion matrix of a "
                                 "run's last or best checkpoint, or of its exported pruned model.")
  p.add_argument("run", metavar="RUN", help="a run folder")
  p.add_argument("--which", choices=("last", "best", "pruned"), default="last",
                 help="what to evaluate (default: last)")
  p.add_argument("--data", metavar="ROOT",
                 help="evaluate on another data set of the same classes (default: the run's)")
  p.add_argument("--split", default="evaluate", choices=("evaluate", "train"),
                 help="split to evaluate (default: evaluate)")
  p.add_argument("--no-recalibrate", action="store_true",
                 help="use the checkpoint's BatchNorm statistics as they are")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")

  p = sub.add_parser("prune", help="build, check and export the slim model of a run",
                     description="Removes the exactly-zero groups with hspg_jax.flax.prune, "
                                 "checks on the evaluate split that the slim model predicts "
                                 "what the dense one does, and exports it to RUN/pruned.")
  p.add_argument("run", metavar="RUN", help="a run folder")
  p.add_argument("--which", choices=("last", "best"), default="last",
                 help="checkpoint to prune (default: last)")
  p.add_argument("--no-recalibrate", action="store_true",
                 help="keep the checkpoint's BatchNorm statistics")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")

  p = sub.add_parser("grid", help="run the cells of the seed's tables (resumable)",
                     description="Runs every config of experiments/configs/<table>/ for each "
                                 "seed, skipping finished runs and resuming unfinished ones.")
  from experiments.asc import grid  # pylint: disable=g-import-not-at-top

  grid.add_arguments(p)

  p = sub.add_parser("table", help="aggregate finished runs into the seed's table format",
                     description="Mean +/- std over seeds per (row, column) cell, printed and "
                                 "written as Markdown and CSV.")
  table.add_arguments(p)
  return ap


def _init_distributed(args):
  import jax  # pylint: disable=g-import-not-at-top

  flags = (args.coordinator, args.num_processes, args.process_id)
  if any(f is not None for f in flags):
    if not all(f is not None for f in flags):
      raise _Fail("--coordinator, --num-processes and --process-id go together")
    if args.num_processes < 1:
      raise _Fail(f"--num-processes: must be >= 1, got {args.num_processes}")
    if not 0 <= args.process_id < args.num_processes:
      raise _Fail(f"--process-id: must be in [0, {args.num_processes - 1}], got {args.process_id}")
    # CPU collectives across processes go through gloo (GPU/TPU use their own);
    # asking for the backend here would initialise it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  elif args.distributed:
    jax.distributed.initialize()


def _train(args) -> int:
  # jax.distributed must start before anything initialises a JAX backend.
  _init_distributed(args)
  from experiments.asc import config as config_lib  # pylint: disable=g-import-not-at-top

  cfg = config_lib.load(args.config)
  config_lib.apply_overrides(cfg, args.overrides)
  if args.data:
    cfg.data.root = args.data
    if args.data != "synthetic" and cfg.data.name == "synthetic":
      cfg.data.name = Path(args.data).name
  if args.smoke:
    cfg = config_lib.smoke(cfg)
  config_lib.validate(cfg)  # before jax starts or any data is touched
  if args.workdir is None:
    args.workdir = str(Path("runs") / default_run_name(cfg))
  from experiments.asc import train  # pylint: disable=g-import-not-at-top

  train.train(cfg, args.workdir, overwrite=args.overwrite, progress=not args.no_progress)
  return 0


def default_run_name(cfg) -> str:
  lam = f"_lam{cfg.optimizer.reg_strength:g}" if cfg.optimizer.name != "base" else ""
  return (f"{cfg.model.name}_{cfg.optimizer.name}-{cfg.optimizer.direction}{lam}_"
          f"{cfg.data.name}_seed{cfg.seed}")


def _run_dir(path) -> Path:
  run = Path(path)
  if not (run / "config.json").is_file():
    raise _Fail(f"RUN {run}: not a run folder (no config.json)")
  return run


def _evaluate(args) -> int:
  from experiments.asc import runs  # pylint: disable=g-import-not-at-top

  run = _run_dir(args.run)
  result = runs.evaluate_run(run, which=args.which, data_root=args.data, split=args.split,
                             recalibrate=not args.no_recalibrate, progress=not args.no_progress)
  print(result)
  return 0


def _prune(args) -> int:
  from experiments.asc import runs  # pylint: disable=g-import-not-at-top

  run = _run_dir(args.run)
  print(runs.prune_run(run, which=args.which, recalibrate=not args.no_recalibrate,
                       progress=not args.no_progress))
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = _parser()
  args = parser.parse_args(argv)
  from experiments.asc import config as config_lib  # pylint: disable=g-import-not-at-top
  from experiments.data import dcase  # pylint: disable=g-import-not-at-top

  try:
    if args.command == "train":
      return _train(args)
    if args.command == "evaluate":
      return _evaluate(args)
    if args.command == "prune":
      return _prune(args)
    if args.command == "grid":
      from experiments.asc import grid  # pylint: disable=g-import-not-at-top

      return grid.main_args(args)
    from experiments.asc import table  # pylint: disable=g-import-not-at-top

    print(table.run(args.run_dirs, args.out, with_seed=args.with_seed, plot=not args.no_plot),
          end="")
    print(f"wrote {args.out / 'table.md'} and {args.out / 'table.csv'}")
    return 0
  except (_Fail, config_lib.ConfigError, dcase.DataError, FileNotFoundError) as e:
    print(f"hspg-asc {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"hspg-asc {args.command}: interrupted; the run folder keeps its last checkpoint "
          "(run the same command again to resume)", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001
    from experiments.asc import train  # pylint: disable=g-import-not-at-top

    if isinstance(e, train.TrainingStopped):
      print(f"hspg-asc {args.command}: stopped: {e}", file=sys.stderr)
      return 3
    raise


if __name__ == "__main__":
  sys.exit(main())
