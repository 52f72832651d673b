"""Command line for the ASC data sets.

``hspg-data {synth,check,features,tfds-build} --help``
(or ``python -m experiments.data.cli ...``).

Examples::

  hspg-data synth --root /tmp/synthetic
  hspg-data check /data/TUT-urban-acoustic-scenes-2018-development
  hspg-data features /tmp/synthetic --workers 2
  hspg-data tfds-build dcase2018 --manual-dir /data/TUT-urban-... --data-dir ~/tensorflow_datasets

Every argument is checked before any work starts; a bad one ends the command
with a one-line message naming the flag (exit status 2). Problems in the data
are listed as ``file:line`` (exit status 1). Ctrl-C stops with one line (exit
status 130); finished work (written clips, cached features) is kept and a rerun
resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from experiments import argchecks

__all__ = ["build_parser", "main"]

PROG = "hspg-data"


# -- argument types (more in experiments.argchecks): argparse adds the flag -----

def _fold(value: str) -> int | None:
  if value.strip().lower() == "none":
    return None
  try:
    n = int(value)
  except ValueError:
    n = 0
  if n < 1:
    raise argparse.ArgumentTypeError(f"expected a fold number (1, 2, ...) or 'none' for "
                                     f"fold-less evaluation sets, got {value!r}")
  return n


def _classes(value: str):
  if value in ("dcase2017", "dcase2018"):
    return value
  names = tuple(c.strip() for c in value.split(",") if c.strip())
  if not names:
    raise argparse.ArgumentTypeError("expected comma-separated class names, or dcase2017 / "
                                     "dcase2018")
  if len(set(names)) != len(names):
    raise argparse.ArgumentTypeError(f"a class is named twice in {value!r}")
  return names


# -- commands --------------------------------------------------------------------


def _feature_config(args):
  from experiments.data import features  # pylint: disable=g-import-not-at-top

  if args.kind == "cp_resnet":
    n_mels = 256 if args.n_mels is None else args.n_mels
    return features.FeatureConfig(n_mels=n_mels, sample_rate=args.sample_rate, dtype=args.dtype)
  n_mels = 128 if args.n_mels is None else args.n_mels
  return features.logmel(n_mels=n_mels, sample_rate=args.sample_rate, dtype=args.dtype)


def _synthetic_config(parser, args):
  from experiments.data import synthetic  # pylint: disable=g-import-not-at-top

  if args.evaluate_locations >= args.locations:
    parser.error(f"argument --evaluate-locations: must be smaller than --locations "
                 f"({args.locations}), got {args.evaluate_locations}")
  if args.clips_per_class < args.locations:
    parser.error(f"argument --clips-per-class: must be at least --locations "
                 f"({args.locations}), got {args.clips_per_class}")
  if args.clip_seconds * args.sample_rate < 1:
    parser.error(f"argument --clip-seconds: {args.clip_seconds} s is shorter than one sample "
                 f"at --sample-rate {args.sample_rate}")
  try:
    return synthetic.SyntheticConfig(
        seed=args.seed, clips_per_class=args.clips_per_class, clip_seconds=args.clip_seconds,
        sample_rate=args.sample_rate, locations_per_class=args.locations,
        evaluate_locations=args.evaluate_locations)
  except ValueError as e:
    parser.error(str(e))


def check_synth(parser, args) -> None:
  """Refuses a --root that holds something else before anything is written."""
  from experiments.data import synthetic  # pylint: disable=g-import-not-at-top

  config = _synthetic_config(parser, args)
  root = Path(args.root).expanduser() if args.root else synthetic.default_root(config)
  args.config, args.root = config, root
  if root.exists() and not root.is_dir():
    parser.error(f"argument --root: {root} exists and is not a directory")
  if root.is_dir() and any(root.iterdir()):
    manifest = root / synthetic.MANIFEST
    if not manifest.is_file() and not list(root.glob(".synthetic-*")):
      parser.error(f"argument --root: {root} is not empty and holds no synthetic set; choose "
                   "an empty or new folder (--overwrite never replaces other files)")
    if manifest.is_file() and not args.overwrite:
      try:
        have = json.loads(manifest.read_text(encoding="utf-8")).get("config")
      except (OSError, ValueError, AttributeError):
        have = None
      if have != config.to_dict():
        parser.error(f"argument --root: {root} holds a synthetic set made with other "
                     "parameters; pass --overwrite to replace it, or choose another --root")
  argchecks.writable_dir(parser, "--root", root)


def cmd_synth(args) -> int:
  from experiments.data import dcase  # pylint: disable=g-import-not-at-top
  from experiments.data import synthetic  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  try:
    root = synthetic.generate(args.root, args.config, workers=args.workers,
                              overwrite=args.overwrite)
  except FileExistsError as e:  # a race with another writer since the checks above
    raise _CommandError(f"argument --root: {str(e).replace('overwrite=True', '--overwrite')}")
  ds = dcase.load(root, check_audio=False)
  print(f"{ds.summary()}\nready in {time.perf_counter() - start:.1f} s")
  return 0


def _load_options(args) -> dict:
  return dict(layout=args.layout, fold=args.fold, classes=args.classes,
              on_error="skip" if args.skip_bad else "raise",
              overlap="warn" if args.allow_overlap else "raise")


def cmd_check(args) -> int:
  from experiments.data import dcase  # pylint: disable=g-import-not-at-top

  ds = dcase.load(args.root, check_audio=not args.no_audio, **_load_options(args))
  print(f"OK: {ds.summary()}")
  if ds.audio:
    a = ds.audio
    print(f"audio: {a.sample_rate} Hz, {a.channels} channel(s), {a.duration:.3f} s per clip")
  print(f"classes: {', '.join(ds.classes)}")
  if ds.report.skipped:
    print(ds.report.summary())
  return 0


def cmd_features(args) -> int:
  from experiments.data import pipeline  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  data = pipeline.prepare(args.root, features=_feature_config(args), cache_dir=args.cache_dir,
                          workers=args.workers, verify=args.verify, **_load_options(args))
  sizes = ", ".join(f"{k} {len(v)}" for k, v in data.sources.items())
  ex = data.extraction
  print(f"features of {data.dataset.root}: {sizes}; shape {data.input_shape} "
        f"(mel, frames, channels)\ncache: {data.cache.dir} ({ex.computed} computed with "
        f"{ex.workers} process(es) in {ex.seconds:.1f} s, {ex.reused} reused)\n"
        f"done in {time.perf_counter() - start:.1f} s")
  if data.dataset.test_list is not None:
    print(f"note: {data.dataset.describe_test_list()}")
  if data.dataset.report.skipped:
    print(data.dataset.report.summary())
  if data.skipped:
    print(f"left out {len(data.skipped)} clip(s) whose features failed:"
          + "".join(f"\n  {f}: {m}" for f, m in data.skipped[:25]))
  return 0


def cmd_tfds_build(args) -> int:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from experiments.data import features  # pylint: disable=g-import-not-at-top
  from experiments.data import tfds_builders  # pylint: disable=g-import-not-at-top

  opts = dict(cache_dir=args.cache_dir, workers=args.workers,
              on_error="skip" if args.skip_bad else "raise")
  if args.dataset == "custom":
    config = (features.CP_RESNET if args.config == "cp_resnet" else features.logmel(128))
    builder = tfds_builders.builder_for_root(args.manual_dir, data_dir=args.data_dir,
                                             features=config, **opts)
  else:
    cls = {"dcase2017": tfds_builders.Dcase2017, "dcase2018": tfds_builders.Dcase2018}
    builder = cls[args.dataset](data_dir=args.data_dir, config=args.config, **opts)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(args.manual_dir)))
  print(f"built {builder.name}/{builder.builder_config.name} at {builder.data_dir}")
  for name, split in builder.info.splits.items():
    print(f"  {name}: {split.num_examples} examples")
  print(f"read it with tfds.builder_from_directory({str(builder.data_dir)!r})"
        ".as_data_source(...)")
  return 0


def _check_features(parser, args) -> None:
  argchecks.writable_dir(parser, "--cache-dir", args.cache_dir)


def _check_tfds(parser, args) -> None:
  argchecks.writable_dir(parser, "--data-dir", args.data_dir)
  argchecks.writable_dir(parser, "--cache-dir", args.cache_dir)


class _CommandError(Exception):
  """A one-line failure of a command (printed without a traceback)."""


# -- parser ------------------------------------------------------------------------


def _add_dataset_args(p):
  p.add_argument("root", type=argchecks.existing_dir,
                 help="data set root (the folder with meta.txt or meta.csv)")
  p.add_argument("--layout", choices=["dcase2017", "dcase2018"],
                 help="force a layout (default: detected from the meta file)")
  p.add_argument("--fold", type=_fold, default=1,
                 help="fold whose evaluation_setup files to read; 'none' for fold-less "
                 "evaluation sets (default: 1)")
  p.add_argument("--classes", type=_classes,
                 help="class list: comma-separated names, or dcase2017 / dcase2018 "
                 "(default: the layout's DCASE list if the labels fit it, else the labels)")
  p.add_argument("--skip-bad", action="store_true",
                 help="leave out bad clips (counted and reported) instead of failing")
  p.add_argument("--allow-overlap", action="store_true",
                 help="accept clips or recording identifiers on both the train and the "
                 "evaluate side (a warning instead of an error)")


def _add_feature_args(p):
  p.add_argument("--kind", choices=["cp_resnet", "logmel"], default="cp_resnet",
                 help="cp_resnet: perceptually weighted mel (256 bands); logmel: plain log-mel")
  p.add_argument("--n-mels", type=argchecks.positive_int,
                 help="mel bands (default: 256 cp_resnet, 128 logmel)")
  p.add_argument("--sample-rate", type=argchecks.positive_int, default=22050,
                 help="resample to (default 22050)")
  p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                 help="storage dtype of cached features")
  p.add_argument("--cache-dir", type=Path, help="feature cache (default: $HSPG_CACHE_DIR or "
                 "~/.cache/hspg-jax/features)")
  p.add_argument("--workers", type=argchecks.positive_int,
                 help="extraction processes (default: all cores, when the work pays for them)")
  p.add_argument("--verify", action="store_true",
                 help="read every cached entry and check its checksum before reusing it")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=PROG,
      description="Acoustic scene data: the synthetic default set, DCASE layout checks, "
      "cached features and TFDS builders.")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("synth", help="generate the synthetic scene set (DCASE2018 layout)",
                     description="Generate (or reuse) the procedurally generated scene set. "
                     "Idempotent: an existing complete set with the same parameters is reused.")
  p.add_argument("--root", help="output folder (default: $HSPG_DATA_DIR or "
                 "~/.cache/hspg-jax/data, /synthetic-<hash>)")
  p.add_argument("--seed", type=argchecks.non_negative_int, default=0,
                 help="master seed (default 0)")
  p.add_argument("--clips-per-class", type=argchecks.positive_int, default=64, help="default 64")
  p.add_argument("--clip-seconds", type=argchecks.positive_float, default=3.0,
                 help="clip length (default 3 s)")
  p.add_argument("--sample-rate", type=argchecks.positive_int, default=48000,
                 help="default 48000 (as DCASE2018)")
  p.add_argument("--locations", type=argchecks.positive_int, default=8,
                 help="locations per class (default 8)")
  p.add_argument("--evaluate-locations", type=argchecks.positive_int, default=2,
                 help="locations per class held out for evaluation (default 2)")
  p.add_argument("--workers", type=argchecks.positive_int, default=None,
                 help="processes (default: all cores)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a synthetic set made with other parameters")
  p.set_defaults(func=cmd_synth, check=check_synth)

  p = sub.add_parser("check", help="validate a data root and report every problem",
                     description="Read meta and fold files, open every audio header and "
                     "report each problem with its file and line. Exit status 1 on problems.")
  _add_dataset_args(p)
  p.add_argument("--no-audio", action="store_true", help="skip opening the audio files")
  p.set_defaults(func=cmd_check)

  p = sub.add_parser("features", help="extract and cache features (parallel, resumable)",
                     description="Compute the features of every clip of a fold's train and "
                     "evaluate splits into the cache (already cached clips are skipped; safe "
                     "to interrupt and rerun) and the training-split normalisation statistics.")
  _add_dataset_args(p)
  _add_feature_args(p)
  p.set_defaults(func=cmd_features, check=_check_features)

  p = sub.add_parser("tfds-build", help="build a TFDS data set (array_record) from files",
                     description="Build the dcase2017 / dcase2018 TFDS data set from a "
                     "manually downloaded copy, or 'custom' for any root in a DCASE layout. "
                     "A failed build leaves nothing behind.")
  p.add_argument("dataset", choices=["dcase2017", "dcase2018", "custom"])
  p.add_argument("--manual-dir", required=True, type=argchecks.existing_dir,
                 help="extracted data set (or its parent)")
  p.add_argument("--data-dir", type=Path, help="TFDS data dir (default: $TFDS_DATA_DIR or "
                 "~/tensorflow_datasets)")
  p.add_argument("--config", choices=["cp_resnet", "logmel128"], default="cp_resnet",
                 help="feature configuration (default cp_resnet)")
  p.add_argument("--cache-dir", type=Path, help="feature cache used while building")
  p.add_argument("--workers", type=argchecks.positive_int,
                 help="extraction processes (default: all cores)")
  p.add_argument("--skip-bad", action="store_true",
                 help="leave out bad clips (counted and reported) instead of failing")
  p.set_defaults(func=cmd_tfds_build, check=_check_tfds)
  return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
  del category, filename, lineno, line  # the location is the library's, not the user's
  print(f"{PROG}: warning: {message}", file=file or sys.stderr)


def main(argv=None) -> int:
  """Runs a command; returns the exit status (argument errors exit with 2)."""
  from experiments.data import cache  # pylint: disable=g-import-not-at-top
  from experiments.data import dcase  # pylint: disable=g-import-not-at-top
  from experiments.data import workers  # pylint: disable=g-import-not-at-top

  try:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "check", None):
      args.check(_subparser(parser, args.command), args)
    with warnings.catch_warnings():
      warnings.showwarning = _show_warning
      if args.command in ("check", "features"):
        # These commands print the skip report themselves, once.
        warnings.simplefilter("ignore", dcase.SkippedDataWarning)
      return args.func(args)
  except dcase.DataError as e:
    _close_progress_bars()
    print(f"{PROG}: FAILED: {e.message(cli=True)}", file=sys.stderr)
    return 1
  except (_CommandError, cache.ExtractionError, cache.CorruptEntryError, workers.WorkerError,
          OSError) as e:
    _close_progress_bars()
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    _close_progress_bars()
    print(f"{PROG}: interrupted; finished work (written clips, cached features) is kept, "
          "rerun to resume", file=sys.stderr)
    return 130


def _close_progress_bars() -> None:
  """Ends bars an interrupted loop left open, so the message gets a line of its own."""
  tqdm = sys.modules.get("tqdm.std")
  for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
    bar.close()


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
  """The subcommand's parser, so that its errors show its own usage line."""
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      return action.choices[command]
  return parser


if __name__ == "__main__":
  sys.exit(main())
