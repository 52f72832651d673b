"""Worker processes that die with their parent and need no ``__main__`` guard.

:class:`WorkerPool` runs module-level functions in processes that never import
the caller's ``__main__``, so a script that calls ``prepare()`` needs no
``if __name__ == "__main__":`` guard: multiprocessing's spawn and forkserver
start methods re-run the main script in every worker, which crashes guard-less
scripts. A plain fork of the caller would avoid that too but copies a process
that may run JAX's threads (deadlock-prone).

How. On Linux the pool starts one *pool server*: a fresh interpreter
(``python -c``) that imports this package and the warm-up module (librosa) once,
then forks each worker on request, handing it the two pipes the caller made for
it (passed over a Unix socket); the caller talks to its workers directly. Like
multiprocessing's fork server, librosa is imported once per pool, not once per
worker, and forked workers share its pages; unlike it, nothing re-runs
``__main__``. Elsewhere each worker is a fresh interpreter of its own (slower to
start: one import per worker).

Death. Every process dies with the one that started it, however that one ends
(SIGKILL included): on Linux through ``prctl(PR_SET_PDEATHSIG, SIGKILL)``
(immediate, enforced by the kernel even while the process is busy in C code; it
checks its parent is still the same right after, which closes the race with an
early death): the caller's death kills the server, whose death kills the
workers. Elsewhere a thread polls ``os.getppid()``. A worker whose task pipe
closes returns; a server whose socket closes kills its workers. There is no
resource tracker to leave behind. Pool processes sit in their own process group,
so Ctrl-C reaches only the caller, which stops them (no traceback from every
worker).

One caveat of ``PR_SET_PDEATHSIG``: it fires when the *thread* that started the
process ends. A pool lives inside one call (``FeatureCache.extract``), in that
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
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WorkerError", "WorkerPool", "mp_context"]

WARMUP = "experiments.data._preload"
# The pool server forks, so it must stay single-threaded: only where prctl makes
# it die with its parent without a watchdog thread (Linux).
_USE_SERVER = sys.platform.startswith("linux") and hasattr(socket, "send_fds")


class WorkerError(RuntimeError):
  """The pool could not start a worker (the whole pool is unusable)."""


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


def _results_stream():
  """Fd 1 as the result stream; fd 1 itself then points at stderr, so that stray
  prints of libraries do not corrupt the results."""
  results = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)
  return results


def _serve(tasks, results) -> None:
  """A worker's life: say ready, then run tasks until the task pipe closes."""
  _send(results, ("ready", os.getpid()))
  while True:
    try:
      fn, args = pickle.load(tasks)
    except EOFError:  # the caller closed the pool (or died)
      return
    try:
      reply = ("ok", fn(*args))
    except Exception as e:  # pylint: disable=broad-except  # one task's failure, reported
      reply = ("error", f"{type(e).__name__}: {e}")
    try:
      _send(results, reply)
    except BrokenPipeError:  # the caller is gone
      os._exit(1)


def _worker_main() -> None:
  """A worker as a fresh interpreter; argv: package root, parent pid, warm-up module."""
  _die_with_parent(int(sys.argv[2]))
  results = _results_stream()
  try:
    if sys.argv[3]:
      __import__(sys.argv[3])
  except BaseException:  # pylint: disable=broad-except  # reported to the caller
    _send(results, ("failed", traceback.format_exc(limit=-4)))
    return
  _serve(sys.stdin.buffer, results)


def _server_main() -> None:
  """The pool server; argv: package root, parent pid, warm-up module, socket fd.

  Imports the warm-up module, then forks a worker for every ``fork`` request
  (which carries the worker's task and result pipes) and reports each worker's
  exit status. Single-threaded, so forking is safe.
  """
  _die_with_parent(int(sys.argv[2]))
  ctl = socket.socket(fileno=int(sys.argv[4]))
  try:
    if sys.argv[3]:
      __import__(sys.argv[3])
  except BaseException:  # pylint: disable=broad-except  # reported to the caller
    ctl.send(pickle.dumps(("failed", traceback.format_exc(limit=-4))))
    return
  ctl.send(pickle.dumps(("ready", os.getpid())))
  me, children = os.getpid(), set()
  try:
    while True:
      readable = select.select([ctl], [], [], 0.2)[0]
      while children:  # reap, and say how each worker ended
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
          break
        children.discard(pid)
        ctl.send(pickle.dumps(("exit", pid, os.waitstatus_to_exitcode(status))))
      if not readable:
        continue
      msg, fds, _, _ = socket.recv_fds(ctl, 64, 2)
      if not msg:  # the caller closed the pool, or died
        return
      pid = os.fork()
      if pid == 0:
        _forked_worker(ctl, fds, me)
      for fd in fds:
        os.close(fd)
      children.add(pid)
      ctl.send(pickle.dumps(("pid", pid)))
  except (BrokenPipeError, ConnectionResetError):
    return
  finally:
    for pid in children:
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _forked_worker(ctl, fds, server_pid) -> None:
  """The child side of the server's fork: become a worker, never return."""
  code = 1
  try:
    ctl.close()
    os.dup2(fds[0], 0)
    os.dup2(fds[1], 1)
    for fd in fds:
      os.close(fd)
    _die_with_parent(server_pid)
    _serve(os.fdopen(0, "rb"), _results_stream())
    code = 0
  except BaseException:  # pylint: disable=broad-except  # a crash: say why, then end
    traceback.print_exc()
  finally:
    os._exit(code)


_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from experiments.data import workers; workers.{}()")


def _describe_exit(code: int | None) -> str:
  if code is None:
    return "exit status unknown"
  if code < 0:
    name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
    return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
  return f"exit code {code}"


@dataclasses.dataclass(eq=False)
class _Worker:
  pid: int
  tasks: object  # binary writer
  results: object  # binary reader
  proc: subprocess.Popen | None = None  # fresh interpreters only
  ready: bool = False
  task: tuple | None = None


class WorkerPool:
  """Worker processes for module-level functions; no ``__main__`` guard needed.

  Workers never import the caller's ``__main__``; each imports ``warmup`` once
  (forked from a pool server that did, on Linux), then runs the tasks it is sent
  over a pipe; results come back over another. See the module docstring for how
  and why (death with the caller on any signal, Ctrl-C left to the caller).

  Example::

    with WorkerPool(2, warmup=None) as pool:
      for args, ok, value in pool.imap_unordered(math.factorial, [(5,), (6,)]):
        ...                                 # ((5,), True, 120), ((6,), True, 720)

  Args:
    workers: Number of processes.
    warmup: A module imported before any task (default: librosa and the
      feature code); None for none.
  """

  def __init__(self, workers: int, *, warmup: str | None = WARMUP):
    if workers < 1:
      raise ValueError(f"workers must be at least 1, got {workers}")
    self._warmup = warmup or ""
    self._events: queue.Queue = queue.Queue()
    self._replies: queue.Queue = queue.Queue()
    self._exits: dict[int, int | None] = {}
    self._exited = threading.Condition()
    self._workers: list[_Worker] = []
    self._backlog: list[tuple] = []
    self._server = self._ctl = None
    try:
      if _USE_SERVER:
        self._start_server()
      for _ in range(workers):
        self._spawn()
    except BaseException:
      self.close(kill=True)
      raise

  def _popen(self, entry: str, **kwargs) -> subprocess.Popen:
    import experiments  # pylint: disable=g-import-not-at-top

    package_root = str(Path(experiments.__file__).resolve().parent.parent)
    env = dict(os.environ)
    # One BLAS/OpenMP thread per worker: N workers x N threads oversubscribe any
    # machine (see cache._one_blas_thread for the measurement); it also keeps the
    # pool server single-threaded.
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if os.name == "posix":
      kwargs["process_group"] = 0
    return subprocess.Popen([sys.executable, "-c", _BOOT.format(entry), package_root,
                             str(os.getpid()), self._warmup, *kwargs.pop("extra_args", ())],
                            env=env, **kwargs)

  def _start_server(self) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with theirs:
      self._server = self._popen("_server_main", extra_args=[str(theirs.fileno())],
                                 stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()])
    self._ctl = ours
    threading.Thread(target=self._listen, daemon=True, name="pool-server").start()
    kind, value = self._reply()
    if kind == "failed":
      raise WorkerError(f"the worker processes could not start:\n{value}")

  def _listen(self) -> None:
    """Routes the server's messages: exit statuses, and replies to requests."""
    try:
      while True:
        data = self._ctl.recv(1 << 16)
        if not data:
          break
        message = pickle.loads(data)
        if message[0] == "exit":
          with self._exited:
            self._exits[message[1]] = message[2]
            self._exited.notify_all()
        else:
          self._replies.put(message)
    except (OSError, EOFError, pickle.UnpicklingError):
      pass
    self._replies.put(None)  # the server is gone
    with self._exited:
      self._exits[-1] = None
      self._exited.notify_all()

  def _reply(self):
    try:
      message = self._replies.get(timeout=300)
    except queue.Empty:
      message = None
    if message is None:
      code = self._server.poll() if self._server else None
      raise WorkerError(f"the worker pool's server process ended ({_describe_exit(code)}); "
                        "its error output is above")
    return message

  def _spawn(self) -> _Worker:
    if self._server is not None:
      task_r, task_w = os.pipe()
      result_r, result_w = os.pipe()
      try:
        socket.send_fds(self._ctl, [b"fork"], [task_r, result_w])
      except OSError as e:
        os.close(task_w)
        os.close(result_r)
        raise WorkerError("the worker pool's server process is gone") from e
      finally:
        os.close(task_r)
        os.close(result_w)
      _, pid = self._reply()
      worker = _Worker(pid, os.fdopen(task_w, "wb"), os.fdopen(result_r, "rb"))
    else:
      proc = self._popen("_worker_main", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
      worker = _Worker(proc.pid, proc.stdin, proc.stdout, proc)
    self._workers.append(worker)
    threading.Thread(target=self._read, args=(worker,), daemon=True,
                     name=f"worker-{worker.pid}-results").start()
    return worker

  def _read(self, worker: _Worker) -> None:
    try:
      while True:
        self._events.put((worker, pickle.load(worker.results)))
    except Exception:  # pylint: disable=broad-except  # EOF or a torn message: it is gone
      self._events.put((worker, None))

  def _exit_code(self, worker: _Worker) -> int | None:
    if worker.proc is not None:
      return worker.proc.wait()
    with self._exited:  # the server reaps its children every 0.2 s
      self._exited.wait_for(lambda: worker.pid in self._exits or -1 in self._exits, timeout=5)
      return self._exits.get(worker.pid)

  def _give(self, worker: _Worker, fn, items: Iterator[tuple]) -> None:
    args = self._backlog.pop() if self._backlog else next(items, None)
    if args is None:
      return
    worker.task = args
    try:
      _send(worker.tasks, (fn, args))
    except OSError:  # it died; its reader reports that, and the task goes to another
      self._backlog.append(args)
      worker.task = None

  def imap_unordered(self, fn, items: Iterable[tuple]) -> Iterator[tuple[tuple, bool, object]]:
    """Runs ``fn(*args)`` for every ``args`` of ``items`` in the workers.

    Yields ``(args, ok, value)`` in completion order: ``value`` is what ``fn``
    returned, or for ``ok=False`` a message (its exception, or the worker's death
    while running it: then a fresh worker takes over the remaining items).

    Raises:
      WorkerError: a worker could not start.
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
        code = self._exit_code(worker)
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
        with contextlib.suppress(ProcessLookupError):
          os.kill(w.pid, signal.SIGKILL)
      with contextlib.suppress(OSError):
        w.tasks.close()  # EOF: an idle worker returns
    for w in self._workers:
      if w.proc is not None:
        try:
          w.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
          w.proc.kill()
          w.proc.wait()
      else:
        with self._exited:
          self._exited.wait_for(lambda w=w: w.pid in self._exits or -1 in self._exits,
                                timeout=10)
      with contextlib.suppress(OSError):
        w.results.close()
    self._workers = []
    if self._server is not None:
      with contextlib.suppress(OSError):
        # shutdown, not just close: the listening thread's recv holds the socket
        # open, and the server must see EOF now.
        self._ctl.shutdown(socket.SHUT_RDWR)
      self._ctl.close()  # EOF: the server kills what is left and returns
      try:
        self._server.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._server.kill()
        self._server.wait()
      self._server = None

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
