"""A procedurally generated acoustic scene set in the DCASE2018 layout (default data).

Six scene classes built from real acoustic structure rather than labels painted
on noise:

=================  =========================================================
class              what distinguishes it
=================  =========================================================
traffic_hum        brown-ish background, low engine harmonics (40-90 Hz) that
                   swell and fade (passing vehicles), rare low thumps
busy_street        pinkish-brown background, weaker engines, frequent clicks
                   and thumps (footsteps, doors), moderate reverberation
park_birds         pinkish background, frequency-swept chirps (2-7 kHz)
quiet_office       near-white quiet background, keyboard-like click trains,
                   a faint mains hum, small-room reverberation
reverberant_hall   long reverberation (RT60 1-2.5 s) on footsteps and
                   announcement beeps
machine_room       steady mid-frequency harmonic stack (100-300 Hz) with
                   amplitude modulation, medium reverberation
=================  =========================================================

Within-class variation: every clip comes from a *location* (the DCASE
``identifier``) whose parameters are drawn from wide, overlapping class ranges;
clips of a location vary again around them. Nuisances shared by all classes (a
random level of +-8 dB and a random "device" spectral tilt) blur the long-term
spectrum, so a linear classifier on the mean log-mel spectrum stays well short of
perfect while the time-frequency patterns (event rate and shape, reverberant
decay, modulation) remain learnable by a CNN. Train and evaluation use disjoint
locations, as DCASE does.

Files are written like TUT Urban Acoustic Scenes 2018: 48 kHz, 16-bit, stereo
(so the resampling path of the features is exercised), ``meta.csv`` with header,
``evaluation_setup/fold1_{train,evaluate}.txt`` (path, label) and
``fold1_test.txt`` (paths of the evaluation clips). The default clips are 3 s
long (130 frames of CP-ResNet features): long enough for several events and a
reverberant tail, short enough that the default 384 clips (6 classes x 64; 288
train / 96 evaluate, ~220 MB) generate and featurise in well under a minute.

Everything is drawn from ``numpy.random.Generator``s seeded by
``(seed, class, location, clip)``, so the same seed gives byte-identical files on
the same platform, in any order or parallel split of the work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from experiments.data import _generated

__all__ = [
    "CLASSES",
    "SyntheticConfig",
    "default_root",
    "generate",
    "make_default",
    "render_clip",
]

GENERATOR_VERSION = 1
CLASSES = ("traffic_hum", "busy_street", "park_birds", "quiet_office", "reverberant_hall",
           "machine_room")
MANIFEST = "synthetic.json"
_IN_PROGRESS = ".synthetic-in-progress.json"

# Per-class parameter ranges; a location draws uniformly inside each range.
# Ranges overlap on purpose (see the module docstring).
_CLASS_PARAMS = {
    # alpha: noise colour, PSD ~ 1/f^alpha; level_db: background level;
    # tone: (f0 range Hz, n harmonics, level dB range, modulation rate Hz range);
    # events: {kind: rate range per second}; rt60: reverberation time range (s);
    # wet: wet/dry mix range.
    "traffic_hum": dict(alpha=(1.3, 2.2), level_db=(-24, -16), tone=((40, 90), 8, (-22, -6),
                        (0.05, 0.3)), events={"thump": (0.1, 0.6)}, rt60=(0.1, 0.4),
                        wet=(0.05, 0.25)),
    "busy_street": dict(alpha=(0.9, 1.8), level_db=(-26, -18), tone=((45, 110), 6, (-32, -14),
                        (0.05, 0.4)), events={"click": (0.8, 3.0), "thump": (0.5, 2.0)},
                        rt60=(0.2, 0.6), wet=(0.1, 0.3)),
    "park_birds": dict(alpha=(0.6, 1.5), level_db=(-30, -20), tone=((60, 200), 3, (-45, -30),
                       (0.1, 0.5)), events={"chirp": (0.5, 3.0)}, rt60=(0.05, 0.3),
                       wet=(0.0, 0.15)),
    "quiet_office": dict(alpha=(0.2, 1.1), level_db=(-34, -24), tone=((50, 60), 4, (-40, -24),
                         (0.0, 0.05)), events={"click": (2.0, 6.0)}, rt60=(0.2, 0.5),
                         wet=(0.1, 0.3)),
    "reverberant_hall": dict(alpha=(0.7, 1.6), level_db=(-30, -20), tone=((80, 250), 3,
                             (-45, -28), (0.05, 0.3)), events={"click": (0.5, 2.0),
                             "beep": (0.1, 0.5)}, rt60=(1.0, 2.5), wet=(0.4, 0.7)),
    "machine_room": dict(alpha=(0.5, 1.4), level_db=(-28, -18), tone=((100, 300), 10, (-24, -8),
                         (0.5, 4.0)), events={"thump": (0.0, 0.4)}, rt60=(0.3, 0.8),
                         wet=(0.1, 0.35)),
}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Parameters of a synthetic set; all of them decide the files' bytes.

  Attributes:
    seed: Master seed.
    clips_per_class: Clips per class (split over the locations).
    locations_per_class: Recording locations (DCASE identifiers) per class.
    evaluate_locations: Locations per class held out for the evaluate split.
    clip_seconds: Clip duration in seconds.
    sample_rate: Output sample rate (DCASE2018: 48,000 Hz).
    classes: Which of :data:`CLASSES` to generate.
  """

  seed: int = 0
  clips_per_class: int = 64
  locations_per_class: int = 8
  evaluate_locations: int = 2
  clip_seconds: float = 3.0
  sample_rate: int = 48000
  classes: tuple[str, ...] = CLASSES

  def __post_init__(self):
    unknown = [c for c in self.classes if c not in _CLASS_PARAMS]
    if unknown:
      raise ValueError(f"unknown synthetic classes {unknown}; choose from {CLASSES}")
    if not 0 < self.evaluate_locations < self.locations_per_class:
      raise ValueError("need 0 < evaluate_locations < locations_per_class, got "
                       f"{self.evaluate_locations} and {self.locations_per_class}")
    if self.clips_per_class < self.locations_per_class:
      raise ValueError(f"clips_per_class ({self.clips_per_class}) must be at least "
                       f"locations_per_class ({self.locations_per_class})")
    if self.clip_seconds <= 0 or self.sample_rate <= 0:
      raise ValueError("clip_seconds and sample_rate must be positive")

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["classes"] = list(self.classes)
    d["generator_version"] = GENERATOR_VERSION
    return d

  def fingerprint(self) -> str:
    return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def default_root(config: SyntheticConfig = SyntheticConfig()) -> Path:
  """``$HSPG_DATA_DIR`` (or ``~/.cache/hspg-jax/data``) ``/synthetic-<hash>``."""
  base = os.environ.get("HSPG_DATA_DIR")
  base = Path(base).expanduser() if base else Path.home() / ".cache" / "hspg-jax" / "data"
  return base / f"synthetic-{config.fingerprint()[:10]}"


# ---------------------------------------------------------------------------
# Signal building blocks (all float64, shape (samples,) or (2, samples)).


def _noise_spectrum(rng, n: int, alpha: float, sr: int) -> np.ndarray:
  """rfft of unit-RMS noise with power spectral density ~ 1/f^alpha (above 20 Hz).

  Drawn directly in the frequency domain (a complex Gaussian per bin): the same
  distribution as shaping white noise, one FFT cheaper.
  """
  spec = rng.standard_normal(2 * (n // 2 + 1)).view(np.complex128)
  spec *= np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0) ** (-alpha / 2)
  spec[0] = 0
  rms = np.sqrt(2 * np.sum(np.abs(spec) ** 2)) / n  # Parseval for rfft
  return spec / (rms + 1e-12)


def _tilt_response(n: int, db_per_octave: float, sr: int) -> np.ndarray:
  """Gain per rfft bin of a spectral tilt around 1 kHz (a crude device response)."""
  f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0)
  return 10 ** (db_per_octave * np.log2(f / 1000.0) / 20)


def _reverb_response(rng, n: int, rt60: float, wet: float, sr: int) -> np.ndarray:
  """rfft of ``(1 - wet) * delta + wet * ir`` for a decaying-noise impulse response.

  Applied as a circular convolution over the clip: the reverberant tail of the
  end wraps onto the start, as if the scene had been going on before the clip
  began (it has), and it costs one multiplication in the frequency domain.
  """
  n_ir = min(int(sr * min(1.2 * rt60, 3.0)), n)
  t = np.arange(n_ir) / sr
  ir = rng.standard_normal(n_ir) * np.exp(-6.91 * t / max(rt60, 1e-3))  # -60 dB at rt60
  ir /= np.sqrt(np.sum(ir**2)) + 1e-12
  return (1 - wet) + wet * np.fft.rfft(ir, n)


def _harmonics_spectrum(rng, n: int, sr: int, f0: float, count: int,
                        mod_rate: float) -> np.ndarray:
  """rfft (length-``n`` bins) of a unit-RMS harmonic stack with jittered pitch and
  slow amplitude modulation.

  The stack lives below 0.45 * 8 kHz, so it is synthesised at a low rate and its
  spectrum zero-padded into the full band: identical bins, 1/6 of the work at
  48 kHz.
  """
  d = max(1, int(sr // 8000))
  m = n // d
  low_sr = sr * m / n  # exact, so bin k means the same frequency at both rates
  t = np.arange(m) / low_sr
  drift = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3))
  z = np.exp(1j * (2 * np.pi * f0 * np.cumsum(drift) / low_sr))
  zk = np.ones(m, complex)
  acc = np.zeros(m, complex)
  for k in range(1, count + 1):
    if k * f0 * 1.02 >= 0.45 * low_sr:
      break
    zk *= z  # e^{ik phase} by recurrence: cheaper than a sin per harmonic
    acc += (rng.uniform(0.3, 1.0) / k * np.exp(1j * rng.uniform(0, 2 * np.pi))) * zk
  y = acc.imag
  if mod_rate > 0:
    depth = rng.uniform(0.3, 0.9)
    y *= 1 - depth / 2 + depth / 2 * np.sin(2 * np.pi * mod_rate * t + rng.uniform(0, 6.3))
  y /= np.sqrt(np.mean(y**2)) + 1e-12
  out = np.zeros(n // 2 + 1, complex)
  low = np.fft.rfft(y)
  low[-1] = 0  # the low rate's Nyquist bin has no counterpart
  out[: low.shape[0]] = low * (n / m)
  return out


def _event(rng, kind: str, sr: int) -> np.ndarray:
  """One foreground event (mono), peak-normalised."""
  if kind == "click":  # keyboard / footstep: a short bright noise burst
    n = int(sr * rng.uniform(0.005, 0.04))
    m = max(n, 64)
    y = np.fft.irfft(_noise_spectrum(rng, m, rng.uniform(-0.5, 0.5), sr), m)[:n]
    y *= np.exp(-np.arange(n) / (n / rng.uniform(3, 6)))
  elif kind == "thump":  # door / vehicle bump: a decaying low sine
    n = int(sr * rng.uniform(0.08, 0.3))
    t = np.arange(n) / sr
    f = rng.uniform(40, 140)
    y = np.sin(2 * np.pi * f * t * (1 - 0.3 * t)) * np.exp(-t * rng.uniform(10, 30))
  elif kind == "chirp":  # bird call: a fast frequency sweep with harmonics
    n = int(sr * rng.uniform(0.05, 0.25))
    t = np.arange(n) / sr
    f_start, f_end = rng.uniform(2000, 7000, size=2)
    inst = f_start + (f_end - f_start) * (t / t[-1]) ** rng.uniform(0.5, 2)
    ph = 2 * np.pi * np.cumsum(inst) / sr
    y = (np.sin(ph) + 0.3 * np.sin(2 * ph)) * np.hanning(n)
  elif kind == "beep":  # announcement chime: two pure tones
    n = int(sr * rng.uniform(0.2, 0.5))
    t = np.arange(n) / sr
    f = rng.uniform(500, 1500)
    half = n // 2
    y = np.where(np.arange(n) < half, np.sin(2 * np.pi * f * t),
                 np.sin(2 * np.pi * f * 1.26 * t)) * np.hanning(n)
  else:
    raise ValueError(kind)
  return y / (np.max(np.abs(y)) + 1e-12)


def _location_params(rng, cls: str) -> dict:
  p = _CLASS_PARAMS[cls]
  (f0_lo, f0_hi), n_harm, (tl_lo, tl_hi), (mr_lo, mr_hi) = p["tone"]
  return {
      "alpha": rng.uniform(*p["alpha"]),
      "level_db": rng.uniform(*p["level_db"]),
      "f0": rng.uniform(f0_lo, f0_hi),
      "n_harm": n_harm,
      "tone_db": rng.uniform(tl_lo, tl_hi),
      "mod_rate": rng.uniform(mr_lo, mr_hi),
      "events": {k: rng.uniform(*r) for k, r in p["events"].items()},
      "event_db": rng.uniform(-16, -4),
      "rt60": rng.uniform(*p["rt60"]),
      "wet": rng.uniform(*p["wet"]),
      "coherence": rng.uniform(0.2, 0.9),
  }


def render_clip(config: SyntheticConfig, cls: str, location: int, index: int) -> np.ndarray:
  """The float32 ``(samples, 2)`` audio of one clip, deterministic in its arguments."""
  ci = CLASSES.index(cls)
  loc = _location_params(np.random.default_rng([config.seed, ci, location, 0]), cls)
  rng = np.random.default_rng([config.seed, ci, location, 1 + index])
  sr = config.sample_rate
  n = int(round(config.clip_seconds * sr))
  # Events in the time domain (panned); everything else in the frequency domain.
  fg = np.zeros((2, n))
  tone = _harmonics_spectrum(rng, n, sr, loc["f0"] * rng.uniform(0.97, 1.03), loc["n_harm"],
                             loc["mod_rate"])
  pan = rng.uniform(0.3, 0.7)
  tone *= 10 ** ((loc["tone_db"] + rng.normal(0, 3)) / 20)
  for kind, rate in loc["events"].items():
    count = rng.poisson(max(rate * rng.uniform(0.7, 1.3), 0) * config.clip_seconds)
    for _ in range(count):
      ev = _event(rng, kind, sr)
      start = rng.integers(0, max(1, n - len(ev)))
      end = min(n, start + len(ev))
      gain = 10 ** ((loc["event_db"] + rng.normal(0, 4)) / 20)
      p = rng.uniform(0.1, 0.9)
      fg[0, start:end] += gain * np.sqrt(1 - p) * ev[: end - start]
      fg[1, start:end] += gain * np.sqrt(p) * ev[: end - start]
  # Background, reverberation and the nuisances shared by all classes (device
  # tilt, overall level) in the frequency domain: one FFT pair per channel.
  alpha = loc["alpha"] + rng.normal(0, 0.1)
  coh = loc["coherence"]
  common = _noise_spectrum(rng, n, alpha, sr)
  bg_gain = 10 ** ((loc["level_db"] + rng.normal(0, 1.5)) / 20)
  rt60 = loc["rt60"] * rng.uniform(0.85, 1.15)
  shared = _tilt_response(n, rng.uniform(-2.5, 2.5), sr) * 10 ** (rng.uniform(-8, 8) / 20)
  y = np.empty((2, n))
  for c in range(2):  # decorrelated left/right tails sound (and look) spacious
    bg = np.sqrt(coh) * common + np.sqrt(1 - coh) * _noise_spectrum(rng, n, alpha, sr)
    tone_gain = np.sqrt(pan if c else 1 - pan)
    spec = bg_gain * bg + tone_gain * tone + np.fft.rfft(fg[c])
    spec *= _reverb_response(rng, n, rt60, loc["wet"], sr) * shared
    y[c] = np.fft.irfft(spec, n)
  peak = np.max(np.abs(y))
  if peak > 0.98:  # keep 16-bit output unclipped without normalising every clip
    y *= 0.98 / peak
  return y.T.astype(np.float32)


# ---------------------------------------------------------------------------
# Writing the data set.


def _plan(config: SyntheticConfig) -> list[dict]:
  """Every clip: class, location, index, relative path, split."""
  rows = []
  for cls in config.classes:
    locs = config.locations_per_class
    # Spread clips over locations as evenly as the count allows.
    per_loc = [config.clips_per_class // locs + (i < config.clips_per_class % locs)
               for i in range(locs)]
    # Which locations are held out is seeded too, so the evaluate split differs by seed.
    order = np.random.default_rng([config.seed, CLASSES.index(cls), 10**6]).permutation(locs)
    held_out = set(order[: config.evaluate_locations].tolist())
    for loc in range(locs):
      for i in range(per_loc[loc]):
        rows.append({
            "cls": cls, "location": loc, "index": i,
            "path": f"audio/{cls}-loc{loc:02d}-{i:03d}-a.wav",
            "identifier": f"{cls}-loc{loc:02d}",
            "split": "evaluate" if loc in held_out else "train",
        })
  return rows


def _write_text(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def _write_clip(config: SyntheticConfig, row: dict, root: Path) -> None:
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  out = root / row["path"]
  if out.exists():  # written atomically before, hence complete: resume past it
    return
  audio = render_clip(config, row["cls"], row["location"], row["index"])
  tmp = out.with_name(out.name + ".tmp.wav")
  sf.write(str(tmp), audio, config.sample_rate, subtype="PCM_16", format="WAV")
  os.replace(tmp, out)


def _render_many(args) -> None:
  config, rows, root = args
  for row in rows:
    _write_clip(config, row, root)


def generate(root, config: SyntheticConfig = SyntheticConfig(), *, workers: int | None = None,
             progress: bool = True, overwrite: bool = False) -> Path:
  """Writes the synthetic set to ``root`` (idempotent and resumable).

  If ``root`` already holds a complete set with the same config, nothing is
  done. An interrupted generation with the same config resumes. A set made with
  different parameters is an error unless ``overwrite=True``; a non-empty
  directory that is not a synthetic set is never touched.

  Args:
    root: Output directory.
    config: What to generate.
    workers: Processes for rendering (None: all cores; 1: in this process).
    progress: Show a progress bar.
    overwrite: Replace a synthetic set made with other parameters.

  Returns:
    ``root`` as a ``Path``.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  root = Path(root).expanduser()
  want = config.to_dict()
  marker = root / _IN_PROGRESS
  if _generated.claim(root, want, manifest=MANIFEST, marker=_IN_PROGRESS, what="synthetic data set",
                      remedy=None if overwrite else
                      "choose another root or pass overwrite=True (--overwrite)",
                      needed=_NEEDED, dirs=("audio", "evaluation_setup")):
    return root

  (root / "audio").mkdir(parents=True, exist_ok=True)
  (root / "evaluation_setup").mkdir(exist_ok=True)
  _write_text(marker, json.dumps(want, sort_keys=True))
  rows = _plan(config)
  bar = tqdm(total=len(rows), desc="synthetic set", unit="clip", disable=not progress)
  if workers is None:
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
  if workers <= 1 or len(rows) < 32:
    for row in rows:
      _write_clip(config, row, root)
      bar.update()
  else:
    from concurrent.futures import ProcessPoolExecutor  # pylint: disable=g-import-not-at-top

    from experiments.data import cache  # pylint: disable=g-import-not-at-top

    chunks = [rows[i: i + 16] for i in range(0, len(rows), 16)]
    ctx = cache._mp_context()  # pylint: disable=protected-access  # same start method
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      for chunk, _ in zip(chunks, pool.map(_render_many, [(config, c, root) for c in chunks])):
        bar.update(len(chunk))
  bar.close()

  meta = ["filename\tscene_label\tidentifier\tsource_label"]
  meta += [f"{r['path']}\t{r['cls']}\t{r['identifier']}\ta" for r in rows]
  _write_text(root / "meta.csv", "\n".join(meta) + "\n")
  setup = root / "evaluation_setup"
  for split in ("train", "evaluate"):
    lines = [f"{r['path']}\t{r['cls']}" for r in rows if r["split"] == split]
    _write_text(setup / f"fold1_{split}.txt", "\n".join(lines) + "\n")
  test = [r["path"] for r in rows if r["split"] == "evaluate"]
  _write_text(setup / "fold1_test.txt", "\n".join(test) + "\n")
  files = {r["path"]: (root / r["path"]).stat().st_size for r in rows}
  # The manifest goes last: its presence means "complete".
  _write_text(root / MANIFEST, json.dumps({"config": want, "files": files}, indent=1, sort_keys=True))
  marker.unlink(missing_ok=True)
  return root


_NEEDED = ("meta.csv", "evaluation_setup/fold1_train.txt", "evaluation_setup/fold1_evaluate.txt")


def make_default(root=None, seed: int = 0, **overrides) -> Path:
  """The default data: generates the synthetic set once and returns its root.

  Args:
    root: Where to put it; None uses :func:`default_root` of the config.
    seed: Master seed.
    **overrides: Other :class:`SyntheticConfig` fields (e.g. ``clips_per_class``,
      ``clip_seconds``) or :func:`generate` options (``workers``, ``progress``,
      ``overwrite``).

  Returns:
    The data root, ready for :func:`experiments.data.dcase.load`.
  """
  gen_kwargs = {k: overrides.pop(k) for k in ("workers", "progress", "overwrite")
                if k in overrides}
  if "classes" in overrides:
    overrides["classes"] = tuple(overrides["classes"])
  config = SyntheticConfig(seed=seed, **overrides)
  return generate(root or default_root(config), config, **gen_kwargs)
