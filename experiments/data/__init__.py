"""Acoustic scene data: DCASE layouts, librosa features, a feature cache, TFDS builders.

Modules (import what you need; only ``tfds_builders`` needs tensorflow-datasets):

* ``dcase``: read and validate data sets in the DCASE2017 / DCASE2018 layouts.
* ``features``: CP-ResNet perceptually weighted mel features, plain log-mel,
  per-mel-bin normalisation statistics.
* ``cache``: resumable, parallel on-disk feature cache (entries checksummed).
* ``workers``: worker pools that need no ``__main__`` guard and die with their parent.
* ``synthetic``: the procedurally generated default scene set.
* ``debian_scenes``: builds the real-recording development set from Debian
  packages (a tool run by hand: ``python -m experiments.data.debian_scenes``).
* ``pipeline``: ``prepare()`` + grain ``batches()`` -> numpy batches for JAX.
* ``tfds_builders``: ``dcase2017`` / ``dcase2018`` TFDS builders (array_record).
* ``testing``: tiny data sets in the real layouts, for tests.
* ``cli``: ``python -m experiments.data.cli {synth,check,features,tfds-build}``.

Quick start::

  from experiments.data import pipeline
  data = pipeline.prepare()          # synthetic default set, CP-ResNet features
  for batch in pipeline.batches(data.sources["train"], 32, stats=data.stats):
    ...                              # batch["features"]: (32, 256, frames, 2)
"""
