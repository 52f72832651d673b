"""Worker processes: results, failures, and death with the parent (SIGKILL included)."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiments.data import workers

ROOT = Path(__file__).resolve().parent.parent
LINUX_PROC = Path("/proc/self/stat").exists()


@pytest.fixture(params=["server", "interpreters"])
def kind(request, monkeypatch):
  """Both ways of starting workers: forked by a pool server (Linux), or each a
  fresh interpreter (elsewhere)."""
  if request.param == "server" and not workers._USE_SERVER:
    pytest.skip("no pool server on this platform")
  monkeypatch.setattr(workers, "_USE_SERVER", request.param == "server")
  return request.param


def test_pool_runs_tasks_and_reports_failures(kind):
  with workers.WorkerPool(2, warmup=None) as pool:
    out = sorted(pool.imap_unordered(math.factorial, [(5,), (-1,), (6,)]))
  assert out == [((-1,), False, "ValueError: factorial() not defined for negative values"),
                 ((5,), True, 120), ((6,), True, 720)]


def test_a_dying_worker_fails_its_task_and_is_replaced(kind):
  # os._exit ends the worker in the middle of its task, like a crash would.
  with workers.WorkerPool(1, warmup=None) as pool:
    out = list(pool.imap_unordered(_call, [(math.factorial, 4), (os._exit, 3),
                                           (math.factorial, 5)]))
  assert out[0] == ((math.factorial, 4), True, 24)
  assert out[1][:2] == ((os._exit, 3), False)
  assert "worker process died (exit code 3) while on this task" in out[1][2]
  assert out[2] == ((math.factorial, 5), True, 120)  # a fresh worker took over


def _call(fn, arg):
  return fn(arg)


def test_a_worker_that_cannot_start_is_an_error(kind):
  with pytest.raises(workers.WorkerError, match="ModuleNotFoundError"):
    with workers.WorkerPool(1, warmup="no_such_module_anywhere") as pool:
      list(pool.imap_unordered(math.factorial, [(3,)]))


def _session_processes(sid: int) -> list[int]:
  """Live (not zombie) processes of a session, from /proc."""
  found = []
  for d in os.listdir("/proc"):
    if not d.isdigit():
      continue
    try:
      stat = Path(f"/proc/{d}/stat").read_text()
    except OSError:
      continue
    state, _, _, session = stat.rsplit(")", 1)[1].split()[:4]
    if int(session) == sid and state not in "ZX":
      found.append(int(d))
  return found


def _kill_and_watch(script: str, min_processes: int) -> tuple[list[int], list[int]]:
  """Runs ``script`` in its own session until it prints "running", SIGKILLs it, and
  returns (processes of the session before, processes still alive 5 s later)."""
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True, start_new_session=True)
  try:
    assert proc.stdout.readline().strip() == "running"
    before = _session_processes(proc.pid)
    assert len(before) >= min_processes, before
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while _session_processes(proc.pid) and time.monotonic() < deadline:
      time.sleep(0.05)
    return before, _session_processes(proc.pid)
  finally:
    for pid in _session_processes(proc.pid):  # never leave anything behind
      os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not LINUX_PROC, reason="lists processes through /proc")
def test_busy_workers_die_with_a_sigkilled_parent(kind):
  before, after = _kill_and_watch(f"""
      import math, threading, time
      from experiments.data import workers
      workers._USE_SERVER = {kind == "server"}
      pool = workers.WorkerPool(2, warmup=None)
      assert len(list(pool.imap_unordered(math.factorial, [(3,), (4,)]))) == 2  # both up
      threading.Thread(target=lambda: list(pool.imap_unordered(time.sleep, [(60,), (60,)])),
                       daemon=True).start()
      time.sleep(0.5)  # both workers are now inside time.sleep
      print("running", flush=True)
      time.sleep(60)
  """, min_processes=3)
  assert after == [], f"still running after the parent's SIGKILL: {after} (of {before})"


@pytest.mark.skipif(not LINUX_PROC, reason="lists processes through /proc")
def test_multiprocessing_pool_dies_with_a_sigkilled_parent():
  # The synthetic set's generator pool: workers, fork server and resource tracker.
  before, after = _kill_and_watch("""
      import time
      from concurrent.futures import ProcessPoolExecutor
      from experiments.data import cache
      if __name__ == "__main__":
        pool = ProcessPoolExecutor(2, mp_context=cache._mp_context())
        futures = [pool.submit(time.sleep, 60) for _ in range(4)]
        time.sleep(1.5)
        print("running", flush=True)
        time.sleep(60)
  """, min_processes=4)
  assert after == [], f"still running after the parent's SIGKILL: {after} (of {before})"
