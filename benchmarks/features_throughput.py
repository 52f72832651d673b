"""Feature extraction throughput and the value of the feature cache, side by side.

Measured in one run on freshly generated clips (DCASE2018-like by default: 10 s,
48 kHz, 16-bit stereo, CP-ResNet features):

1. extraction throughput (clips/s) in one process vs a process pool over all
   available cores, each into an empty cache directory;
2. one training epoch through the same grain pipeline (shuffle, normalise,
   batch) computing features on the fly ("uncached") vs reading them from the
   cache ("cached").

Each side is timed in alternating rounds (medians printed). The parallel time
includes starting the process pool in every round (one helper process imports
librosa and forks the workers; see ``experiments.data.workers``), so it is what a
user gets, not a steady-state best case. The load average is printed too: a shared machine slows
everything.

    python -m benchmarks.features_throughput --help
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


class OnTheFlySource:
  """Computes features in ``__getitem__``: what an epoch costs without a cache."""

  def __init__(self, files, labels, config):
    self.files, self.labels, self.config = [str(f) for f in files], labels, config

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    from experiments.data import features  # pylint: disable=g-import-not-at-top

    return {"features": features.extract(self.files[i], self.config),
            "label": np.int32(self.labels[i])}


def _write_clips(out: Path, n: int, seconds: float, sample_rate: int) -> list[Path]:
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  from experiments.data import synthetic  # pylint: disable=g-import-not-at-top

  config = synthetic.SyntheticConfig(clip_seconds=seconds, sample_rate=sample_rate)
  out.mkdir(parents=True, exist_ok=True)
  files = []
  for i in range(n):
    cls = synthetic.CLASSES[i % len(synthetic.CLASSES)]
    path = out / f"clip{i:04d}.wav"
    sf.write(str(path), synthetic.render_clip(config, cls, 0, i), sample_rate, subtype="PCM_16")
    files.append(path)
  return files


def _epoch(source, batch_size, stats, threads) -> tuple[float, int]:
  from experiments.data import pipeline  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  seen = 0
  for batch in pipeline.batches(source, batch_size, stats=stats, seed=0, num_threads=threads,
                                drop_remainder=False):
    seen += batch["label"].shape[0]
  return time.perf_counter() - start, seen


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.features_throughput", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--clips", type=int, default=48, help="clips to generate (default 48)")
  parser.add_argument("--rounds", type=int, default=3,
                      help="alternating timing rounds; medians are reported (default 3)")
  parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
  parser.add_argument("--sample-rate", type=int, default=48000, help="default 48000")
  parser.add_argument("--kind", choices=["cp_resnet", "logmel"], default="cp_resnet",
                      help="feature kind (default cp_resnet: 256 mel, stereo)")
  parser.add_argument("--workers", type=int, default=None,
                      help="processes for the parallel run (default: all available cores)")
  parser.add_argument("--batch-size", type=int, default=8, help="epoch batch size (default 8)")
  parser.add_argument("--threads", type=int, default=4,
                      help="grain reader threads in the epoch runs (default 4)")
  parser.add_argument("--workdir", help="where to put clips and caches (default: a temp dir, "
                      "removed afterwards)")
  args = parser.parse_args(argv)

  from experiments.data import cache as cache_lib  # pylint: disable=g-import-not-at-top
  from experiments.data import features  # pylint: disable=g-import-not-at-top

  config = features.CP_RESNET if args.kind == "cp_resnet" else features.logmel()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  workers = args.workers or cores
  work = Path(args.workdir or tempfile.mkdtemp(prefix="features_bench_"))
  work.mkdir(parents=True, exist_ok=True)
  try:
    t0 = time.perf_counter()
    files = _write_clips(work / "audio", args.clips, args.seconds, args.sample_rate)
    print(f"{args.clips} clips of {args.seconds:g} s at {args.sample_rate} Hz stereo, "
          f"{args.kind} features, {cores} core(s), load average "
          f"{os.getloadavg()[0]:.2f} (generated in {time.perf_counter() - t0:.1f} s)")
    features.extract(files[0], config)  # warm up librosa in this process, as the pool does

    # Alternating rounds (order flipped each round) so that load from other
    # processes on a shared machine hits both sides alike; medians are printed.
    modes = {"single process": 1, f"parallel ({workers} workers)": workers}
    times = {name: [] for name in modes}
    for r in range(args.rounds):
      for name in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
        cache_dir = work / f"cache-{modes[name]}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        res = cache_lib.FeatureCache(config, cache_dir).extract(files, workers=modes[name],
                                                                progress=False)
        assert res.computed == len(files), res
        times[name].append(res.seconds)
    for name, ts in times.items():
      t = statistics.median(ts)
      print(f"  extraction, {name:<24s} {t:7.2f} s  {len(files) / t:7.2f} clips/s")
    single, parallel = (statistics.median(ts) for ts in times.values())
    print(f"  parallel / single-process throughput: {single / parallel:.2f}x")

    cache = cache_lib.FeatureCache(config, work / "cache-1")
    entries = [cache.entry(f) for f in files]
    labels = np.arange(len(files)) % 6
    stats = features.norm_stats(np.load(e) for e in entries)
    from experiments.data import pipeline  # pylint: disable=g-import-not-at-top

    sources = {"features on the fly": OnTheFlySource(files, labels, config),
               "features from the cache": pipeline.CachedFeatureSource(entries, labels)}
    epoch = {name: [] for name in sources}
    for r in range(args.rounds):
      for name in (list(sources) if r % 2 == 0 else list(sources)[::-1]):
        t, seen = _epoch(sources[name], args.batch_size, stats, args.threads)
        assert seen == len(files)
        epoch[name].append(t)
    for name, ts in epoch.items():
      t = statistics.median(ts)
      print(f"  epoch, {name:<24s} {t:7.2f} s  {len(files) / t:7.2f} clips/s")
    uncached, cached = (statistics.median(ts) for ts in epoch.values())
    print(f"  cached / uncached epoch speed-up: {uncached / cached:.1f}x")
  finally:
    if not args.workdir:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
