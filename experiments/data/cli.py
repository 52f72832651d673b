"""Command line for the ASC data sets.

``python -m experiments.data.cli {synth,check,features,tfds-build} --help``

Examples::

  python -m experiments.data.cli synth --root /tmp/synthetic
  python -m experiments.data.cli check /data/TUT-urban-acoustic-scenes-2018-development
  python -m experiments.data.cli features /tmp/synthetic --workers 2
  python -m experiments.data.cli tfds-build dcase2018 --manual-dir /data/TUT-urban-... \\
      --data-dir ~/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _fold(value: str) -> int | None:
  return None if value.lower() in ("none", "no", "0") else int(value)


def _classes(value: str | None):
  if value is None or value in ("dcase2017", "dcase2018"):
    return value
  return tuple(c.strip() for c in value.split(",") if c.strip())


def _feature_config(args):
  from experiments.data import features  # pylint: disable=g-import-not-at-top

  if args.kind == "cp_resnet":
    return features.FeatureConfig(n_mels=args.n_mels or 256, sample_rate=args.sample_rate,
                                  dtype=args.dtype)
  return features.logmel(n_mels=args.n_mels or 128, sample_rate=args.sample_rate,
                         dtype=args.dtype)


def _add_dataset_args(p):
  p.add_argument("root", help="data set root (the folder with meta.txt or meta.csv)")
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


def _add_feature_args(p):
  p.add_argument("--kind", choices=["cp_resnet", "logmel"], default="cp_resnet",
                 help="cp_resnet: perceptually weighted mel (256 bands); logmel: plain log-mel")
  p.add_argument("--n-mels", type=int, help="mel bands (default: 256 cp_resnet, 128 logmel)")
  p.add_argument("--sample-rate", type=int, default=22050, help="resample to (default 22050)")
  p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                 help="storage dtype of cached features")
  p.add_argument("--cache-dir", help="feature cache (default: $HSPG_CACHE_DIR or "
                 "~/.cache/hspg-jax/features)")
  p.add_argument("--workers", type=int, help="extraction processes (default: all cores)")


def cmd_synth(args) -> int:
  from experiments.data import dcase  # pylint: disable=g-import-not-at-top
  from experiments.data import synthetic  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  root = synthetic.make_default(
      args.root, seed=args.seed, clips_per_class=args.clips_per_class,
      clip_seconds=args.clip_seconds, sample_rate=args.sample_rate,
      locations_per_class=args.locations, evaluate_locations=args.evaluate_locations,
      workers=args.workers, overwrite=args.overwrite)
  ds = dcase.load(root, check_audio=False)
  print(f"{ds.summary()}\nready in {time.perf_counter() - start:.1f} s")
  return 0


def cmd_check(args) -> int:
  from experiments.data import dcase  # pylint: disable=g-import-not-at-top

  try:
    ds = dcase.load(args.root, layout=args.layout, fold=args.fold, classes=args.classes,
                    on_error="skip" if args.skip_bad else "raise",
                    check_audio=not args.no_audio)
  except dcase.DataError as e:
    print(f"FAILED: {e}", file=sys.stderr)
    return 1
  print(f"OK: {ds.summary()}")
  if ds.audio:
    a = ds.audio
    print(f"audio: {a.sample_rate} Hz, {a.channels} channel(s), {a.duration:.3f} s per clip")
  print(f"classes: {', '.join(ds.classes)}")
  if ds.report.skipped:
    print(ds.report.summary())
  return 0


def cmd_features(args) -> int:
  from experiments.data import dcase  # pylint: disable=g-import-not-at-top
  from experiments.data import pipeline  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  try:
    data = pipeline.prepare(args.root, features=_feature_config(args), cache_dir=args.cache_dir,
                            fold=args.fold, layout=args.layout, classes=args.classes,
                            on_error="skip" if args.skip_bad else "raise",
                            workers=args.workers)
  except dcase.DataError as e:
    print(f"FAILED: {e}", file=sys.stderr)
    return 1
  sizes = ", ".join(f"{k} {len(v)}" for k, v in data.sources.items())
  ex = data.extraction
  print(f"features of {data.dataset.root}: {sizes}; shape {data.input_shape} "
        f"(mel, frames, channels)\ncache: {data.cache.dir} ({ex.computed} computed with "
        f"{ex.workers} process(es) in {ex.seconds:.1f} s, {ex.reused} reused)\n"
        f"done in {time.perf_counter() - start:.1f} s")
  if data.skipped:
    print(f"left out {len(data.skipped)} clip(s) whose features failed")
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
      download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  print(f"built {builder.name}/{builder.builder_config.name} at {builder.data_dir}")
  for name, split in builder.info.splits.items():
    print(f"  {name}: {split.num_examples} examples")
  print(f"read it with tfds.builder_from_directory({str(builder.data_dir)!r})"
        ".as_data_source(...)")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="hspg-data",
      description="Acoustic scene data: the synthetic default set, DCASE layout checks, "
      "cached features and TFDS builders.")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("synth", help="generate the synthetic scene set (DCASE2018 layout)",
                     description="Generate (or reuse) the procedurally generated scene set. "
                     "Idempotent: an existing complete set with the same parameters is reused.")
  p.add_argument("--root", help="output folder (default: $HSPG_DATA_DIR or "
                 "~/.cache/hspg-jax/data, /synthetic-<hash>)")
  p.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
  p.add_argument("--clips-per-class", type=int, default=64, help="default 64")
  p.add_argument("--clip-seconds", type=float, default=3.0, help="clip length (default 3 s)")
  p.add_argument("--sample-rate", type=int, default=48000, help="default 48000 (as DCASE2018)")
  p.add_argument("--locations", type=int, default=8, help="locations per class (default 8)")
  p.add_argument("--evaluate-locations", type=int, default=2,
                 help="locations per class held out for evaluation (default 2)")
  p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a synthetic set made with other parameters")
  p.set_defaults(func=cmd_synth)

  p = sub.add_parser("check", help="validate a data root and report every problem",
                     description="Read meta and fold files, open every audio header and "
                     "report each problem with its file and line. Exit status 1 on problems.")
  _add_dataset_args(p)
  p.add_argument("--no-audio", action="store_true", help="skip opening the audio files")
  p.set_defaults(func=cmd_check)

  p = sub.add_parser("features", help="extract and cache features (parallel, resumable)",
                     description="Compute the features of every clip of a fold into the "
                     "cache (already cached clips are skipped; safe to interrupt and rerun) "
                     "and the training-split normalisation statistics.")
  _add_dataset_args(p)
  _add_feature_args(p)
  p.set_defaults(func=cmd_features)

  p = sub.add_parser("tfds-build", help="build a TFDS data set (array_record) from files",
                     description="Build the dcase2017 / dcase2018 TFDS data set from a "
                     "manually downloaded copy, or 'custom' for any root in a DCASE layout.")
  p.add_argument("dataset", choices=["dcase2017", "dcase2018", "custom"])
  p.add_argument("--manual-dir", required=True, help="extracted data set (or its parent)")
  p.add_argument("--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR or "
                 "~/tensorflow_datasets)")
  p.add_argument("--config", choices=["cp_resnet", "logmel128"], default="cp_resnet",
                 help="feature configuration (default cp_resnet)")
  p.add_argument("--cache-dir", help="feature cache used while building")
  p.add_argument("--workers", type=int, help="extraction processes (default: all cores)")
  p.add_argument("--skip-bad", action="store_true",
                 help="leave out bad clips (counted and reported) instead of failing")
  p.set_defaults(func=cmd_tfds_build)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
