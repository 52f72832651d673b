"""Features (CP-ResNet recipe, plain log-mel, normalisation) and the feature cache."""

import os
import subprocess
import sys

import numpy as np
import pytest

librosa = pytest.importorskip("librosa")

from experiments.data import cache as cache_lib  # noqa: E402
from experiments.data import features as F  # noqa: E402
from experiments.data import testing  # noqa: E402

SMALL = F.logmel(n_mels=32, n_fft=512, hop_length=256)


@pytest.fixture(scope="module")
def ten_second_clips(tmp_path_factory):
  d = tmp_path_factory.mktemp("ten")
  return (testing.write_wav(d / "dcase2018.wav", 10.0, 48000, seed=1),
          testing.write_wav(d / "dcase2017.wav", 10.0, 44100, seed=2, subtype="PCM_24"))


@pytest.fixture
def clips(tmp_path):
  return [testing.write_wav(tmp_path / "audio" / f"c{i}.wav", 0.5, 48000, seed=i)
          for i in range(6)]


# -- features -----------------------------------------------------------------


def test_cp_resnet_shape_for_ten_second_dcase_clips(ten_second_clips):
  for path in ten_second_clips:
    x = F.extract(path)
    assert x.shape == (256, 431, 2) and x.dtype == np.float32
    assert np.isfinite(x).all()


def test_cp_resnet_matches_reference_recipe(ten_second_clips):
  path = ten_second_clips[0]
  x = F.extract(path)
  # The recipe spelled out with plain librosa calls (as in the CP-ResNet code).
  y, sr = librosa.load(path, sr=22050, mono=False)
  mel = librosa.filters.mel(sr=sr, n_fft=2048, n_mels=256, fmax=sr / 2)
  freqs = librosa.fft_frequencies(sr=sr, n_fft=2048)
  for c in range(2):
    power = np.abs(librosa.stft(y[c], n_fft=2048, hop_length=512, window="hann", center=True,
                                pad_mode="reflect")) ** 2
    ref = mel @ librosa.perceptual_weighting(power, freqs, ref=1.0, amin=1e-10, top_db=80.0)
    np.testing.assert_allclose(x[..., c], ref, rtol=1e-4, atol=1e-4)


def test_logmel_is_configurable(clips):
  x = F.extract(clips[0], F.logmel(n_mels=40, hop_length=256, n_fft=1024, fmax=8000))
  frames = 1 + int(0.5 * 22050) // 256
  assert x.shape == (40, frames, 2)
  # power_to_db with top_db=80: the dynamic range per channel is at most 80 dB.
  assert (x.max(axis=(0, 1)) - x.min(axis=(0, 1)) <= 80.0 + 1e-3).all()
  mono = F.extract(clips[0], F.logmel(n_mels=40, mono=True))
  assert mono.shape[-1] == 1
  half = F.extract(clips[0], F.logmel(n_mels=40, dtype="float16"))
  assert half.dtype == np.float16


def test_config_validation_and_fingerprint():
  with pytest.raises(ValueError, match="kind"):
    F.FeatureConfig(kind="mfcc")
  with pytest.raises(ValueError, match="n_mels"):
    F.FeatureConfig(n_mels=0)
  assert F.CP_RESNET.fingerprint() == F.FeatureConfig().fingerprint()
  assert F.CP_RESNET.fingerprint() != F.FeatureConfig(top_db=None).fingerprint()
  assert F.CP_RESNET.num_frames(220500) == 431


def test_norm_stats_per_mel_bin():
  rng = np.random.default_rng(0)
  xs = [rng.normal(loc=np.arange(8)[:, None, None], scale=2.0, size=(8, 20 + i, 2))
        for i in range(5)]
  stats = F.norm_stats(xs)
  flat = np.concatenate([x.reshape(8, -1) for x in xs], axis=1)
  np.testing.assert_allclose(stats.mean.ravel(), flat.mean(1), rtol=1e-5)
  np.testing.assert_allclose(stats.std.ravel(), flat.std(1), rtol=1e-4)
  z = np.concatenate([stats.apply(x).reshape(8, -1) for x in xs], axis=1)
  np.testing.assert_allclose(z.mean(1), 0, atol=1e-5)
  np.testing.assert_allclose(z.std(1), 1, atol=1e-4)
  assert stats.apply(np.zeros((3, 8, 4, 2))).shape == (3, 8, 4, 2)  # batched
  with pytest.raises(ValueError, match="training split empty"):
    F.norm_stats([])


def test_norm_stats_roundtrip(tmp_path):
  stats = F.norm_stats([np.ones((4, 3, 2))])
  stats.save(tmp_path / "s.npz")
  back = F.NormStats.load(tmp_path / "s.npz")
  np.testing.assert_array_equal(back.mean, stats.mean)
  assert back.count == 1


# -- cache ----------------------------------------------------------------------


def test_cache_computes_once(clips, tmp_path):
  cache = cache_lib.FeatureCache(SMALL, tmp_path / "cache")
  first = cache.extract(clips, workers=1, progress=False)
  assert (first.computed, first.reused, first.failed) == (6, 0, [])
  again = cache.extract(clips, workers=1, progress=False)
  assert (again.computed, again.reused) == (0, 6)
  np.testing.assert_allclose(cache.load(clips[2]), F.extract(clips[2], SMALL), rtol=1e-5, atol=1e-5)
  assert (cache.dir / "config.json").is_file()


def test_parallel_equals_serial(clips, tmp_path):
  serial = cache_lib.FeatureCache(SMALL, tmp_path / "serial")
  parallel = cache_lib.FeatureCache(SMALL, tmp_path / "parallel")
  serial.extract(clips, workers=1, progress=False)
  res = parallel.extract(clips, workers=2, progress=False)
  assert res.computed == 6
  for c in clips:
    np.testing.assert_array_equal(serial.load(c), parallel.load(c))


def test_interrupted_extraction_resumes(clips, tmp_path, monkeypatch):
  cache = cache_lib.FeatureCache(SMALL, tmp_path / "cache")
  real_extract = F.extract
  calls = []

  def flaky(path, config):
    if len(calls) == 3:
      raise KeyboardInterrupt  # Ctrl-C in the middle of the fourth clip
    calls.append(path)
    return real_extract(path, config)

  monkeypatch.setattr(F, "extract", flaky)
  with pytest.raises(KeyboardInterrupt):
    cache.extract(clips, workers=1, progress=False)
  monkeypatch.setattr(F, "extract", real_extract)
  done = [c for c in clips if cache.has(c)]
  assert len(done) == 3
  assert not list(cache.dir.glob("*.tmp-*"))  # nothing half-written left behind
  mtimes = {c: cache.entry(c).stat().st_mtime_ns for c in done}
  res = cache.extract(clips, workers=1, progress=False)
  assert (res.computed, res.reused) == (3, 3)
  assert all(cache.entry(c).stat().st_mtime_ns == m for c, m in mtimes.items())


def test_crash_leftovers_are_cleaned_and_recomputed(clips, tmp_path):
  cache = cache_lib.FeatureCache(SMALL, tmp_path / "cache")
  cache.extract(clips, workers=1, progress=False)
  # A writer that died mid-write (its pid no longer exists) ...
  proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  dead = int(proc.stdout)
  stray = cache.dir / f"{cache.entry(clips[0]).name}.tmp-{dead}-deadbeef"
  stray.write_bytes(b"partial")
  # ... and an entry damaged from outside (a truncated copy).
  damaged = cache.entry(clips[1])
  damaged.write_bytes(damaged.read_bytes()[:200])
  res = cache.extract(clips, workers=1, progress=False)
  assert not stray.exists()
  assert (res.computed, res.reused) == (1, 5)
  np.testing.assert_allclose(cache.load(clips[1]), F.extract(clips[1], SMALL), rtol=1e-5, atol=1e-5)


def test_changed_parameters_never_reuse_features(clips, tmp_path):
  a = cache_lib.FeatureCache(SMALL, tmp_path / "cache")
  a.extract(clips, workers=1, progress=False)
  b = cache_lib.FeatureCache(F.logmel(n_mels=24, n_fft=512, hop_length=256), tmp_path / "cache")
  assert b.dir != a.dir
  res = b.extract(clips, workers=1, progress=False)
  assert (res.computed, res.reused) == (6, 0)
  assert b.load(clips[0]).shape[0] == 24


def test_changed_source_file_invalidates_its_entry(clips, tmp_path):
  cache = cache_lib.FeatureCache(SMALL, tmp_path / "cache")
  cache.extract(clips, workers=1, progress=False)
  old = cache.load(clips[0])
  testing.write_wav(clips[0], 0.5, 48000, seed=99)  # new content, size may even match
  st = os.stat(clips[0])
  os.utime(clips[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
  res = cache.extract(clips, workers=1, progress=False)
  assert (res.computed, res.reused) == (1, 5)
  assert not np.array_equal(cache.load(clips[0]), old)


def test_content_keys_survive_moving_the_data(clips, tmp_path):
  cache = cache_lib.FeatureCache(SMALL, tmp_path / "cache", key="content")
  cache.extract(clips, workers=1, progress=False)
  moved = tmp_path / "moved.wav"
  moved.write_bytes(clips[0].read_bytes())
  assert cache.has(moved)
  assert not cache_lib.FeatureCache(SMALL, tmp_path / "cache").has(moved)


@pytest.mark.parametrize("workers", [1, 2])
def test_failures_name_the_file_and_keep_the_rest(clips, tmp_path, workers):
  clips[3].write_bytes(b"not audio")
  cache = cache_lib.FeatureCache(SMALL, tmp_path / "cache")
  with pytest.raises(RuntimeError, match=r"(?s)failed for 1 file.*c3\.wav"):
    cache.extract(clips, workers=workers, progress=False)
  assert sum(cache.has(c) for c in clips) == 5
  res = cache.extract(clips, workers=workers, progress=False, on_error="skip")
  assert res.entries[3] is None and res.failed[0][0].endswith("c3.wav")
  assert (res.computed, res.reused) == (0, 5)


# -- integrity: damaged entries and statistics are never served -------------------


def test_same_size_garbage_entry_is_never_served(clips, tmp_path):
  cache = cache_lib.FeatureCache(SMALL, tmp_path / "cache")
  cache.extract(clips, workers=1, progress=False)
  good = cache.load(clips[0])
  entry = cache.entry(clips[0])
  raw = bytearray(entry.read_bytes())
  header = raw.index(b"\n") + 1  # the .npy header ends with a newline
  nan = np.full(good.size, np.nan, np.float32).tobytes()
  raw[header:header + len(nan)] = nan  # same size, intact header, NaN data
  entry.write_bytes(bytes(raw))
  assert np.isnan(np.load(entry)).all()  # what a plain reader would have served
  with pytest.raises(cache_lib.CorruptEntryError, match="checksum mismatch"):
    cache.load(clips[0])
  # A cheap check (header + size) cannot see it; verify=True reads and recomputes.
  assert cache.extract(clips, workers=1, progress=False).reused == 6
  res = cache.extract(clips, workers=1, progress=False, verify=True)
  assert (res.computed, res.reused) == (1, 5)
  np.testing.assert_array_equal(cache.load(clips[0]), good)


def test_entries_stay_plain_npy_files(clips, tmp_path):
  cache = cache_lib.FeatureCache(SMALL, tmp_path / "cache")
  cache.extract(clips[:1], workers=1, progress=False)
  np.testing.assert_array_equal(np.load(cache.entry(clips[0])), cache.load(clips[0]))
  entry = cache.entry(clips[0])
  entry.write_bytes(entry.read_bytes()[:-12])  # an entry without its checksum trailer
  with pytest.raises(cache_lib.CorruptEntryError, match="no checksum trailer"):
    cache.load(clips[0])


@pytest.mark.parametrize("damage", [b"x" * 300, b""])
def test_damaged_statistics_file_names_itself(tmp_path, damage):
  path = tmp_path / "s.npz"
  F.norm_stats([np.ones((4, 3, 2))]).save(path)
  size = path.stat().st_size
  path.write_bytes((damage * (size // max(len(damage), 1) + 1))[:size] if damage else b"")
  with pytest.raises(ValueError, match=r"s\.npz: not an intact statistics file"):
    F.NormStats.load(path)
