"""Progress reporting and cancellation shared by every long job (scoring, probe, perturbation, the CLI), and what a
job's body needs to talk to its job folder (``core.jobs.supervisor``) without importing the jobs wing.

    def job(..., progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None): ...
        if should_cancel and should_cancel():
            raise Cancelled("scoring cancelled")
        progress(done, total, "base: batch 3/40")

    should_cancel = cancel_flag()       # in a worker: SIGTERM (the page's Cancel) turns it true
    report_progress(3, 40, "batch 3")   # in a worker: into $WORKBENCH_PROGRESS (a job's progress.json)
    flush_progress()                    # in a worker, as it ends: the last report, if the rate limit held it back
    record_worker_exit(code)            # in a worker: how it ended, beside the progress file
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from core.atomic import atomic_write_text

Progress = Callable[[float, float, str], None]  # (done, total, message)

PROGRESS_ENV = "WORKBENCH_PROGRESS"  # the worker's progress file, set by the supervisor
JOB_DIR = "{job}"  # in a job's argv: its folder (``core.jobs.supervisor.start`` fills it in)
CANCELLED = 130  # a worker's exit code after a graceful cancel (as after Ctrl-C)
WORKER_EXIT = "worker_exit.json"


class Cancelled(RuntimeError):
    """Raised when the caller's ``should_cancel`` returned True."""


_REPORTS: dict = {}  # this process's reports: when the last was written, the one held back, the ETA's anchor


def report_progress(done: float, total: float, message: str, _state: dict = _REPORTS) -> None:
    """For workers: write ``$WORKBENCH_PROGRESS`` (at most every 0.3 s, and always at the end). A report held back
    by that limit is kept, and ``flush_progress`` writes it when the job stops early (Cancel, an error): else
    a cancelled job's last report lagged what it had done (a batch said 1,368 stored, with 1,433 in the database)."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    now = time.monotonic()
    fraction = done / total if total else 0.0
    if fraction < 1 and now - _state.get("last", 0.0) < 0.3:
        _state["pending"] = (path, fraction, message)
        return
    _state["last"] = now
    _write_progress(path, fraction, message, _state)


def flush_progress(_state: dict = _REPORTS) -> None:
    """For workers, as they end: write the last report that the rate limit held back (nothing when there is none)."""
    pending = _state.pop("pending", None)
    if pending is not None and pending[0] == os.environ.get(PROGRESS_ENV):
        _write_progress(*pending, _state)


def _write_progress(path: str, fraction: float, message: str, state: dict) -> None:
    state.pop("pending", None)
    # the first report with work done (after the first batch) anchors the ETA: the rate from there on leaves
    # out the start-up (imports, loading the models), which made the first ETAs several times too long
    first = state.setdefault(("first", path), [time.time(), fraction]) if fraction > 0 else [None, None]
    atomic_write_text(Path(path), json.dumps({"done": round(fraction, 4), "message": message, "time": time.time(),
                                              "first_time": first[0], "first_done": first[1]}),
                      durable=False)  # replaced every 0.3 s: an fsync each time would stall on a busy disk


def record_worker_exit(code: int) -> None:
    """For workers: write the exit code beside ``$WORKBENCH_PROGRESS`` (a job's folder) before exiting, so
    the job's state is known even when its supervisor was killed. Outside a job it does nothing."""
    path = os.environ.get(PROGRESS_ENV)
    if path:
        try:
            atomic_write_text(Path(path).parent / WORKER_EXIT, json.dumps({"returncode": code, "ended_at": time.time()}))
        except OSError:
            pass  # the supervisor's exit.json says it as well


def cancel_flag() -> Callable[[], bool]:
    """For workers: a ``should_cancel`` that turns true on SIGTERM (installed here). The handler takes no lock: a
    worker gets Cancel's SIGTERM twice (to its process group, and passed on by its supervisor), and Python may run
    the second handler inside the first; a ``threading.Event.set`` there waited for its own lock for ever (a
    cancelled job that never ended)."""
    asked = [False]

    def _asked(*_) -> None:
        asked[0] = True

    signal.signal(signal.SIGTERM, _asked)
    return lambda: asked[0]
