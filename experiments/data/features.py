"""Spectrogram features for acoustic scene classification (librosa).

Two kinds, both laid out ``(mel, frames, channels)`` so that a batch is
``(batch, mel, frames, channels)`` (NHWC with H = mel bins, W = frames):

* ``"cp_resnet"`` (the default): the recipe of CP-ResNet (Koutini et al.).
  Load keeping every channel, resample to 22,050 Hz, STFT (n_fft 2048, hop 512,
  Hann, centred, reflect padding), power spectrum, A-weighted dB per channel
  (``librosa.perceptual_weighting`` with ``ref=1, amin=1e-10, top_db=80``), then
  the mel filter bank (256 bands up to Nyquist) applied to the weighted dB
  spectrum. Mapping the dB spectrum (not the power spectrum) onto the mel bank
  is what the reference code does; we keep it so results stay comparable.
  A 10 s clip gives ``(256, 431, 2)``.
* ``"logmel"``: a plain log-mel spectrogram, ``power_to_db(mel(|STFT|^2))``,
  every parameter configurable.

Per-mel-bin mean/std normalisation statistics come from the training split only
(:func:`norm_stats`); see :class:`NormStats`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "CP_RESNET",
    "FEATURE_VERSION",
    "FeatureConfig",
    "NormStats",
    "extract",
    "features_from_waveform",
    "load_audio",
    "logmel",
    "norm_stats",
]

# Bump when the computation changes in a way the config fields do not show, so
# cached features from older code are never reused (it is part of the cache key).
FEATURE_VERSION = 1

_KINDS = ("cp_resnet", "logmel")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """What features to compute. Every field is part of the cache key.

  Attributes:
    kind: ``"cp_resnet"`` (perceptually weighted dB spectrum on a mel bank) or
      ``"logmel"`` (log of the mel power spectrogram).
    sample_rate: Rate the audio is resampled to before the STFT.
    n_fft: FFT length (also the window length).
    hop_length: Samples between frames.
    n_mels: Number of mel bands.
    fmin: Lowest mel frequency in Hz.
    fmax: Highest mel frequency in Hz; None means Nyquist.
    top_db: Dynamic range clip in dB (per channel); None disables it.
    mono: Mix down to one channel (the layout keeps a channel axis of size 1).
    center: Centre the frames (pad by n_fft // 2 on both sides).
    pad_mode: Padding for centred frames (CP-ResNet uses ``"reflect"``).
    res_type: librosa resampler (``"soxr_hq"`` is librosa's default).
    dtype: Storage dtype of the features (``"float32"`` or ``"float16"``).
  """

  kind: str = "cp_resnet"
  sample_rate: int = 22050
  n_fft: int = 2048
  hop_length: int = 512
  n_mels: int = 256
  fmin: float = 0.0
  fmax: float | None = None
  top_db: float | None = 80.0
  mono: bool = False
  center: bool = True
  pad_mode: str = "reflect"
  res_type: str = "soxr_hq"
  dtype: str = "float32"

  def __post_init__(self):
    if self.kind not in _KINDS:
      raise ValueError(f"FeatureConfig.kind must be one of {_KINDS}, got {self.kind!r}")
    if self.dtype not in ("float32", "float16"):
      raise ValueError(f"FeatureConfig.dtype must be float32 or float16, got {self.dtype!r}")
    for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"FeatureConfig.{name} must be positive, got {getattr(self, name)}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
    return cls(**d)

  def fingerprint(self) -> str:
    """A hex digest of every field, the code version and librosa's version.

    librosa's version is included because its filters and resamplers have
    changed between releases; an upgrade then recomputes rather than mixing
    features from two implementations.
    """
    import librosa  # pylint: disable=g-import-not-at-top

    payload = {"config": self.to_dict(), "version": FEATURE_VERSION,
               "librosa": librosa.__version__}
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()

  def num_frames(self, num_samples_at_rate: int) -> int:
    """Frames produced for a signal of this many samples at ``sample_rate``."""
    if self.center:
      return 1 + num_samples_at_rate // self.hop_length
    return 1 + (num_samples_at_rate - self.n_fft) // self.hop_length


CP_RESNET = FeatureConfig()


def logmel(n_mels: int = 128, **kwargs) -> FeatureConfig:
  """A plain log-mel config; ``kwargs`` override any other field."""
  kwargs.setdefault("pad_mode", "constant")
  return FeatureConfig(kind="logmel", n_mels=n_mels, **kwargs)


def load_audio(path, config: FeatureConfig = CP_RESNET) -> np.ndarray:
  """Reads ``path`` as float32 ``(channels, samples)`` at ``config.sample_rate``."""
  import librosa  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  y, sr = sf.read(str(path), dtype="float32", always_2d=True)
  y = np.ascontiguousarray(y.T)  # (channels, samples)
  if config.mono:
    y = y.mean(axis=0, keepdims=True)
  if sr != config.sample_rate:
    y = librosa.resample(y, orig_sr=sr, target_sr=config.sample_rate,
                         res_type=config.res_type, axis=-1)
  return y.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=8)
def _filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None):
  """Mel filter bank and FFT bin frequencies (built once per process and config)."""
  import librosa  # pylint: disable=g-import-not-at-top

  fmax = fmax if fmax is not None else sr / 2
  mel_basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
  freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
  mel_basis.setflags(write=False)  # shared between calls
  freqs.setflags(write=False)
  return mel_basis, freqs


def features_from_waveform(y: np.ndarray, config: FeatureConfig = CP_RESNET) -> np.ndarray:
  """Features of ``y`` (``(channels, samples)`` at ``config.sample_rate``).

  Returns:
    ``(n_mels, frames, channels)`` array of ``config.dtype``.
  """
  import librosa  # pylint: disable=g-import-not-at-top

  y = np.asarray(y, np.float32)
  if y.ndim == 1:
    y = y[None]
  mel_basis, freqs = _filters(config.sample_rate, config.n_fft, config.n_mels, config.fmin,
                              config.fmax)
  out = []
  # One channel at a time: top_db clips relative to each channel's own peak, as
  # in the reference code (librosa's multichannel call would use a joint peak).
  for channel in y:
    spec = librosa.stft(channel, n_fft=config.n_fft, hop_length=config.hop_length,
                        window="hann", center=config.center, pad_mode=config.pad_mode)
    power = np.abs(spec) ** 2
    if config.kind == "cp_resnet":
      weighted = librosa.perceptual_weighting(power, freqs, ref=1.0, amin=1e-10,
                                              top_db=config.top_db)
      out.append(mel_basis @ weighted)
    else:
      out.append(librosa.power_to_db(mel_basis @ power, ref=1.0, amin=1e-10,
                                     top_db=config.top_db))
  return np.stack(out, axis=-1).astype(config.dtype)


def extract(path, config: FeatureConfig = CP_RESNET) -> np.ndarray:
  """Features of the audio file at ``path``: ``(n_mels, frames, channels)``."""
  return features_from_waveform(load_audio(path, config), config)


@dataclasses.dataclass(frozen=True)
class NormStats:
  """Per-mel-bin mean and standard deviation (over clips, frames and channels).

  Attributes:
    mean: ``(n_mels, 1, 1)`` float32, broadcastable over ``(mel, frames, channels)``
      and over a leading batch axis.
    std: Same shape; floored at ``1e-5`` so silent bins do not blow up.
    count: Number of clips the statistics were computed from.
  """

  mean: np.ndarray
  std: np.ndarray
  count: int

  def apply(self, x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` in float32."""
    return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)

  def save(self, path) -> None:
    np.savez(path, mean=self.mean, std=self.std, count=self.count)

  @classmethod
  def load(cls, path) -> NormStats:
    """Reads statistics written by :meth:`save`.

    Raises:
      ValueError: naming ``path`` when the file is not intact statistics
        (unreadable, damaged, wrong shapes, non-finite or non-positive values).
    """
    import zipfile  # pylint: disable=g-import-not-at-top

    try:
      with np.load(path, allow_pickle=False) as z:
        mean, std, count = z["mean"], z["std"], int(z["count"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AttributeError,
            TypeError) as e:
      # np.load's own message for a damaged file ("pickled data") misleads.
      raise ValueError(f"{path}: not an intact statistics file ({type(e).__name__}: {e})") from e
    if (mean.ndim != 3 or mean.shape[1:] != (1, 1) or std.shape != mean.shape
        or mean.dtype != np.float32 or std.dtype != np.float32):
      raise ValueError(f"{path}: not an intact statistics file (mean {mean.shape} "
                       f"{mean.dtype}, std {std.shape} {std.dtype})")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()
            and count > 0):
      raise ValueError(f"{path}: not an intact statistics file (non-finite values, "
                       "std <= 0 or count <= 0)")
    return cls(mean=mean, std=std, count=count)


def norm_stats(features: Iterable[np.ndarray]) -> NormStats:
  """Streaming per-mel-bin mean/std over ``(mel, frames, channels)`` arrays.

  Pass the training split only: statistics from evaluation data would leak it
  into the model. Sums are accumulated in float64 (Chan's parallel update would
  be overkill for dB-scaled values of moderate magnitude).
  """
  total = sq = None
  n = 0
  clips = 0
  for x in features:
    x = np.asarray(x, np.float64)
    if x.ndim != 3:
      raise ValueError(f"expected (mel, frames, channels) features, got shape {x.shape}")
    s = x.sum(axis=(1, 2))
    s2 = np.square(x).sum(axis=(1, 2))
    if total is None:
      total, sq = s, s2
    elif s.shape != total.shape:
      raise ValueError(f"mel bins differ between clips: {s.shape[0]} vs {total.shape[0]}")
    else:
      total, sq = total + s, sq + s2
    n += x.shape[1] * x.shape[2]
    clips += 1
  if clips == 0:
    raise ValueError("norm_stats needs at least one clip (is the training split empty?)")
  mean = total / n
  var = np.maximum(sq / n - mean**2, 0.0)
  std = np.maximum(np.sqrt(var), 1e-5)
  shape = (-1, 1, 1)
  return NormStats(mean=mean.reshape(shape).astype(np.float32),
                   std=std.reshape(shape).astype(np.float32), count=clips)
