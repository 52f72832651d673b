"""Worker processes that die with their parent and need no ``__main__`` guard.

:class:`WorkerPool` runs module-level functions in fresh interpreters started
with ``python -c``. They import this package (and a warm-up module, librosa by
default, once), not the caller's ``__main__``, so a script that calls
``prepare()`` needs no ``if __name__ == "__main__":`` guard: multiprocessing's
spawn and forkserver start methods re-run the main script in every worker,
which crashes guard-less scripts. A plain fork would avoid that too but copies a
parent that may run JAX's threads (deadlock-prone).

Each worker dies with the process that started it, however that one ends
(SIGKILL included): on Linux through ``prctl(PR_SET_PDEATHSIG, SIGKILL)``
(immediate, enforced by the kernel even while the worker is busy in C code; the
worker checks its parent is still the same right after, which closes the race
with an early death), elsewhere through a thread polling ``os.getppid()``; and a
worker whose task pipe closes returns. There is no fork server or resource
tracker to leave behind. Workers sit in their own process group, so Ctrl-C
reaches only the parent, which stops them (no traceback from every worker).

One caveat of ``PR_SET_PDEATHSIG``: it fires when the *thread* that started the
worker ends. A pool lives inside one call (``FeatureCache.extract``), in that
call's thread, so this only matters for code that keeps a pool across threads.

:func:`mp_context` is the multiprocessing counterpart for code that needs
``ProcessPoolExecutor`` (the synthetic set's generator): its workers die with
the parent too (the fork server exits when the parent's end of its "alive" pipe
closes; each worker watches the parent's sentinel), but as with any
multiprocessing start method but fork, a script using it needs the guard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WorkerError", "WorkerPool", "mp_context"]

WARMUP = "experiments.data._preload"


class WorkerError(RuntimeError):
  """A worker process could not start (the whole pool is unusable)."""


def _die_with_parent(parent_pid: int) -> None:
  """Makes this process end when ``parent_pid`` (its parent) ends, however it ends."""
  if sys.platform.startswith("linux"):
    try:
      import ctypes  # pylint: disable=g-import-not-at-top

      pr_set_pdeathsig = 1
      libc = ctypes.CDLL(None, use_errno=True)
      if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
          os._exit(1)
        return
    except (OSError, AttributeError):
      pass  # no usable libc: poll instead

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(0.2)
    os._exit(1)

  threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _send(stream, message) -> None:
  pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
  stream.flush()


def _worker_main() -> None:
  """Body of a worker process (see :class:`WorkerPool`); argv: root, parent pid, warm-up."""
  _die_with_parent(int(sys.argv[2]))
  results = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)  # stray prints of libraries go to stderr, not into the result stream
  try:
    if sys.argv[3]:
      __import__(sys.argv[3])
  except BaseException:  # pylint: disable=broad-except  # reported to the parent
    import traceback  # pylint: disable=g-import-not-at-top

    _send(results, ("failed", traceback.format_exc(limit=-4)))
    return
  _send(results, ("ready", os.getpid()))
  tasks = sys.stdin.buffer
  while True:
    try:
      fn, args = pickle.load(tasks)
    except EOFError:  # the parent closed the pool (or died)
      return
    try:
      reply = ("ok", fn(*args))
    except Exception as e:  # pylint: disable=broad-except  # one task's failure, reported
      reply = ("error", f"{type(e).__name__}: {e}")
    try:
      _send(results, reply)
    except BrokenPipeError:  # the parent is gone
      os._exit(1)


_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from experiments.data.workers import _worker_main; _worker_main()")


def _describe_exit(code: int | None) -> str:
  if code is None:
    return "still running"
  if code < 0:
    name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
    return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
  return f"exit code {code}"


@dataclasses.dataclass(eq=False)
class _Worker:
  proc: subprocess.Popen
  ready: bool = False
  task: tuple | None = None


class WorkerPool:
  """Worker processes for module-level functions; no ``__main__`` guard needed.

  Each worker is a fresh interpreter (``python -c``) that imports this package
  and ``warmup`` once, then runs the tasks it is sent over a pipe; results come
  back over another. See the module docstring for why (no ``__main__``
  re-import, death with the parent on any signal, Ctrl-C left to the parent).

  Example::

    with WorkerPool(2, warmup=None) as pool:
      for args, ok, value in pool.imap_unordered(math.factorial, [(5,), (6,)]):
        ...                                 # ((5,), True, 120), ((6,), True, 720)

  Args:
    workers: Number of processes.
    warmup: A module each worker imports before taking tasks (default: librosa
      and the feature code); None for none.
  """

  def __init__(self, workers: int, *, warmup: str | None = WARMUP):
    if workers < 1:
      raise ValueError(f"workers must be at least 1, got {workers}")
    self._warmup = warmup or ""
    self._events: queue.Queue = queue.Queue()
    self._workers: list[_Worker] = []
    self._backlog: list[tuple] = []
    try:
      for _ in range(workers):
        self._spawn()
    except BaseException:
      self.close(kill=True)
      raise

  def _spawn(self) -> _Worker:
    import experiments  # pylint: disable=g-import-not-at-top

    package_root = str(Path(experiments.__file__).resolve().parent.parent)
    env = dict(os.environ)
    # One BLAS/OpenMP thread per worker: N workers x N threads oversubscribe any
    # machine (see _one_blas_thread for the measurement).
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    extra = {"process_group": 0} if os.name == "posix" else {}
    proc = subprocess.Popen(
        [sys.executable, "-c", _BOOT, package_root, str(os.getpid()), self._warmup],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, **extra)
    worker = _Worker(proc)
    self._workers.append(worker)
    threading.Thread(target=self._read, args=(worker,), daemon=True,
                     name=f"worker-{proc.pid}-results").start()
    return worker

  def _read(self, worker: _Worker) -> None:
    try:
      while True:
        self._events.put((worker, pickle.load(worker.proc.stdout)))
    except Exception:  # pylint: disable=broad-except  # EOF or a torn message: it is gone
      self._events.put((worker, None))

  def _give(self, worker: _Worker, fn, items: Iterator[tuple]) -> None:
    args = self._backlog.pop() if self._backlog else next(items, None)
    if args is None:
      return
    worker.task = args
    try:
      _send(worker.proc.stdin, (fn, args))
    except OSError:  # it died; its reader reports that, and the task goes to another
      self._backlog.append(args)
      worker.task = None

  def imap_unordered(self, fn, items: Iterable[tuple]) -> Iterator[tuple[tuple, bool, object]]:
    """Runs ``fn(*args)`` for every ``args`` of ``items`` in the workers.

    Yields ``(args, ok, value)`` in completion order: ``value`` is what ``fn``
    returned, or for ``ok=False`` a message (its exception, or the worker's death
    while running it: then a fresh worker takes over the remaining items).

    Raises:
      WorkerError: a worker failed before it could take tasks.
    """
    items = iter(items)
    for worker in list(self._workers):
      self._give(worker, fn, items)
    while any(w.task is not None for w in self._workers) or self._backlog:
      worker, message = self._events.get()
      if worker not in self._workers:  # a retired worker's last words
        continue
      if message is None:  # the process ended
        self._workers.remove(worker)
        code = worker.proc.wait()
        if not worker.ready:
          raise WorkerError(f"a worker process ended before it was ready ({_describe_exit(code)})"
                            "; its error output is above")
        if worker.task is not None:
          args, worker.task = worker.task, None
          yield args, False, f"worker process died ({_describe_exit(code)}) while on this task"
        nxt = self._backlog.pop() if self._backlog else next(items, None)
        if nxt is not None:  # a fresh worker takes over what is left
          self._backlog.append(nxt)
          self._give(self._spawn(), fn, items)
        continue
      kind, value = message
      if kind == "ready":
        worker.ready = True
      elif kind == "failed":
        raise WorkerError(f"a worker process could not start:\n{value}")
      else:
        args, worker.task = worker.task, None
        yield args, kind == "ok", value
        self._give(worker, fn, items)

  def close(self, kill: bool = False) -> None:
    """Stops the workers: lets them finish their task (or kills them) and waits."""
    for w in self._workers:
      if kill:
        w.proc.kill()
      else:
        with contextlib.suppress(OSError):
          w.proc.stdin.close()  # EOF: the worker returns
    for w in self._workers:
      try:
        w.proc.wait(timeout=None if kill else 10)
      except subprocess.TimeoutExpired:
        w.proc.kill()
        w.proc.wait()
      for stream in (w.proc.stdin, w.proc.stdout):
        with contextlib.suppress(OSError):
          stream.close()
    self._workers = []

  def __enter__(self) -> WorkerPool:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close(kill=exc_type is not None)


class _ForkServerProcess(multiprocessing.context.ForkServerProcess if os.name == "posix"
                         else multiprocessing.context.SpawnProcess):
  """A multiprocessing process that dies with its parent and leaves Ctrl-C to it.

  For pools that use multiprocessing (the synthetic set's generator): the
  fork server exits when the parent dies (its "alive" pipe closes), and this
  thread ends each worker when the parent's sentinel pipe closes.
  """

  def run(self):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
      def watch():
        parent.join()
        os._exit(1)

      threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
    super().run()


if os.name == "posix":
  class _DyingContext(multiprocessing.context.ForkServerContext):
    Process = _ForkServerProcess
else:
  class _DyingContext(multiprocessing.context.SpawnContext):
    Process = _ForkServerProcess


def mp_context():
  """A multiprocessing context for ProcessPoolExecutor whose workers die with us.

  forkserver where available (workers fork from a fresh single-threaded server
  that imported librosa once), else spawn; never a plain fork, which would copy
  a parent that may run JAX's threads (deadlock-prone). Both re-run the main
  script in each worker, so scripts that use it need the
  ``if __name__ == "__main__":`` guard; :class:`WorkerPool` does not.
  """
  ctx = _DyingContext()
  if os.name == "posix":
    ctx.set_forkserver_preload([WARMUP])
  return ctx
