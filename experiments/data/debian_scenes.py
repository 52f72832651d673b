"""A small real-recording scene set in the DCASE2018 layout, built from Debian packages.

A tool run by hand (never at training time)::

  python -m experiments.data.debian_scenes --out DIR [--seed N] [--packages-dir DIR]

It downloads a few game data packages of Debian 12 (bookworm, main) with
``apt-get download`` (or takes the ``.deb`` files already in ``--packages-dir``,
so it also runs offline), unpacks only the listed files with
``dpkg-deb --fsys-tarfile`` (what ``dpkg -x`` runs underneath), decodes the
recordings in :data:`SOURCES` and cuts them into 10-s clips written like TUT
Urban Acoustic Scenes 2018 (48 kHz, 16-bit, stereo WAV; ``meta.csv``;
``evaluation_setup/fold1_{train,evaluate,test}.txt``).

Six classes: ``rain``, ``wind``, ``water``, ``birds``, ``insects``,
``machinery``. The DCASE ``identifier`` of a clip is its source *recording*, and
train/evaluate are split by recording, so evaluation always hears recordings
that training never did. 0ad-data and megaglest-data are never used (they are
kept for independent evaluation), nor any file their copyright notes derive from
them.

How the sources were chosen (listen-free, reviewed by hand): file names and the
packages' ``debian/copyright`` provenance (many files name their freesound.org
original), spectrogram images, signal statistics (duration, RMS, no silence),
and a cross-correlation search for shared material between every pair of
candidates, which found two cases: the three widelands bench-saw files are one
recording (and it holds only 7.5 s of sound: not used), and UFO:AI's
``ufo_night_atm.ogg`` contains OpenClonk's ``WindLoop.ogg`` (the wind loop is
left out). Files cut from one original or made by one recordist in one session
share a recording id (redeclipse ``waterfall2/3`` and ``forest1/2/3``, flightgear's
three engine files). Candidates with audible design (periodic synthetic
wind, tonal "desert ambience"), sample rates below 22,050 Hz, or mixed content
(a "river" full of birdsong) were left out.

Processing, identical for every source so that no class differs by production:

* mono: stereo sources are averaged, and the clip is written as *dual mono*
  (the same signal in both channels). Stereo images differ by game, not by
  scene, and only some sources have one; inventing stereo (decorrelation) would
  be a class-independent artefact at best.
* band limit: every source passes through 22,050 Hz (polyphase resampling),
  then up to 48 kHz, so all clips share an ~11 kHz bandwidth; otherwise the
  source's sample rate (22.05 to 96 kHz here) could tell the class.
* level: each recording is normalised to -26 dBFS RMS, then each clip gets a
  seeded random gain of +-6 dB (and is scaled down if it would clip), so the
  level carries no class information.
* clips: 10-s windows every 5 s (50 % overlap) with a seeded start jitter, at
  most 12 per recording (a seeded subset of the windows of longer ones).
  Sources shorter than 10 s are used only if they are ambience loops that the
  game itself plays looped (three rain loops of 4.8-9.4 s): they are tiled with
  a 50 ms crossfade at the seam and give exactly one clip each. Shorter
  non-loop files are not used.
* split: per class, the recordings sent to ``evaluate`` are drawn (seeded)
  among the subsets of at most half of them that put 1/3 +- 0.1 of the class's
  clips there (the closest share when none does): every class keeps recordings
  on both sides, and training never has fewer recordings than evaluation.

The same seed and the same packages give byte-identical files (the sha256 of
every source file is pinned in :data:`SOURCES`). The build writes
``debian_scenes.json`` last (packages, versions, licences, per-source sha256
and statistics, class counts per split) and copies each package's
``debian/copyright`` to ``licenses/``; an unfinished build is detected by its
in-progress marker and redone.

Limits: 24 recordings, from 4.8 s to 154 s long, 3 to 5 per class; clips of a
recording overlap and are not independent; several sources are edited game
ambience rather than raw field recordings. It is a development set for checking
that methods learn real acoustic structure, not a benchmark.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from experiments.data import _generated

__all__ = [
    "CLASSES",
    "PACKAGES",
    "SOURCES",
    "Package",
    "Source",
    "assemble",
    "build",
    "default_packages_dir",
    "default_root",
    "fetch_packages",
    "main",
    "read_source",
]

BUILDER_VERSION = 1
CLASSES = ("rain", "wind", "water", "birds", "insects", "machinery")
SAMPLE_RATE = 48000          # DCASE2018
BAND_RATE = 22050            # every source passes through this rate (common bandwidth)
CLIP_SECONDS = 10.0
HOP_SECONDS = 5.0
MAX_CLIPS_PER_RECORDING = 12
MIN_LOOP_SECONDS = 4.0
CROSSFADE_SECONDS = 0.05
TARGET_DBFS = -26.0
GAIN_DB = 6.0
EVALUATE_SHARE = 1 / 3
SHARE_TOLERANCE = 0.1
SILENCE_DBFS = -60.0         # a source quieter than this over any whole second is rejected
MANIFEST = "debian_scenes.json"
_IN_PROGRESS = ".debian-scenes-in-progress.json"


@dataclasses.dataclass(frozen=True)
class Package:
  """A Debian package the set is built from.

  Attributes:
    name: Package name.
    version: The exact Debian version (bookworm) the sha256 sums were taken from.
    licence: The licence(s) of the files used, as the package's
      ``debian/copyright`` states them.
  """

  name: str
  version: str
  licence: str


@dataclasses.dataclass(frozen=True)
class Source:
  """One source file, as reviewed.

  Attributes:
    package: Package name (a key of the package mapping).
    path: Path of the file inside the package's file tree.
    member: Path inside an archive at ``path`` (a ``.pk3`` zip or an OpenClonk
      ``.ocg`` group), or None for a plain file.
    cls: Scene class.
    recording: Recording id (the DCASE identifier): files sharing it are one
      recording and always land on the same side of the split.
    sha256: sha256 of the file's (or member's) bytes; None skips the check.
    licence: The file's licence and author as ``debian/copyright`` gives them.
    loop: A short (4-10 s) ambience loop that the game plays looped; tiled to
      one clip. Non-loop sources must be at least 10 s long.
    trim: Seconds dropped at the start and at the end (fades).
  """

  package: str
  path: str
  member: str | None
  cls: str
  recording: str
  sha256: str | None
  licence: str
  loop: bool = False
  trim: tuple[float, float] = (0.0, 0.0)

  @property
  def name(self) -> str:
    return f"{self.package}:{self.path}" + (f":{self.member}" if self.member else "")


PACKAGES: dict[str, Package] = {p.name: p for p in (
    Package("openclonk-data", "8.1-3", "CC-BY-3.0 or CC0-1.0 (game content)"),
    Package("supertux-data", "0.6.3-2", "GPL-3+"),
    Package("redeclipse-data", "1.6.0-1", "CC-BY-3.0, CC-BY-SA-3.0 (per file)"),
    Package("flightgear-data-base", "1:2020.3.16+dfsg-1", "GPL-2+"),
    Package("7kaa-data", "2.15.5+dfsg-1", "GPL-2+"),
    Package("lugaru-data", "1.2-6", "CC-BY-SA-3.0 (Data/*)"),
    Package("ufoai-sound", "2.5-2", "CC-BY-3.0, CC-BY-SA-3.0, GPL-2+ (per file)"),
    Package("supertuxkart-data", "1.4+dfsg-2", "CC0-1.0, CC-BY-SA-3.0 (per file)"),
)}

_OC = "usr/share/games/openclonk/Sound.ocg"
_UFO = "usr/share/games/ufoai/base/0snd.pk3"
_RE = "usr/share/games/redeclipse/data/sounds/ambience/"
_STK = "usr/share/games/supertuxkart/data/"
_FG = "usr/share/games/flightgear/"
_Q009 = "CC-BY-3.0, Slawek 'Q009' Blauciak"

# The reviewed list. Order does not matter: every random draw is keyed by class
# and recording id.
SOURCES: tuple[Source, ...] = (
    # rain
    Source("openclonk-data", _OC, "Liquids.ocg/StereoRain.ogg", "rain", "oc-stereorain",
           "64222b9c3bf71db82e0d7b7059d1cea4ac3e959658a374c61aeebb39456942ff",
           "CC-BY-3.0 or CC0-1.0, The OpenClonk Team"),
    Source("supertux-data", "usr/share/games/supertux2/sounds/rain.wav", None, "rain",
           "supertux-rain", "a4246483a6f17a63042374212e670cda4ab1f7d7c7fbe6820c520673d99ccbc7",
           "GPL-3+, SuperTux Devel Team"),
    Source("redeclipse-data", _RE + "morph/rain.ogg", None, "rain", "re-morph-rain",
           "f3ec76ecd54eb1010164c1d64eb86c072e84659ff40e80251d3d4d7cf34bac42", _Q009, loop=True),
    Source("flightgear-data-base", _FG + "Sounds/rain.wav", None, "rain", "fg-rain",
           "cd3ac7c86720aad9e7af71a4f1702f8b24bc72c58f2931e102f2cef7d054deb1",
           "GPL-2+, FlightGear contributors", loop=True),
    Source("7kaa-data", "usr/share/games/7kaa/SOUND/RAIN.WAV", None, "rain", "7kaa-rain",
           "04c17493d1969fb5f991540485bc75797b5aef99918e44c08a9018129564ec94",
           "GPL-2+, Enlight Software Ltd.", loop=True, trim=(0.4, 0.0)),
    # wind
    Source("lugaru-data", "usr/share/games/lugaru/Sounds/Wind.ogg", None, "wind", "lugaru-wind",
           "02a87c71da438348708e34421f9be6d46bc12af5065f0e60da1ab65cd5d78e53",
           "CC-BY-SA-3.0, Wolfire Games"),
    Source("ufoai-sound", _UFO, "sound/ambience/arcticwind.ogg", "wind", "ufoai-arcticwind",
           "1b1e6d370f4b26cc1c5a95471a40f74a179859fb109dc0bf1f9e9da109479a8a",
           "CC-BY-SA-3.0, UFO:AI sound contributors"),
    Source("redeclipse-data", _RE + "wind.ogg", None, "wind", "re-wind",
           "094e99516c6caa46a6b3cfd64b586e29a10f6a22c05c9876dec4187b8d9d9c7b",
           "CC-BY-SA-3.0, Batuhan Bozkurt (freesound 17735)"),
    Source("redeclipse-data", _RE + "morph/stormwind.ogg", None, "wind", "re-morph-stormwind",
           "07c7a6361e535af8100643c78df8a70456cf000031edb884c9140f91cb36ef3c", _Q009),
    # water (flowing)
    Source("redeclipse-data", _RE + "waterfall2.ogg", None, "water", "re-waterfall",
           "c6950d5e6e9a15fd9e71274f9eb0aac5e16bbefe114e19d767ad7afc8c4c2c27",
           "CC-BY-SA-3.0, Tim 'Corsica_S' Kahn (freesound 28656-28659)"),
    Source("redeclipse-data", _RE + "waterfall3.ogg", None, "water", "re-waterfall",
           "1fd7c9cc8d8a67b032f0d5b0a11db1cfcad8aa7fab2d1b260952c5c7069b2c55",
           "CC-BY-SA-3.0, Tim 'Corsica_S' Kahn (freesound 28656-28659)"),
    Source("supertuxkart-data", _STK + "sfx/river_loop.ogg", None, "water", "stk-river",
           "58d3f165ff9b4e5e031e24e16cb1cdc475dd76df0aafd6df7d84e637cee2fd2c",
           "CC0, Adam Newns (freesound 166310)"),
    Source("supertuxkart-data", _STK + "sfx/waterfall_loop_2.ogg", None, "water",
           "stk-waterfall", "6a70d6707d5660c088b63d1a838d0c4eb2571f1a9368b4303e43b46e8dd03729",
           "CC0, Leonard 'VKProduktion' Graf (freesound 215711)"),
    Source("ufoai-sound", _UFO, "sound/ambience/waterfontain.ogg", "water", "ufoai-fountain",
           "a9e5e600f8ab0de131c31769dcbb3370ee6a52df598021296573c95d07efb08a",
           "CC-BY-SA-3.0, UFO:AI sound contributors"),
    Source("flightgear-data-base", _FG + "Aircraft/c172p/Sounds/water-still.wav", None, "water",
           "fg-water", "83c3c1a813a5f44d384870b2befd5c71e97c792ae9936d9311e0fd7054428d27",
           "GPL-2+, FlightGear contributors"),
    # birds
    Source("supertuxkart-data", _STK + "sfx/exotic-birds.ogg", None, "birds", "stk-exotic-birds",
           "89c3c6d7b55a5d1341cdd59f23ae479ac2c864934214bdd6ef716f02056d7801",
           "CC0, James 'swiftoid' Swift (freesound 182501)"),
    Source("supertuxkart-data", _STK + "sfx/exotic-birds_2.ogg", None, "birds",
           "stk-exotic-birds-2", "85714f71c609b091b39c060685252093505e9065b7fdd8e9b50aeaffd97ffef1",
           "CC0, mpfeiffer (freesound 115758)"),
    Source("openclonk-data", _OC, "Environment.ocg/BirdsLoop.ogg", "birds", "oc-birds",
           "a9b50944e932167d43d608260d958e25ea332a8e17180a5e9b92267f53d78acd",
           "CC-BY-3.0 or CC0-1.0, The OpenClonk Team"),
    *(Source("redeclipse-data", _RE + f"forest{i}.ogg", None, "birds", "re-forest", sha,
             "CC-BY-3.0, Dob 'dobroide' Roide (freesound 34580, 7292)")
      for i, sha in ((1, "d1472641825219fdb50611a28def78c801432e67da3f3eabaa4619271281b94c"),
                     (2, "9c9a9164319e12df70d236ae36e80803789ba522fea757f2ef181d60fc065470"),
                     (3, "5f7b22a04ee4ab6b22ae6d1df5916e2962f990a94e5bd23e034c06f3d1eaa488"))),
    # insects
    Source("redeclipse-data", _RE + "nightcrickets.ogg", None, "insects", "re-nightcrickets",
           "bc7565a98ca48ff0516c0d2b8bd709e264298496987052e41b71ce0ed00e2968",
           "CC-BY-SA-3.0, Richard 'RHumphries' Humphries (freesound 1056, 7152)"),
    Source("redeclipse-data", _RE + "cycadas.ogg", None, "insects", "re-cicadas",
           "2f2308647de2ed55786789611cd638d2c50e4406bf7d4bc1d596c918857dbd9b",
           "CC-BY-3.0, Dob 'dobroide' Roide (freesound 34580, 7292)"),
    Source("ufoai-sound", _UFO, "sound/ambience/ufo_night_atm.ogg", "insects", "ufoai-night",
           "d0626f204268e9144defbec89c4fe44437427e1b5b3c2e434b4df8f91659ebb8",
           "GPL-2+, Axis REC, Martin Gerhardy, Nexuiz, Max Neave, Michael 'Tenshihan' Quinn"),
    # machinery
    Source("ufoai-sound", _UFO, "sound/ambience/minepump03.ogg", "machinery", "ufoai-minepump",
           "72c07614f6d5bc64c02a7c0ade606953b67fe0ed54d4e58493f184fbd18325f9",
           "CC-BY-3.0, UFO:AI sound contributors"),
    Source("supertuxkart-data", _STK + "tracks/black_forest/steamLocomotive.ogg", None,
           "machinery", "stk-steam-locomotive",
           "124675c995644065c10bbd0b4f9191d2b1ba038823eab0bb3652f53607deea9f",
           "CC-BY-SA-3.0, Daniel Simion"),
    *(Source("flightgear-data-base", _FG + path, None, "machinery", "fg-engines", sha,
             "GPL-2+, FlightGear contributors")
      for path, sha in (
          ("Sounds/prop.wav", "3c9148be1b3db9cebf7067dfeea30c06542da71b663b5e139a62c19f33e61db9"),
          ("Sounds/engine-prop.wav",
           "83cbf18d4fd1a71e1b0307b0a4ecad2acd104afcb3859e72faabbd632e8564e1"),
          ("Aircraft/c172p/Sounds/engine-idle.wav",
           "9a38a7e177d8ddfe24eeca9e767e73982dc4a551d61be0164189cc31093ea7b6"))),
)

# Never used, whatever the list says: kept aside for independent evaluation.
FORBIDDEN_PACKAGES = frozenset({"0ad-data", "0ad-data-common", "megaglest-data"})


def _data_base() -> Path:
  base = os.environ.get("HSPG_DATA_DIR")
  return Path(base).expanduser() if base else Path.home() / ".cache" / "hspg-jax" / "data"


def default_root() -> Path:
  """``$HSPG_DATA_DIR`` (or ``~/.cache/hspg-jax/data``) ``/debian-scenes``."""
  return _data_base() / "debian-scenes"


def default_packages_dir() -> Path:
  """Where the ``.deb`` files go: ``$HSPG_DATA_DIR/debian-packages``."""
  return _data_base() / "debian-packages"


# ---------------------------------------------------------------------------
# Getting the packages.


def _deb_version(deb: Path, runner=subprocess.run) -> str:
  out = runner(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
               check=False)
  if out.returncode != 0:
    raise RuntimeError(f"{deb}: not a readable .deb ({out.stderr.strip()})")
  return out.stdout.strip()


def _find_deb(packages_dir: Path, package: Package, runner=subprocess.run) -> Path | None:
  for deb in sorted(packages_dir.glob(f"{package.name}_*.deb")):
    if _deb_version(deb, runner) == package.version:
      return deb
  return None


def fetch_packages(packages: Sequence[Package], packages_dir, *, download: bool = True,
                   runner=subprocess.run, log=print) -> dict[str, Path]:
  """The ``.deb`` file of each package, downloaded with ``apt-get download`` if missing.

  Args:
    packages: What to fetch (exact versions).
    packages_dir: Where ``.deb`` files are looked for and downloaded to.
    download: If False, a missing package is an error instead of a download.
    runner: ``subprocess.run`` (replaceable in tests).
    log: Progress messages.

  Returns:
    ``{package name: path of its .deb}``.
  """
  packages_dir = Path(packages_dir).expanduser()
  packages_dir.mkdir(parents=True, exist_ok=True)
  for p in packages:
    if p.name in FORBIDDEN_PACKAGES:
      raise ValueError(f"{p.name} is kept aside for independent evaluation; never use it")
  found = {p.name: _find_deb(packages_dir, p, runner) for p in packages}
  missing = [p for p in packages if found[p.name] is None]
  if missing and not download:
    raise FileNotFoundError(
        f"{packages_dir}: no .deb for {', '.join(f'{p.name}={p.version}' for p in missing)} "
        "(run without --no-download, or put the files there)")
  if missing:
    log(f"apt-get download {' '.join(p.name for p in missing)} -> {packages_dir}")
    out = runner(["apt-get", "download", *(f"{p.name}={p.version}" for p in missing)],
                 cwd=packages_dir, capture_output=True, text=True, check=False)
    if out.returncode != 0:
      last = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
      raise RuntimeError(f"apt-get download failed: {last} (run 'apt-get update' first, or "
                         "pass --packages-dir with the .deb files)")
    for p in missing:
      found[p.name] = _find_deb(packages_dir, p, runner)
      if found[p.name] is None:
        raise RuntimeError(f"apt-get download left no {p.name}_{p.version} .deb in "
                           f"{packages_dir}")
  return found


def _extract(deb: Path, paths: Sequence[str], dest: Path, runner=subprocess.Popen) -> Path:
  """Unpacks ``paths`` (and nothing else) of ``deb`` into ``dest``; cached.

  ``dpkg-deb --fsys-tarfile`` is the tar stream ``dpkg -x`` unpacks; reading it
  here picks the few files needed out of packages of up to 1.3 GB.
  """
  want = sorted(set(paths))
  done = dest / ".extracted.json"
  if done.is_file() and json.loads(done.read_text()) == {"deb": deb.name, "paths": want}:
    return dest
  shutil.rmtree(dest, ignore_errors=True)
  dest.mkdir(parents=True)
  names = {"./" + p: p for p in want}
  proc = runner(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
  try:
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
      for info in tar:
        rel = names.pop(info.name, None)
        if rel is None:
          continue
        if not info.isfile():
          raise RuntimeError(f"{deb.name}: {rel} is not a regular file in the package")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(info) as src, open(target, "wb") as dst:
          shutil.copyfileobj(src, dst)
        if not names:
          break
  finally:
    proc.stdout.close()
    proc.kill()
    proc.wait()
  if names:
    raise FileNotFoundError(f"{deb.name}: not in the package: {sorted(names.values())}")
  done.write_text(json.dumps({"deb": deb.name, "paths": want}))
  return dest


# ---------------------------------------------------------------------------
# Reading sources.


def _c4_unscramble(header: bytes) -> bytes:
  b = bytearray(header)
  for i in range(0, len(b) - 2, 3):
    b[i], b[i + 2] = b[i + 2], b[i]
  return bytes(x ^ 237 for x in b)


def _c4group_members(raw: bytes, where: str) -> dict[str, bytes]:
  """Files of an OpenClonk group (``.ocg``/``.ocd``): gzip with a changed magic,
  a scrambled 204-byte header, 316-byte entries, nested groups stored inline."""
  if raw[:2] != b"\x1e\x8c":
    raise ValueError(f"{where}: not an OpenClonk group file (magic {raw[:2].hex()})")
  data = zlib.decompress(b"\x1f\x8b" + raw[2:], 47)
  out: dict[str, bytes] = {}

  def walk(base: int, prefix: str):
    head = _c4_unscramble(data[base: base + 204])
    if not head.startswith(b"RedWolf Design GrpFolder"):
      raise ValueError(f"{where}: bad group header at {prefix or '/'}")
    (count,) = struct.unpack("<i", head[36:40])
    table = base + 204
    start = table + 316 * count
    for k in range(count):
      entry = data[table + 316 * k: table + 316 * (k + 1)]
      name = entry[:260].split(b"\0")[0].decode("latin-1")
      _, child, size, _, offset = struct.unpack("<iiiii", entry[260:280])
      if child:
        walk(start + offset, prefix + name + "/")
      else:
        out[prefix + name] = data[start + offset: start + offset + size]

  walk(0, "")
  return out


def read_source(root, source: Source, _cache: dict | None = None) -> bytes:
  """The bytes of ``source`` under an extracted package tree ``root``."""
  path = Path(root) / source.path
  if not path.is_file():
    raise FileNotFoundError(f"{source.name}: {path} not found")
  if source.member is None:
    return path.read_bytes()
  cache = {} if _cache is None else _cache
  if path not in cache:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as z:
        cache[path] = {n: z.read(n) for n in z.namelist()
                       if n.lower().endswith((".ogg", ".wav", ".flac"))}
    else:
      cache[path] = _c4group_members(path.read_bytes(), str(path))
  try:
    return cache[path][source.member]
  except KeyError:
    raise FileNotFoundError(f"{source.name}: no member {source.member!r} in {path}") from None


# ---------------------------------------------------------------------------
# Signal processing.


def _resample(y: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
  from scipy import signal  # pylint: disable=g-import-not-at-top

  if sr_from == sr_to:
    return y
  g = math.gcd(sr_from, sr_to)
  return signal.resample_poly(y, sr_to // g, sr_from // g)


def _decode(raw: bytes, source: Source) -> tuple[np.ndarray, dict]:
  """Mono float64 at :data:`SAMPLE_RATE`, band-limited through :data:`BAND_RATE`,
  normalised to :data:`TARGET_DBFS`; plus statistics of the source."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  try:
    y, sr = sf.read(io.BytesIO(raw), dtype="float64", always_2d=True)
  except Exception as e:  # pylint: disable=broad-except  # libsndfile errors vary
    raise ValueError(f"{source.name}: cannot decode: {e}") from e
  channels = y.shape[1]
  y = y.mean(axis=1)
  start, end = (int(round(t * sr)) for t in source.trim)
  y = y[start: len(y) - end]
  seconds = len(y) / sr
  if sr < BAND_RATE:
    raise ValueError(f"{source.name}: sample rate {sr} Hz is below the common bandwidth's "
                     f"{BAND_RATE} Hz")
  if source.loop:
    if not MIN_LOOP_SECONDS <= seconds < CLIP_SECONDS:
      raise ValueError(f"{source.name}: a loop source must last {MIN_LOOP_SECONDS:g} to "
                       f"{CLIP_SECONDS:g} s, got {seconds:.2f} s")
  elif seconds < CLIP_SECONDS:
    raise ValueError(f"{source.name}: {seconds:.2f} s is shorter than one {CLIP_SECONDS:g}-s "
                     "clip (mark it loop=True only if the game plays it looped)")
  n = int(sr)
  per_second = y[: len(y) // n * n].reshape(-1, n)
  second_db = 10 * np.log10(np.mean(per_second**2, axis=1) + 1e-20)
  if second_db.min() < SILENCE_DBFS:
    raise ValueError(f"{source.name}: second {int(second_db.argmin())} is silent "
                     f"({second_db.min():.1f} dBFS < {SILENCE_DBFS:g})")
  y = _resample(_resample(y, sr, BAND_RATE), BAND_RATE, SAMPLE_RATE)
  rms_db = 10 * np.log10(np.mean(y**2) + 1e-20)
  y *= 10 ** ((TARGET_DBFS - rms_db) / 20)
  stats = {"seconds": round(seconds, 3), "sample_rate": int(sr), "channels": int(channels),
           "rms_dbfs": round(float(rms_db), 2),
           "quietest_second_dbfs": round(float(second_db.min()), 2),
           "loudest_second_dbfs": round(float(second_db.max()), 2)}
  return y, stats


def _tile(y: np.ndarray, length: int) -> np.ndarray:
  """``y`` repeated to at least ``length`` samples, seams crossfaded (equal power)."""
  fade = int(CROSSFADE_SECONDS * SAMPLE_RATE)
  t = np.linspace(0, np.pi / 2, fade)
  fade_in, fade_out = np.sin(t), np.cos(t)
  period = len(y) - fade
  out = np.zeros(length + len(y))
  pos = 0
  while pos < length:
    piece = y.copy()
    if pos:
      piece[:fade] *= fade_in
    piece[-fade:] *= fade_out
    out[pos: pos + len(y)] += piece
    pos += period
  return out


def _key(*parts: str) -> int:
  """A stable 32-bit number for names (Python's hash() is salted per process)."""
  return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "little")


# ---------------------------------------------------------------------------
# Planning and writing.


def _windows(n_samples: int, loop: bool, rng) -> list[int]:
  clip, hop = int(CLIP_SECONDS * SAMPLE_RATE), int(HOP_SECONDS * SAMPLE_RATE)
  if loop:
    return [int(rng.integers(0, n_samples))]  # any phase of the loop
  count = (n_samples - clip) // hop + 1
  slack = n_samples - clip - (count - 1) * hop
  first = int(rng.integers(0, slack + 1))
  return [first + k * hop for k in range(count)]


def _split(counts: Mapping[str, int], rng) -> set[str]:
  """Recording ids sent to ``evaluate`` (see the module docstring)."""
  ids = sorted(counts)
  total = sum(counts.values())
  # Training keeps at least as many recordings as evaluation: a class learnt
  # from one recording says little.
  subsets = [set(c) for r in range(1, len(ids) // 2 + 1) for c in itertools.combinations(ids, r)]
  dist = [abs(sum(counts[i] for i in s) / total - EVALUATE_SHARE) for s in subsets]
  ok = [s for s, d in zip(subsets, dist) if d <= SHARE_TOLERANCE]
  if not ok:
    ok = [s for s, d in zip(subsets, dist) if d == min(dist)]
  return ok[int(rng.integers(0, len(ok)))]


def _config(sources: Sequence[Source], packages: Mapping[str, Package], seed: int) -> dict:
  return {
      "builder_version": BUILDER_VERSION, "seed": seed, "sample_rate": SAMPLE_RATE,
      "band_rate": BAND_RATE, "clip_seconds": CLIP_SECONDS, "hop_seconds": HOP_SECONDS,
      "max_clips_per_recording": MAX_CLIPS_PER_RECORDING, "target_dbfs": TARGET_DBFS,
      "gain_db": GAIN_DB, "evaluate_share": EVALUATE_SHARE, "crossfade": CROSSFADE_SECONDS,
      "packages": {n: dataclasses.asdict(packages[n]) for n in sorted({s.package
                                                                       for s in sources})},
      "sources": [dataclasses.asdict(s) for s in sources],
  }


def _write_text(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _write_wav(path: Path, mono: np.ndarray) -> None:
  import soundfile as sf  # pylint: disable=g-import-not-at-top

  tmp = path.with_name(path.name + ".tmp.wav")
  stereo = np.repeat(mono.astype(np.float32)[:, None], 2, axis=1)  # dual mono
  sf.write(str(tmp), stereo, SAMPLE_RATE, subtype="PCM_16", format="WAV")
  os.replace(tmp, path)


_NEEDED = ("meta.csv", "evaluation_setup/fold1_train.txt", "evaluation_setup/fold1_evaluate.txt",
           "evaluation_setup/fold1_test.txt")


def _prepare_root(root: Path, want: dict, overwrite: bool) -> bool:
  """Returns True if ``root`` already holds this exact set (nothing to do)."""
  return _generated.claim(root, want, manifest=MANIFEST, marker=_IN_PROGRESS,
                          what="debian-scenes set", needed=_NEEDED,
                          dirs=("audio", "evaluation_setup", "licenses"),
                          remedy=None if overwrite else "pass --overwrite or another --out")


def assemble(out, sources: Sequence[Source], roots: Mapping[str, Path], *,
             packages: Mapping[str, Package] | None = None, seed: int = 0,
             overwrite: bool = False, log: Callable[[str], None] | None = None,
             debs: Mapping[str, dict] | None = None) -> Path:
  """Cuts the clips of ``sources`` from extracted package trees into ``out``.

  The part of the build that needs no network and no Debian tools: tests run
  it on fake package trees.

  Args:
    out: Output root (created).
    sources: The reviewed list (:data:`SOURCES` for the real set).
    roots: ``{package name: the root its files were extracted under}``.
    packages: ``{package name: Package}`` for the manifest (default :data:`PACKAGES`).
    seed: Master seed of clip offsets, gains and the split.
    overwrite: Replace a set built with other settings.
    log: Progress messages (None: quiet).
    debs: What the packages were read from (file names, sha256), recorded in the
      manifest as is.

  Returns:
    ``out`` as a Path, ready for :func:`experiments.data.dcase.load`.
  """
  log = log or (lambda _: None)
  packages = PACKAGES if packages is None else packages
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  bad = [s.name for s in sources if s.package in FORBIDDEN_PACKAGES]
  if bad:
    raise ValueError(f"sources from packages kept aside for evaluation: {bad}")
  unknown = sorted({s.package for s in sources} - set(packages))
  if unknown:
    raise ValueError(f"sources name packages without a Package entry: {unknown}")
  no_root = sorted({s.package for s in sources} - set(roots))
  if no_root:
    raise ValueError(f"no extracted tree given for packages {no_root}")
  classes = sorted({s.cls for s in sources},
                   key=lambda c: (CLASSES.index(c) if c in CLASSES else len(CLASSES), c))
  by_class: dict[str, dict[str, list[Source]]] = collections.defaultdict(dict)
  for s in sources:
    other = [c for c in classes if c != s.cls and s.recording in by_class[c]]
    if other:
      raise ValueError(f"recording id {s.recording!r} is used in classes {s.cls!r} and "
                       f"{other[0]!r}")
    by_class[s.cls].setdefault(s.recording, []).append(s)
  few = [c for c in classes if len(by_class[c]) < 2]
  if few:
    raise ValueError(f"classes {few} have fewer than 2 recordings: no split by recording "
                     "is possible")

  root = Path(out).expanduser()
  want = json.loads(json.dumps(_config(sources, packages, seed)))  # as read back (lists)
  if _prepare_root(root, want, overwrite):
    log(f"{root}: already complete")
    return root
  (root / "audio").mkdir(parents=True, exist_ok=True)
  (root / "evaluation_setup").mkdir(exist_ok=True)
  _write_text(root / _IN_PROGRESS, json.dumps(want, sort_keys=True))

  clip_len = int(CLIP_SECONDS * SAMPLE_RATE)
  cache: dict = {}
  rows, source_info = [], []
  split_of: dict[str, str] = {}
  for cls in classes:
    recordings = by_class[cls]
    plans: dict[str, list[tuple[Source, int, int]]] = {}
    decoded: dict[Source, np.ndarray] = {}
    for rid in sorted(recordings):
      rng = np.random.default_rng([seed, _key(cls, rid)])
      windows = []
      for s in recordings[rid]:
        raw = read_source(roots[s.package], s, cache)
        digest = hashlib.sha256(raw).hexdigest()
        if s.sha256 is not None and digest != s.sha256:
          raise ValueError(f"{s.name}: sha256 {digest} differs from the reviewed "
                           f"{s.sha256} (another package version?)")
        y, stats = _decode(raw, s)
        decoded[s] = y
        source_info.append({**dataclasses.asdict(s), "sha256": digest, **stats})
        windows += [(s, off) for off in _windows(len(y), s.loop, rng)]
      if len(windows) > MAX_CLIPS_PER_RECORDING:
        keep = np.sort(rng.choice(len(windows), MAX_CLIPS_PER_RECORDING, replace=False))
        windows = [windows[i] for i in keep]
      gains = rng.uniform(-GAIN_DB, GAIN_DB, size=len(windows))
      plans[rid] = [(s, off, g) for (s, off), g in zip(windows, gains)]
    evaluate = _split({r: len(p) for r, p in plans.items()},
                      np.random.default_rng([seed, _key(cls, "split")]))
    for rid, plan in sorted(plans.items()):
      split_of[rid] = "evaluate" if rid in evaluate else "train"
      for k, (s, off, gain_db) in enumerate(plan):
        rel = f"audio/{cls}-{rid}-{k:02d}-a.wav"
        rows.append({"path": rel, "cls": cls, "recording": rid, "split": split_of[rid],
                     "source": s.name, "offset_seconds": round(off / SAMPLE_RATE, 6),
                     "gain_db": round(float(gain_db), 4)})
        if (root / rel).exists():  # written atomically before: resume past it
          continue
        y = decoded[s]
        clip = (_tile(y, off + clip_len) if s.loop else y)[off: off + clip_len]
        clip = clip * 10 ** (gain_db / 20)
        peak = np.max(np.abs(clip))
        if peak > 0.98:  # 16-bit output stays unclipped
          clip *= 0.98 / peak
        _write_wav(root / rel, clip)
    log(f"{cls}: {len(plans)} recordings, "
        f"{sum(len(p) for p in plans.values())} clips (evaluate: {sorted(evaluate)})")

  meta = ["filename\tscene_label\tidentifier\tsource_label"]
  meta += [f"{r['path']}\t{r['cls']}\t{r['recording']}\ta" for r in rows]
  _write_text(root / "meta.csv", "\n".join(meta) + "\n")
  setup = root / "evaluation_setup"
  for split in ("train", "evaluate"):
    lines = [f"{r['path']}\t{r['cls']}" for r in rows if r["split"] == split]
    _write_text(setup / f"fold1_{split}.txt", "\n".join(lines) + "\n")
  _write_text(setup / "fold1_test.txt",
              "\n".join(r["path"] for r in rows if r["split"] == "evaluate") + "\n")
  licences = root / "licenses"
  licences.mkdir(exist_ok=True)
  for name in sorted({s.package for s in sources}):
    copyright_file = Path(roots[name]) / "usr/share/doc" / name / "copyright"
    if copyright_file.is_file():
      shutil.copyfile(copyright_file, licences / f"{name}.copyright")

  counts = {split: {c: sum(1 for r in rows if r["cls"] == c and r["split"] == split)
                    for c in classes} for split in ("train", "evaluate")}
  recordings = {split: {c: sorted(r for r in by_class[c] if split_of[r] == split)
                        for c in classes} for split in ("train", "evaluate")}
  files = {r["path"]: (root / r["path"]).stat().st_size for r in rows}
  files.update({f"licenses/{p.name}": p.stat().st_size for p in sorted(licences.iterdir())})
  manifest = {"config": want, "classes": classes, "debs": dict(debs or {}), "clip_counts": counts,
              "recordings": recordings, "sources": source_info,
              "clips": rows, "total_clips": len(rows),
              "total_seconds": len(rows) * CLIP_SECONDS,
              "files": files}
  # The manifest goes last: its presence means "complete".
  _write_text(root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
  (root / _IN_PROGRESS).unlink(missing_ok=True)
  return root


def build(out=None, *, seed: int = 0, packages_dir=None, overwrite: bool = False,
          download: bool = True, log: Callable[[str], None] = print) -> Path:
  """Fetches the packages, unpacks the listed files and assembles the set.

  Args:
    out: Output root (default :func:`default_root`).
    seed: Master seed.
    packages_dir: Where ``.deb`` files are kept (default :func:`default_packages_dir`);
      extracted files are cached under ``extracted/`` there.
    overwrite: Replace a set built with other settings.
    download: Allow ``apt-get download`` for missing packages.
    log: Progress messages.

  Returns:
    The data root.
  """
  out = Path(out).expanduser() if out is not None else default_root()
  packages_dir = Path(packages_dir).expanduser() if packages_dir else default_packages_dir()
  needed = [PACKAGES[n] for n in sorted({s.package for s in SOURCES})]
  debs = fetch_packages(needed, packages_dir, download=download, log=log)
  roots = {}
  for p in needed:
    paths = sorted({s.path for s in SOURCES if s.package == p.name}
                   | {f"usr/share/doc/{p.name}/copyright"})
    log(f"unpacking {len(paths)} file(s) of {debs[p.name].name}")
    roots[p.name] = _extract(debs[p.name], paths,
                             packages_dir / "extracted" / f"{p.name}_{p.version}")
  provenance = {n: {"file": d.name, "sha256": _sha256_file(d)} for n, d in debs.items()}
  return assemble(out, SOURCES, roots, packages=PACKAGES, seed=seed, overwrite=overwrite,
                  log=log, debs=provenance)


def _sha256_file(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


# ---------------------------------------------------------------------------
# Command line.


def _seed(value: str) -> int:
  try:
    seed = int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value!r}") from None
  if seed < 0:
    raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value!r}")
  return seed


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m experiments.data.debian_scenes",
      description="Build the real-recording scene set (DCASE2018 layout) from Debian game "
      "data packages.",
      epilog="Example: python -m experiments.data.debian_scenes --out /tmp/debian-scenes")
  p.add_argument("--out", type=Path, default=None,
                 help="output root (default: $HSPG_DATA_DIR/debian-scenes, or "
                 "~/.cache/hspg-jax/data/debian-scenes)")
  p.add_argument("--seed", type=_seed, default=0,
                 help="seed of clip offsets, gains and the train/evaluate split (default 0)")
  p.add_argument("--packages-dir", type=Path, default=None,
                 help="where the .deb files are kept and looked for (default: "
                 "$HSPG_DATA_DIR/debian-packages)")
  p.add_argument("--no-download", action="store_true",
                 help="use only the .deb files already in --packages-dir (offline)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a set in --out that was built with other settings")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  out = args.out.expanduser() if args.out else default_root()
  packages_dir = (args.packages_dir.expanduser() if args.packages_dir
                  else default_packages_dir())
  if out.exists() and not out.is_dir():
    parser.error(f"--out {out}: exists and is not a directory")
  if packages_dir.exists() and not packages_dir.is_dir():
    parser.error(f"--packages-dir {packages_dir}: exists and is not a directory")
  if args.no_download and not packages_dir.is_dir():
    parser.error(f"--packages-dir {packages_dir}: no such directory (needed with --no-download)")
  tools = ["dpkg-deb"] + ([] if args.no_download else ["apt-get"])
  missing = [t for t in tools if shutil.which(t) is None]
  if missing:
    parser.error(f"{', '.join(missing)} not found: this tool needs Debian's package tools")
  start = time.perf_counter()
  try:
    root = build(out, seed=args.seed, packages_dir=packages_dir, overwrite=args.overwrite,
                 download=not args.no_download)
  except (OSError, RuntimeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  manifest = json.loads((root / MANIFEST).read_text())
  counts = manifest["clip_counts"]
  size = sum(manifest["files"].values())
  print(f"{root}: {manifest['total_clips']} clips of {CLIP_SECONDS:g} s "
        f"({manifest['total_seconds'] / 60:.1f} min, {size / 1e6:.0f} MB) "
        f"in {time.perf_counter() - start:.0f} s")
  for cls in manifest["classes"]:
    print(f"  {cls:10s} train {counts['train'][cls]:3d} "
          f"({len(manifest['recordings']['train'][cls])} rec)  evaluate "
          f"{counts['evaluate'][cls]:3d} ({len(manifest['recordings']['evaluate'][cls])} rec)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
