"""The real-recording set builder (experiments/data/debian_scenes.py), offline.

The download and unpacking steps are replaced by fake package trees written
here (plain WAV/OGG files, a .pk3 zip, and an OpenClonk group built by an
independent writer of that format); the assembly runs for real on them.
"""

import hashlib
import io
import json
import shutil
import struct
import subprocess
import zipfile
import zlib

import numpy as np
import pytest
import soundfile as sf

from experiments.data import dcase
from experiments.data import debian_scenes as ds

SR_OUT = 48000


def _noise(seconds, sr, seed, channels=1):
  """Coloured noise with a recording-specific tone: each fake recording differs."""
  rng = np.random.default_rng(seed)
  n = int(round(seconds * sr))
  y = np.cumsum(rng.standard_normal((n, channels)), axis=0)
  y -= np.linspace(y[0], y[-1], n)  # no drift
  y = 0.3 * y / np.max(np.abs(y)) + 0.1 * np.sin(2 * np.pi * (300 + 97 * seed)
                                               * np.arange(n) / sr)[:, None]
  return y.astype(np.float32)


def _encode(seconds, sr, seed, channels=1, fmt="WAV"):
  buf = io.BytesIO()
  sf.write(buf, _noise(seconds, sr, seed, channels), sr, format=fmt,
           subtype="VORBIS" if fmt == "OGG" else "PCM_16")
  return buf.getvalue()


def _c4group(files):
  """An OpenClonk group file, written from the format description (flat, one level)."""

  def scramble(b):
    b = bytearray(x ^ 237 for x in b)
    for i in range(0, len(b) - 2, 3):
      b[i], b[i + 2] = b[i + 2], b[i]
    return bytes(b)

  header = b"RedWolf Design GrpFolder".ljust(28, b"\0") + struct.pack("<iii", 1, 2, len(files))
  header = scramble(header.ljust(204, b"\0"))
  entries, blobs, offset = b"", b"", 0
  for name, data in files.items():
    entry = name.encode().ljust(260, b"\0") + struct.pack("<iiiii", 0, 0, len(data), 0, offset)
    entries += entry.ljust(316, b"\0")
    blobs += data
    offset += len(data)
  gz = zlib.compressobj(9, zlib.DEFLATED, 31)
  packed = gz.compress(header + entries + blobs) + gz.flush()
  return b"\x1e\x8c" + packed[2:]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
  """Fake extracted packages ``pkg-a`` and ``pkg-b`` and a source list over them."""
  base = tmp_path_factory.mktemp("debs")
  a, b = base / "pkg-a", base / "pkg-b"
  files = {}

  def put(root, rel, data):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    files[(root.name, rel)] = data

  put(a, "usr/share/games/a/rain1.wav", _encode(21.0, 44100, 1, channels=2))
  put(a, "usr/share/games/a/rain2.wav", _encode(12.0, 22050, 2))
  put(a, "usr/share/games/a/rainloop.wav", _encode(6.0, 48000, 3))
  put(a, "usr/share/games/a/wind1.ogg", _encode(16.0, 44100, 4, fmt="OGG"))
  put(a, "usr/share/games/a/wind2.wav", _encode(10.5, 32000, 5))
  zbuf = io.BytesIO()
  with zipfile.ZipFile(zbuf, "w") as z:
    z.writestr("sound/wind3.wav", _encode(13.0, 44100, 6))
  put(a, "usr/share/games/a/pack.pk3", zbuf.getvalue())
  put(a, "usr/share/doc/pkg-a/copyright", b"Files: *\nLicense: CC0-1.0\n")
  members = {"Birds.ogg": _encode(11.0, 44100, 7, channels=2, fmt="OGG"),
             "Other.wav": _encode(1.0, 44100, 8)}
  put(b, "usr/share/games/b/Sound.ocg", _c4group(members))
  put(b, "usr/share/games/b/birds2a.wav", _encode(12.0, 48000, 9))
  put(b, "usr/share/games/b/birds2b.wav", _encode(11.0, 48000, 10))
  put(b, "usr/share/games/b/birds3.wav", _encode(14.0, 96000, 11))
  put(b, "usr/share/games/b/short.wav", _encode(8.0, 48000, 12))

  def src(pkg, rel, cls, rec, member=None, **kw):
    if member is None:
      data = files[(pkg, rel)]
    elif rel.endswith(".pk3"):
      data = zipfile.ZipFile(io.BytesIO(files[(pkg, rel)])).read(member)
    else:
      data = members[member]
    return ds.Source(pkg, rel, member, cls, rec, hashlib.sha256(data).hexdigest(), "test", **kw)

  sources = (
      src("pkg-a", "usr/share/games/a/rain1.wav", "rain", "r1"),
      src("pkg-a", "usr/share/games/a/rain2.wav", "rain", "r2"),
      src("pkg-a", "usr/share/games/a/rainloop.wav", "rain", "r3", loop=True, trim=(0.5, 0.0)),
      src("pkg-a", "usr/share/games/a/wind1.ogg", "wind", "w1"),
      src("pkg-a", "usr/share/games/a/wind2.wav", "wind", "w2"),
      src("pkg-a", "usr/share/games/a/pack.pk3", "wind", "w3", member="sound/wind3.wav"),
      src("pkg-b", "usr/share/games/b/Sound.ocg", "birds", "b1", member="Birds.ogg"),
      src("pkg-b", "usr/share/games/b/birds2a.wav", "birds", "b2"),
      src("pkg-b", "usr/share/games/b/birds2b.wav", "birds", "b2"),
      src("pkg-b", "usr/share/games/b/birds3.wav", "birds", "b3"),
  )
  packages = {"pkg-a": ds.Package("pkg-a", "1.0-1", "CC0-1.0"),
              "pkg-b": ds.Package("pkg-b", "2:0.5-3", "GPL-2+")}
  return {"roots": {"pkg-a": a, "pkg-b": b}, "sources": sources, "packages": packages,
          "base": base}


def _assemble(fake, out, seed=0, sources=None, **kw):
  return ds.assemble(out, fake["sources"] if sources is None else sources, fake["roots"],
                     packages=fake["packages"], seed=seed, **kw)


@pytest.fixture(scope="module")
def built(fake, tmp_path_factory):
  return _assemble(fake, tmp_path_factory.mktemp("built") / "set")


def _tree(root):
  return {p.relative_to(root).as_posix(): p.read_bytes()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_loads_and_is_split_by_recording(built, fake):
  data = dcase.load(built, progress=False)
  assert data.layout == "dcase2018"
  assert set(data.classes) == {"rain", "wind", "birds"}
  ids = {split: {c.identifier for c in data.splits[split]} for split in ("train", "evaluate")}
  assert not ids["train"] & ids["evaluate"]
  assert [c.path for c in data.test_list] == [c.path for c in data.splits["evaluate"]]
  for cls in data.classes:  # every class heard on both sides
    for split in ("train", "evaluate"):
      assert any(c.label == cls for c in data.splits[split]), (cls, split)
  # The identifier is the source recording of the reviewed list.
  rec_class = {s.recording: s.cls for s in fake["sources"]}
  assert {c.identifier: c.label for c in data.clips.values()}.items() <= rec_class.items()
  # Training never has fewer recordings of a class than evaluation.
  for cls in data.classes:
    n = {split: len({c.identifier for c in data.splits[split] if c.label == cls})
         for split in ("train", "evaluate")}
    assert n["train"] >= n["evaluate"] >= 1


def test_clips_are_10s_dual_mono_48k_pcm16(built):
  files = sorted((built / "audio").glob("*.wav"))
  assert files
  for f in files:
    info = sf.info(str(f))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (
        SR_OUT, 2, 10 * SR_OUT, "PCM_16")
    y, _ = sf.read(str(f), dtype="int16")
    assert np.array_equal(y[:, 0], y[:, 1])  # the documented dual mono
    rms_db = 10 * np.log10(np.mean((y[:, 0] / 32768.0) ** 2))
    assert -26 - 6 - 3 < rms_db < -26 + 6 + 3  # -26 dBFS per recording, +-6 dB per clip


def test_band_limit_is_common(built):
  """Nothing above the 11.025 kHz Nyquist of the common rate, whatever the source rate."""
  for f in sorted((built / "audio").glob("*.wav")):
    y, sr = sf.read(str(f))
    spec = np.abs(np.fft.rfft(y[:, 0])) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / sr)
    assert spec[freqs > 11500].sum() < 1e-4 * spec.sum(), f.name


def test_clip_plan_follows_sources(built, fake):
  manifest = json.loads((built / ds.MANIFEST).read_text())
  clips = manifest["clips"]
  per_source = {}
  for c in clips:
    per_source.setdefault(c["source"], []).append(c["offset_seconds"])
  by_name = {s.name: s for s in fake["sources"]}
  stats = {s["package"] + ":" + s["path"] + (f":{s['member']}" if s["member"] else ""): s
           for s in manifest["sources"]}
  for name, offsets in per_source.items():
    src, seconds = by_name[name], stats[name]["seconds"]
    if src.loop:
      assert len(offsets) == 1 and 0 <= offsets[0] < seconds
    else:  # 10-s windows 5 s apart inside the source
      assert len(offsets) == int((seconds - 10) // 5) + 1
      assert all(0 <= o <= seconds - 10 + 1e-6 for o in offsets)
      assert np.allclose(np.diff(offsets), 5.0)
  assert manifest["clip_counts"]["train"]["rain"] + manifest["clip_counts"]["evaluate"][
      "rain"] == sum(1 for c in clips if c["cls"] == "rain")
  assert sorted(p.name for p in (built / "licenses").iterdir()) == ["pkg-a.copyright"]
  assert manifest["config"]["packages"]["pkg-b"]["version"] == "2:0.5-3"
  assert {s["sha256"] for s in manifest["sources"]} == {s.sha256 for s in fake["sources"]}


def test_same_seed_same_bytes_other_seed_differs(built, fake, tmp_path):
  again = _assemble(fake, tmp_path / "again")
  assert _tree(again) == _tree(built)
  other = _assemble(fake, tmp_path / "other", seed=1)
  m0 = json.loads((built / ds.MANIFEST).read_text())["clips"]
  m1 = json.loads((other / ds.MANIFEST).read_text())["clips"]
  assert [(c["offset_seconds"], c["split"]) for c in m0] != [
      (c["offset_seconds"], c["split"]) for c in m1]
  assert _tree(other)["meta.csv"] == _tree(built)["meta.csv"]  # same clips, same names
  assert any(_tree(other)[k] != v for k, v in _tree(built).items() if k.startswith("audio/"))


def test_interrupted_build_is_detected_and_redone(built, fake, tmp_path):
  out = tmp_path / "set"
  shutil.copytree(built, out)
  reference = _tree(built)
  stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
  _assemble(fake, out)  # complete already: nothing is rewritten
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
  # An interruption: manifest not yet written, marker present, a clip missing,
  # a temporary file left behind.
  want = json.loads((out / ds.MANIFEST).read_text())["config"]
  (out / ds.MANIFEST).unlink()
  (out / ".debian-scenes-in-progress.json").write_text(json.dumps(want, sort_keys=True))
  first = sorted((out / "audio").glob("*.wav"))[0]
  first.rename(first.with_name(first.name + ".tmp.wav"))
  _assemble(fake, out)
  after = _tree(out)
  after = {k: v for k, v in after.items() if not k.endswith(".tmp.wav")}
  assert after == reference
  assert not (out / ".debian-scenes-in-progress.json").exists()
  # A complete-looking set with a truncated clip is rebuilt too.
  clip = sorted((out / "audio").glob("*.wav"))[1]
  clip.write_bytes(clip.read_bytes()[:1000])
  _assemble(fake, out)
  assert {k: v for k, v in _tree(out).items() if not k.endswith(".tmp.wav")} == reference


def test_refuses_foreign_or_different_sets(built, fake, tmp_path):
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not a debian-scenes set"):
    _assemble(fake, foreign)
  out = tmp_path / "set"
  shutil.copytree(built, out)
  with pytest.raises(FileExistsError, match="--overwrite"):
    _assemble(fake, out, seed=3)
  _assemble(fake, out, seed=3, overwrite=True)
  assert json.loads((out / ds.MANIFEST).read_text())["config"]["seed"] == 3


def test_bad_sources_are_named(fake, tmp_path):
  base = list(fake["sources"])
  short = ds.Source("pkg-b", "usr/share/games/b/short.wav", None, "birds", "b4", None, "test")
  with pytest.raises(ValueError, match=r"short\.wav: 8\.00 s is shorter than one 10-s clip"):
    _assemble(fake, tmp_path / "a", sources=base + [short])
  tampered = base[:1] + [ds.Source(*[getattr(base[1], f) for f in ("package", "path", "member",
                                                                  "cls", "recording")],
                                   "0" * 64, "test")] + base[2:]
  with pytest.raises(ValueError, match=r"rain2\.wav: sha256 .* differs from the reviewed"):
    _assemble(fake, tmp_path / "b", sources=tampered)
  lonely = [s for s in base if s.cls != "wind"] + [base[3]]
  with pytest.raises(ValueError, match=r"\['wind'\] have fewer than 2 recordings"):
    _assemble(fake, tmp_path / "c", sources=lonely)
  clash = base + [ds.Source("pkg-a", "usr/share/games/a/wind2.wav", None, "birds", "r1", None,
                            "test")]
  with pytest.raises(ValueError, match="recording id 'r1' is used in classes"):
    _assemble(fake, tmp_path / "d", sources=clash)
  missing = base + [ds.Source("pkg-b", "usr/share/games/b/Sound.ocg", "Nope.ogg", "birds", "b5",
                              None, "test")]
  with pytest.raises(FileNotFoundError, match="no member 'Nope.ogg'"):
    _assemble(fake, tmp_path / "e", sources=missing)
  forbidden = base + [ds.Source("0ad-data", "x.ogg", None, "birds", "b6", None, "test")]
  with pytest.raises(ValueError, match="kept aside"):
    _assemble(fake, tmp_path / "f", sources=forbidden)
  with pytest.raises(ValueError, match="seed must be a non-negative integer"):
    _assemble(fake, tmp_path / "g", seed=-1)


def test_reviewed_list():
  """The real list: >= 6 classes, >= 3 recordings each, pinned and well-formed."""
  assert set(ds.CLASSES) == {s.cls for s in ds.SOURCES}
  for cls in ds.CLASSES:
    assert len({s.recording for s in ds.SOURCES if s.cls == cls}) >= 3, cls
  assert not {s.package for s in ds.SOURCES} & ds.FORBIDDEN_PACKAGES
  assert not any("0ad" in s.path.lower() or "megaglest" in s.path.lower() for s in ds.SOURCES)
  assert {s.package for s in ds.SOURCES} == set(ds.PACKAGES)
  assert len({(s.package, s.path, s.member) for s in ds.SOURCES}) == len(ds.SOURCES)
  owner = {}
  for s in ds.SOURCES:
    assert len(s.sha256) == 64 and int(s.sha256, 16) >= 0
    assert owner.setdefault(s.recording, s.cls) == s.cls, s.recording
    assert s.licence


def test_fetch_packages_downloads_missing_with_pinned_versions(tmp_path):
  calls = []
  versions = {}

  def runner(cmd, **kw):
    calls.append((cmd, kw.get("cwd")))
    if cmd[:2] == ["apt-get", "download"]:
      for spec in cmd[2:]:
        name, version = spec.split("=")
        deb = kw["cwd"] / f"{name}_{version.replace(':', '%3a')}_all.deb"
        deb.write_bytes(b"deb")
        versions[deb.name] = version
      return subprocess.CompletedProcess(cmd, 0, "", "")
    assert cmd[:2] == ["dpkg-deb", "-f"] and cmd[3] == "Version"
    return subprocess.CompletedProcess(cmd, 0, versions[cmd[2].split("/")[-1]] + "\n", "")

  have = tmp_path / "p_1.0_all.deb"
  have.write_bytes(b"deb")
  versions[have.name] = "1.0"
  pkgs = [ds.Package("p", "1.0", "x"), ds.Package("q", "1:2.0-1", "y")]
  got = ds.fetch_packages(pkgs, tmp_path, runner=runner, log=lambda _: None)
  assert got == {"p": have, "q": tmp_path / "q_1%3a2.0-1_all.deb"}
  downloads = [c for c, _ in calls if c[0] == "apt-get"]
  assert downloads == [["apt-get", "download", "q=1:2.0-1"]]
  with pytest.raises(FileNotFoundError, match=r"no \.deb for r=3"):
    ds.fetch_packages([ds.Package("r", "3", "z")], tmp_path, download=False, runner=runner)
  with pytest.raises(ValueError, match="kept aside"):
    ds.fetch_packages([ds.Package("megaglest-data", "1", "z")], tmp_path, runner=runner)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_extract_takes_only_listed_files(tmp_path):
  tree = tmp_path / "tree"
  (tree / "DEBIAN").mkdir(parents=True)
  (tree / "DEBIAN/control").write_text("Package: fake-data\nVersion: 1.0\nArchitecture: all\n"
                                       "Maintainer: t <t@example.org>\nDescription: t\n")
  for rel in ("usr/share/a/one.wav", "usr/share/a/two.wav", "usr/share/doc/fake-data/copyright"):
    (tree / rel).parent.mkdir(parents=True, exist_ok=True)
    (tree / rel).write_bytes(rel.encode())
  deb = tmp_path / "fake-data_1.0_all.deb"
  subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True,
                 capture_output=True)
  dest = ds._extract(deb, ["usr/share/a/two.wav", "usr/share/doc/fake-data/copyright"],
                     tmp_path / "x")
  assert (dest / "usr/share/a/two.wav").read_bytes() == b"usr/share/a/two.wav"
  assert not (dest / "usr/share/a/one.wav").exists()
  with pytest.raises(FileNotFoundError, match="not in the package"):
    ds._extract(deb, ["usr/share/a/three.wav"], tmp_path / "y")


def test_cli_rejects_bad_flags(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    ds.main(["--seed", "-3"])
  assert e.value.code == 2
  assert "--seed: must be a non-negative integer, got '-3'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    ds.main(["--seed", "abc"])
  assert "non-negative integer, got 'abc'" in capsys.readouterr().err
  a_file = tmp_path / "f"
  a_file.write_text("x")
  with pytest.raises(SystemExit) as e:
    ds.main(["--out", str(a_file)])
  assert e.value.code == 2 and "--out" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    ds.main(["--packages-dir", str(tmp_path / "none"), "--no-download"])
  assert "no such directory" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    ds.main(["--frobnicate"])
  assert e.value.code == 2
  with pytest.raises(SystemExit) as e:
    ds.main(["--help"])
  assert e.value.code == 0 and "--packages-dir" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_cli_offline_without_debs_fails_clearly(tmp_path, capsys):
  (tmp_path / "debs").mkdir()
  code = ds.main(["--out", str(tmp_path / "out"), "--packages-dir", str(tmp_path / "debs"),
                  "--no-download"])
  err = capsys.readouterr().err
  assert code == 1 and err.startswith("error: ") and "no .deb for" in err
  assert len(err.strip().splitlines()) == 1
