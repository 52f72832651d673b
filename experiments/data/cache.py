"""A resumable, parallel on-disk cache of spectrogram features.

Layout::

  cache_dir/<config fingerprint[:16]>-c2/config.json     the FeatureConfig, for humans
  cache_dir/<config fingerprint[:16]>-c2/<source key>.npy one array per audio file

Keys. The directory is the hash of every feature parameter (plus the code and
librosa versions, see :meth:`FeatureConfig.fingerprint`) and the entry format,
so a changed parameter lands in a different directory and can never pick up
stale features. The entry name hashes the source file's resolved path, size and
modification time (``key="stat"``, the default): one ``stat`` per file, so
checking 10,000 cached clips costs milliseconds, whereas a content hash reads
every byte of audio (tens of GB for DCASE) on every run, about as much I/O as
decoding it. Editing, replacing or re-copying a file changes size or mtime and so
the key. Its blind spot is an in-place rewrite that keeps both size and mtime
(rare; tools bump mtime); ``key="content"`` (BLAKE2 of the bytes) covers that,
and also survives moving the data root, at the price of reading every file.

Integrity. An entry is a standard ``.npy`` file followed by a 12-byte trailer
holding the CRC-32 of everything before it (``np.load`` still reads entries; it
ignores trailing bytes). Every read through this module checks it
(:func:`read_entry`; ~0.15 ms per 10 s clip, about the cost of the read itself),
so damage from outside (a disk fault, a same-size overwrite, a bad copy of the
cache) is never served as features: readers that know the source file
recompute the entry, others raise :class:`CorruptEntryError`. At extraction time
only the header and size are checked (reading every entry on every run would
cost as much I/O as the features themselves); ``extract(verify=True)`` reads
them all.

Crash safety. Each entry is written to a temporary file in the same directory,
flushed and fsynced, then ``os.replace``-d into place (atomic on POSIX), so an
entry either exists complete or not at all. An interrupted extraction leaves
finished entries behind and the next call computes only the rest; stray
temporary files of dead processes are removed.

Parallelism. Extraction runs in :class:`experiments.data.workers.WorkerPool`
processes: fresh interpreters that need no ``if __name__ == "__main__":`` guard
in the calling script and die with the process that started them, even on
SIGKILL (see that module for how and why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import struct
import time
import uuid
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.data import features as features_lib
from experiments.data import workers as workers_lib

__all__ = [
    "CorruptEntryError",
    "ExtractionError",
    "ExtractionResult",
    "FeatureCache",
    "default_cache_dir",
    "read_entry",
    "source_key",
    "write_entry",
]

_TMP_MARK = ".tmp-"
# Below this much estimated work per worker, starting one costs more than it saves
# (a pool starts in about one librosa import: 1-2 s).
_MIN_WORK_PER_WORKER_S = 3.0
# Entry format: 2 = .npy + CRC-32 trailer. Part of the directory name, so entries
# of another format are never read.
_ENTRY_FORMAT = 2
_TRAILER = struct.Struct("<8sI")
_TRAILER_MAGIC = b"HSPG-CRC"


def default_cache_dir() -> Path:
  """``$HSPG_CACHE_DIR``, else ``~/.cache/hspg-jax/features``."""
  env = os.environ.get("HSPG_CACHE_DIR")
  return Path(env).expanduser() if env else Path.home() / ".cache" / "hspg-jax" / "features"


def source_key(path, key: str = "stat") -> str:
  """Cache entry name of an audio file (see the module docstring)."""
  path = Path(path).resolve()
  if key == "stat":
    st = path.stat()
    blob = f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return hashlib.sha256(blob).hexdigest()[:32]
  if key == "content":
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()
  raise ValueError(f"key must be 'stat' or 'content', got {key!r}")


# -- entries: .npy + CRC-32 trailer ---------------------------------------------


class CorruptEntryError(ValueError):
  """A cache entry failed its integrity check (it is never returned as features)."""

  def __init__(self, entry, reason: str):
    self.entry = Path(entry)
    self.reason = reason
    super().__init__(f"{entry}: corrupt feature cache entry ({reason}); it is recomputed on "
                     "the next extraction, or delete it")


def _atomic_write(path: Path, chunks: Sequence[bytes]) -> None:
  tmp = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    with open(tmp, "wb") as f:
      for chunk in chunks:
        f.write(chunk)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_entry(path, array: np.ndarray) -> None:
  """Writes ``array`` as an entry (``.npy`` + CRC trailer), atomically."""
  buf = io.BytesIO()
  np.save(buf, np.asarray(array), allow_pickle=False)
  body = buf.getbuffer()
  _atomic_write(Path(path), [body, _TRAILER.pack(_TRAILER_MAGIC, zlib.crc32(body))])


def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
  """(shape, fortran order, dtype, data offset) of an ``.npy`` file's first bytes."""
  fmt = np.lib.format
  f = io.BytesIO(head)
  version = fmt.read_magic(f)
  read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
  shape, fortran, dtype = read(f)
  return shape, fortran, np.dtype(dtype), f.tell()


def _header_end(head: bytes) -> int:
  """Offset of the data in an ``.npy`` file, from its first 12 bytes."""
  if len(head) < 12 or not head.startswith(b"\x93NUMPY"):
    raise ValueError("not an .npy file")
  if head[6] == 1:
    return struct.unpack("<H", head[8:10])[0] + 10
  return struct.unpack("<I", head[8:12])[0] + 12


def read_entry(path) -> np.ndarray:
  """The array of a cache entry, after checking its CRC-32 trailer.

  Raises:
    CorruptEntryError: the file is truncated, lacks the trailer, fails the
      checksum or does not hold a plain numeric array.
  """
  path = Path(path)
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    buf = bytearray(size)  # writable, so the array is too
    got = f.readinto(buf)
  if got != size or size < _TRAILER.size:
    raise CorruptEntryError(path, "truncated")
  magic, crc = _TRAILER.unpack_from(buf, size - _TRAILER.size)
  body = memoryview(buf)[: size - _TRAILER.size]
  if magic != _TRAILER_MAGIC:
    raise CorruptEntryError(path, "no checksum trailer")
  if zlib.crc32(body) != crc:
    raise CorruptEntryError(path, "checksum mismatch: the file changed after it was written")
  try:
    end = _header_end(bytes(body[:12]))
    shape, fortran, dtype, offset = _npy_header(bytes(body[:min(end, len(body))]))
  except (ValueError, SyntaxError, EOFError) as e:
    raise CorruptEntryError(path, f"unreadable header: {e}") from e
  count = int(np.prod(shape))
  if dtype.hasobject or offset + count * dtype.itemsize != len(body):
    raise CorruptEntryError(path, "size does not match the header")
  array = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
  return array.reshape(shape, order="F" if fortran else "C")


def _entry_looks_whole(entry: Path) -> bool:
  """Header, trailer and size agree (a cheap check: no data read)."""
  try:
    with open(entry, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      head = f.read(12)
      shape, _, dtype, offset = _npy_header(head + f.read(max(0, _header_end(head) - 12)))
      f.seek(size - _TRAILER.size)
      magic, _ = _TRAILER.unpack(f.read(_TRAILER.size))
    expected = offset + int(np.prod(shape)) * dtype.itemsize + _TRAILER.size
    return magic == _TRAILER_MAGIC and size == expected
  except (OSError, ValueError, SyntaxError, EOFError, struct.error):
    return False


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


# -- the cache --------------------------------------------------------------------


@dataclasses.dataclass
class ExtractionResult:
  """Outcome of :meth:`FeatureCache.extract`.

  Attributes:
    entries: Cache file per input path, in input order (None where it failed).
    computed: How many entries were computed by this call.
    reused: How many were already cached.
    failed: ``(path, error message)`` for files that could not be processed.
    seconds: Wall time of the call.
    workers: Processes used (1: this process only).
  """

  entries: list[Path | None]
  computed: int
  reused: int
  failed: list[tuple[str, str]]
  seconds: float
  workers: int = 1


class ExtractionError(RuntimeError):
  """Features of some files could not be computed (the others are cached).

  Attributes:
    failed: ``(path, message)`` per failing file.
  """

  def __init__(self, failed: Sequence[tuple[str, str]]):
    self.failed = list(failed)
    lines = "\n  ".join(f"{f}: {m}" for f, m in self.failed[:25])
    more = f"\n  ... and {len(self.failed) - 25} more" if len(self.failed) > 25 else ""
    super().__init__(f"feature extraction failed for {len(self.failed)} file(s) "
                     f"(the others are cached):\n  {lines}{more}")


def _one_blas_thread():
  """A context capping BLAS/OpenMP at one thread (a no-op without threadpoolctl).

  The only BLAS call per clip is the small mel projection. Measured on a busy
  2-core machine: 0.11 s per 10 s clip with OpenBLAS's default 2 threads (they
  spin waiting for a core), 0.043 s with one; and N workers times N threads
  oversubscribe any machine. (Worker processes get the same cap through
  ``OPENBLAS_NUM_THREADS=1`` and friends.)
  """
  try:
    import threadpoolctl  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  return threadpoolctl.threadpool_limits(1)


def _compute_entry(src: str, entry: str, config_dict: dict) -> tuple[str, str | None]:
  """Task body: features of ``src`` written atomically to ``entry``."""
  try:
    config = features_lib.FeatureConfig.from_dict(config_dict)
    write_entry(entry, features_lib.extract(src, config))
    return src, None
  except Exception as e:  # pylint: disable=broad-except  # reported per file to the caller
    return src, f"{type(e).__name__}: {e}"


class FeatureCache:
  """Features of audio files under one :class:`FeatureConfig`, cached on disk.

  Example::

    cache = FeatureCache(FeatureConfig(), "/tmp/features")
    result = cache.extract(files)          # parallel, resumable, progress bar
    x = cache.load(files[0])               # (256, frames, 2) float32, checksum verified
  """

  def __init__(self, config: features_lib.FeatureConfig = features_lib.CP_RESNET,
               cache_dir=None, *, key: str = "stat"):
    if key not in ("stat", "content"):
      raise ValueError(f"key must be 'stat' or 'content', got {key!r}")
    self.config = config
    self.key = key
    base = Path(cache_dir or default_cache_dir()).expanduser()
    self.dir = base / f"{config.fingerprint()[:16]}-c{_ENTRY_FORMAT}"
    self.dir.mkdir(parents=True, exist_ok=True)
    meta = self.dir / "config.json"
    if not meta.exists():
      payload = {"config": config.to_dict(), "fingerprint": config.fingerprint(),
                 "version": features_lib.FEATURE_VERSION, "entry_format": _ENTRY_FORMAT}
      _atomic_write(meta, [json.dumps(payload, indent=1, sort_keys=True).encode()])

  def entry(self, path) -> Path:
    """Where the features of ``path`` are (or will be) stored."""
    return self.dir / f"{source_key(path, self.key)}.npy"

  def has(self, path) -> bool:
    return self.entry(path).is_file()

  def _entry_of(self, path_or_entry) -> Path:
    p = Path(path_or_entry)
    return p if p.suffix == ".npy" and p.parent == self.dir else self.entry(p)

  def load(self, path_or_entry, mmap: bool = False) -> np.ndarray:
    """Features of an audio file (or of a cache entry path). Must be cached.

    Args:
      path_or_entry: An audio path, or an entry of this cache.
      mmap: Memory-map instead of reading; the checksum is then not checked
        (checking reads the whole file, which is what mapping avoids).

    Raises:
      CorruptEntryError: the entry fails its checksum.
    """
    entry = self._entry_of(path_or_entry)
    if mmap:
      return np.load(entry, mmap_mode="r", allow_pickle=False)
    return read_entry(entry)

  def heal(self, entry, source) -> np.ndarray:
    """Recomputes a damaged ``entry`` from its audio ``source``; returns the features."""
    x = features_lib.extract(source, self.config)
    write_entry(entry, x)
    warnings.warn(f"{entry}: corrupt feature cache entry of {source}; recomputed",
                  RuntimeWarning, stacklevel=2)
    return x

  def clean_temporaries(self) -> int:
    """Removes temporary files left by dead writers; returns how many."""
    removed = 0
    for tmp in self.dir.glob(f"*{_TMP_MARK}*"):
      try:
        pid = int(tmp.name.split(_TMP_MARK, 1)[1].split("-", 1)[0])
      except ValueError:
        pid = -1
      if pid <= 0 or not _pid_alive(pid):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed

  def _valid(self, entry: Path, verify: bool) -> bool:
    """Whether an entry can be reused: whole (cheap), or checksum-verified."""
    if not verify:
      return _entry_looks_whole(entry)
    try:
      read_entry(entry)
      return True
    except (OSError, CorruptEntryError):
      return False

  def extract(self, files: Sequence, *, workers: int | None = None, progress: bool = True,
              on_error: str = "raise", desc: str = "features",
              verify: bool = False) -> ExtractionResult:
    """Computes the features of every file not yet cached.

    Args:
      files: Audio paths.
      workers: Processes. None: up to every available core, but only as many as
        have a few seconds of work each (measured on two clips first; small jobs
        run here, without a pool). An integer forces that many; 1 runs here.
      progress: Show a tqdm progress bar.
      on_error: ``"raise"`` raises :class:`ExtractionError` after the run
        (finished entries are kept) with every failing file named; ``"skip"``
        returns them in ``failed``.
      desc: Progress bar label.
      verify: Read every existing entry and check its checksum (default: check
        header and size only; reads check the checksum anyway).

    Returns:
      An :class:`ExtractionResult`.
    """
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    if on_error not in ("raise", "skip"):
      raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if workers is not None and workers < 1:
      raise ValueError(f"workers must be at least 1 (or None for all cores), got {workers}")
    start = time.perf_counter()
    self.clean_temporaries()
    files = [str(f) for f in files]
    entries, todo = [], []
    for f in files:
      try:
        e = self.entry(f)
      except OSError as err:
        entries.append(None)
        todo.append((f, None, f"{type(err).__name__}: {err}"))
        continue
      entries.append(e)
      if not self._valid(e, verify):
        todo.append((f, e, None))
    missing = [(f, str(e)) for f, e, err in todo if err is None]
    failed = [(f, err) for f, e, err in todo if err is not None]
    unique = list(dict.fromkeys(missing))  # a file listed twice is computed once
    reused = len(files) - len(todo)
    config_dict = self.config.to_dict()
    bar = tqdm(total=len(unique), desc=desc, unit="clip", disable=not progress or not unique)
    compute_failed = []

    def run_here(items):
      with _one_blas_thread():
        for f, e in items:
          msg = _compute_entry(f, e, config_dict)[1]
          if msg:
            compute_failed.append((f, msg))
          bar.update()

    try:
      rest = unique
      if workers is None:
        # Starting a worker costs a second or two (a fresh interpreter importing
        # librosa), so a pool only pays when every worker gets several seconds of
        # work. Time two clips here (the first one also warms up librosa).
        workers = _available_cores()
        if workers > 1 and len(unique) > 2:
          run_here(unique[:1])
          t = time.perf_counter()
          run_here(unique[1:2])
          per_clip = time.perf_counter() - t
          rest = unique[2:]
          workers = int(min(workers, len(rest) * per_clip // _MIN_WORK_PER_WORKER_S))
      workers = max(1, min(workers, len(rest)))
      if workers == 1:
        run_here(rest)
      else:
        with workers_lib.WorkerPool(workers) as pool:
          for (src, _, _), ok, value in pool.imap_unordered(
              _compute_entry, ((f, e, config_dict) for f, e in rest)):
            msg = value[1] if ok else value
            if msg:
              compute_failed.append((src, msg))
            bar.update()
    finally:
      bar.close()
    failed += compute_failed
    bad = {f for f, _ in failed}
    entries = [None if (f in bad) else e for f, e in zip(files, entries)]
    if failed and on_error == "raise":
      raise ExtractionError(failed)
    return ExtractionResult(entries=entries, computed=len(unique) - len(compute_failed),
                            reused=reused, failed=failed, seconds=time.perf_counter() - start,
                            workers=workers)


def _available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


# The synthetic set's generator starts its ProcessPoolExecutor with this.
_mp_context = workers_lib.mp_context
