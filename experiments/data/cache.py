"""A resumable, parallel on-disk cache of spectrogram features.

Layout::

  cache_dir/<config fingerprint[:16]>/config.json     the FeatureConfig, for humans
  cache_dir/<config fingerprint[:16]>/<source key>.npy one array per audio file

Keys. The directory is the hash of every feature parameter (plus the code and
librosa versions, see :meth:`FeatureConfig.fingerprint`), so a changed parameter
lands in a different directory and can never pick up stale features. The entry
name hashes the source file's resolved path, size and modification time
(``key="stat"``, the default): one ``stat`` per file, so checking 10,000 cached
clips costs milliseconds, whereas a content hash reads every byte of audio
(tens of GB for DCASE) on every run, about as much I/O as decoding it. Editing,
replacing or re-copying a file changes size or mtime and so the key. Its blind
spot is an in-place rewrite that keeps both size and mtime (rare; tools bump
mtime); ``key="content"`` (BLAKE2 of the bytes) covers that, and also survives
moving the data root, at the price of reading every file.

Crash safety. Each entry is written to a temporary file in the same directory,
flushed and fsynced, then ``os.replace``-d into place (atomic on POSIX), so an
entry either exists complete or not at all. An interrupted extraction leaves
finished entries behind and the next call computes only the rest; stray
temporary files of dead processes are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from experiments.data import features as features_lib

__all__ = ["ExtractionResult", "FeatureCache", "default_cache_dir", "source_key"]

_TMP_MARK = ".tmp-"
# Below this much estimated work per worker, spawning one costs more than it saves.
_MIN_WORK_PER_WORKER_S = 3.0


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


def _atomic_save(path: Path, array: np.ndarray) -> None:
  tmp = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    with open(tmp, "wb") as f:
      np.save(f, array, allow_pickle=False)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


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


_THREAD_LIMIT = None


def _one_blas_thread():
  """A context capping BLAS/OpenMP at one thread (a no-op without threadpoolctl).

  The only BLAS call per clip is the small mel projection. Measured on a busy
  2-core machine: 0.11 s per 10 s clip with OpenBLAS's default 2 threads (they
  spin waiting for a core), 0.043 s with one; and N workers times N threads
  oversubscribe any machine.
  """
  try:
    import threadpoolctl  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  return threadpoolctl.threadpool_limits(1)


def _init_worker() -> None:
  """Per-process set-up: one BLAS thread, and librosa imported once up front."""
  global _THREAD_LIMIT
  import librosa  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import

  # After the imports: threadpoolctl only sees libraries already loaded.
  _THREAD_LIMIT = _one_blas_thread()  # kept referenced: the limit lasts with the object


def _compute_entry(src: str, entry: str, config_dict: dict) -> tuple[str, str | None]:
  """Worker body: features of ``src`` written atomically to ``entry``."""
  try:
    config = features_lib.FeatureConfig.from_dict(config_dict)
    _atomic_save(Path(entry), features_lib.extract(src, config))
    return src, None
  except Exception as e:  # pylint: disable=broad-except  # reported per file to the caller
    return src, f"{type(e).__name__}: {e}"


class FeatureCache:
  """Features of audio files under one :class:`FeatureConfig`, cached on disk.

  Example::

    cache = FeatureCache(FeatureConfig(), "/tmp/features")
    result = cache.extract(files)          # parallel, resumable, progress bar
    x = cache.load(files[0])               # (256, frames, 2) float32
  """

  def __init__(self, config: features_lib.FeatureConfig = features_lib.CP_RESNET,
               cache_dir=None, *, key: str = "stat"):
    if key not in ("stat", "content"):
      raise ValueError(f"key must be 'stat' or 'content', got {key!r}")
    self.config = config
    self.key = key
    self.dir = Path(cache_dir or default_cache_dir()).expanduser() / config.fingerprint()[:16]
    self.dir.mkdir(parents=True, exist_ok=True)
    meta = self.dir / "config.json"
    if not meta.exists():
      payload = {"config": config.to_dict(), "fingerprint": config.fingerprint(),
                 "version": features_lib.FEATURE_VERSION}
      tmp = meta.with_name(f"config.json{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
      tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
      os.replace(tmp, meta)

  def entry(self, path) -> Path:
    """Where the features of ``path`` are (or will be) stored."""
    return self.dir / f"{source_key(path, self.key)}.npy"

  def has(self, path) -> bool:
    return self.entry(path).is_file()

  def load(self, path_or_entry, mmap: bool = False) -> np.ndarray:
    """Features of an audio file (or of a cache entry path). Must be cached."""
    p = Path(path_or_entry)
    entry = p if p.suffix == ".npy" and p.parent == self.dir else self.entry(p)
    return np.load(entry, mmap_mode="r" if mmap else None, allow_pickle=False)

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

  def _valid(self, entry: Path) -> bool:
    """An entry whose header parses and whose size matches it.

    Atomic writes already rule out half-written entries; this also catches
    damage from outside (a disk fault, a truncated copy of the cache).
    """
    fmt = np.lib.format
    try:
      with open(entry, "rb") as f:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
        expected = f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize
      return entry.stat().st_size == expected
    except (OSError, ValueError, EOFError):
      return False

  def extract(self, files: Sequence, *, workers: int | None = None, progress: bool = True,
              on_error: str = "raise", desc: str = "features") -> ExtractionResult:
    """Computes the features of every file not yet cached.

    Args:
      files: Audio paths.
      workers: Processes. None: up to every available core, but only as many as
        have a few seconds of work each (measured on two clips first; small jobs
        run here, without a pool). An integer forces that many; 1 runs here.
      progress: Show a tqdm progress bar.
      on_error: ``"raise"`` raises after the run (finished entries are kept) with
        every failing file named; ``"skip"`` returns them in ``failed``.
      desc: Progress bar label.

    Returns:
      An :class:`ExtractionResult`.
    """
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    if on_error not in ("raise", "skip"):
      raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
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
      if not self._valid(e):
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
        # Spawning a worker costs a second or two (a fresh interpreter importing
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
        compute_failed += self._extract_parallel(rest, workers, config_dict, bar)
    finally:
      bar.close()
    failed += compute_failed
    bad = {f for f, _ in failed}
    entries = [None if (f in bad) else e for f, e in zip(files, entries)]
    if failed and on_error == "raise":
      lines = "\n  ".join(f"{f}: {m}" for f, m in failed[:25])
      raise RuntimeError(f"feature extraction failed for {len(failed)} file(s) "
                         f"(the others are cached):\n  {lines}")
    return ExtractionResult(entries=entries, computed=len(unique) - len(compute_failed),
                            reused=reused, failed=failed, seconds=time.perf_counter() - start,
                            workers=workers)

  def _extract_parallel(self, unique, workers, config_dict, bar) -> list[tuple[str, str]]:
    ctx = _mp_context()
    failed = []
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    try:
      # A bounded window of in-flight tasks keeps memory flat for huge lists and
      # lets an interrupt stop quickly.
      pending, it = set(), iter(unique)
      for f, e in it:
        pending.add(pool.submit(_compute_entry, f, e, config_dict))
        if len(pending) >= 4 * workers:
          break
      while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
          src, msg = fut.result()
          if msg:
            failed.append((src, msg))
          bar.update()
          nxt = next(it, None)
          if nxt is not None:
            pending.add(pool.submit(_compute_entry, nxt[0], nxt[1], config_dict))
    except BrokenProcessPool as e:
      pool.shutdown(wait=False, cancel_futures=True)
      raise RuntimeError(
          "feature worker processes died (finished entries are kept; rerun to resume). "
          "Usual causes: a script without an `if __name__ == '__main__':` guard "
          "(workers re-import the main module), or running out of memory (try fewer "
          "workers, or workers=1).") from e
    except BaseException:
      pool.shutdown(wait=False, cancel_futures=True)
      raise
    pool.shutdown(wait=True)
    return failed


def _mp_context():
  """forkserver where available, else spawn; never a plain fork.

  A plain fork would copy a parent that may run JAX's threads (deadlock-prone).
  The fork server is a fresh single-threaded interpreter that imports librosa
  once (``_preload``); workers fork from it already warm, so a pool starts in a
  fraction of a second instead of paying the imports per worker, and later pools
  reuse the server. As with spawn, each worker re-imports the main module, so
  a script that extracts in parallel needs the ``if __name__ == "__main__":``
  guard (the CLI has it; notebooks and pytest need nothing).
  """
  if "forkserver" in multiprocessing.get_all_start_methods():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["experiments.data._preload"])
    return ctx
  return multiprocessing.get_context("spawn")


def _available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1
