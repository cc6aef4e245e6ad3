"""Long work as background jobs that outlive the browser: a folder per job, a supervisor process per job.

    argv, files = registry.command("score", cfg, options)   # python -m core.jobs.worker score --config {job}/...
    job = jobs.start(ws.jobs_dir, "score", argv, title="score sample world", files=files)  # = registry.launch
    job.state()        # "running" | "done" | "failed" | "cancelled" | "died"
    job.progress()     # {"done": 0.42, "message": "probe: checkpoint-80", "eta_s": 31.0, ...}
    job.cancel()       # SIGTERM to the worker's process group; it stops at the next batch
    jobs.list_jobs(ws.job_dirs, kind="score")

Layout of ``jobs/<id>/``: ``job.json`` (what runs: kind, title, argv, started_at, pid), ``progress.json``
(written by the worker through ``report_progress``, atomically), ``log.txt`` (the worker's output),
``worker.json`` (the worker's pid and start time, written by the supervisor) and ``exit.json`` (return code
and end time, written by the supervisor when the worker ends, however it ends). A job is "running" while its
supervisor or its worker lives (a killed supervisor does not stop the worker, so the job goes on); one with
neither alive and no ``exit.json`` reads as "died". Processes are matched by pid and start time, so a
recycled pid is not taken for the job. No state lives in the page process,
so closing the tab or restarting the app loses nothing: the page re-attaches by reading the folder.

The worker finds its progress file in ``$WORKBENCH_PROGRESS``; SIGTERM asks it to stop (``cancel_flag``); both
helpers live in ``core.progress``, so a job's body needs nothing from this wing. Jobs of the engine's kinds start
through ``core.jobs.registry.launch``, which builds their argv and files in one place.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.atomic import atomic_write_text
from core.errors import InputError
from core.io.outputs import disk_full_named
from core.progress import CANCELLED, JOB_DIR, PROGRESS_ENV, WORKER_EXIT

CANCEL_ASKED = "cancel_asked.json"  # written by ``Job.cancel``: the job shows "cancelling…" until it stops
STARTING = "starting: loading torch and transformers…"  # before the worker's first report


@dataclass
class Job:
    dir: Path
    kind: str
    title: str
    argv: list[str]
    started_at: float
    pid: int | None = None  # the supervisor's pid, also the worker's process group
    meta: dict = field(default_factory=dict)  # caller's data, e.g. the output folder
    pid_started: float | None = None  # the supervisor's start time (``process_start``), against pid reuse

    @property
    def id(self) -> str:
        return self.dir.name

    @classmethod
    def load(cls, folder: str | Path) -> "Job":
        folder = Path(folder)
        try:
            data = json.loads((folder / "job.json").read_text())
            return cls(folder, data["kind"], data["title"], data["argv"], data["started_at"], data.get("pid"),
                       data.get("meta", {}), data.get("pid_started"))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:
            raise InputError(f"{folder / 'job.json'}: not a readable job description ({e})") from None

    def _save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "dir"}
        atomic_write_text(self.dir / "job.json", json.dumps(data, indent=1))

    def exit_info(self) -> dict | None:
        """How the worker ended: the supervisor's ``exit.json``, else the worker's own ``worker_exit.json``
        (``record_worker_exit``: a worker whose supervisor was killed still says how it ended)."""
        for name in ("exit.json", WORKER_EXIT):
            try:
                info = json.loads((self.dir / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(info, dict) and isinstance(info.get("returncode"), int):
                return info
        return None

    def state(self) -> str:
        info = self.exit_info()
        if info is not None:
            code = info["returncode"]
            return "done" if code == 0 else "cancelled" if code in (CANCELLED, -signal.SIGTERM) else "failed"
        return "running" if self.live_pids() else "died"

    def worker(self) -> dict | None:
        """``{"pid", "started"}`` of the worker, once the supervisor has started it."""
        try:
            data = json.loads((self.dir / "worker.json").read_text())
            return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    def live_pids(self) -> list[int]:
        """The job's processes that still run: the supervisor and the worker (matched by start time)."""
        worker = self.worker() or {}
        candidates = [(self.pid, self.pid_started), (worker.get("pid"), worker.get("started"))]
        return [pid for pid, started in candidates if _alive(pid, started)]

    def ending(self) -> str:
        """How the job ended, in words: its exit code, or the signal that killed its worker."""
        info = self.exit_info()
        if info is None:
            return "no exit code was recorded (its supervisor was killed, or the machine restarted)"
        code = info.get("returncode")
        if isinstance(code, int) and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"killed by {name}" + (" (out of memory, or killed by hand)" if -code == signal.SIGKILL else "")
        return f"exit code {code}"

    def progress(self) -> dict:
        """The worker's last report, with the elapsed time and an ETA from the rate so far."""
        try:
            p = json.loads((self.dir / "progress.json").read_text())
        except (OSError, json.JSONDecodeError):  # the worker has not reported yet: it is importing its libraries
            p = {"done": 0.0, "message": STARTING}
        end = (self.exit_info() or {}).get("ended_at") or (time.time() if self.live_pids() else self._last_sign())
        p["elapsed_s"] = max(0.0, end - self.started_at)  # fixed once the job ended: it never grows afterwards
        p["eta_s"] = eta_seconds(p, end)
        return p

    def _last_sign(self) -> float:
        """When a job that recorded no end (its supervisor killed, the machine restarted) last wrote anything."""
        times = [(self.dir / n).stat().st_mtime for n in ("progress.json", "log.txt", "worker.json", "job.json")
                 if (self.dir / n).is_file()]
        return max(times, default=self.started_at)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.dir / "log.txt", "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 64_000))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        # tqdm redraws with carriage returns: keep the last state of each line
        return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines()[-lines:])

    @property
    def cancelling(self) -> bool:
        """Cancel was asked for and the worker has not stopped yet (it stops at its next batch)."""
        return (self.dir / CANCEL_ASKED).is_file() and self.state() == "running"

    def cancel(self) -> bool:
        """Ask the worker to stop (SIGTERM to its process group); False when it is no longer running. The
        request is recorded first (``cancelling``), so every page shows it at once."""
        if self.state() != "running":
            return False
        atomic_write_text(self.dir / CANCEL_ASKED, json.dumps({"at": time.time()}), durable=False)
        try:  # the group outlives a killed supervisor while its worker runs, so this reaches the worker too
            os.killpg(self.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state() == "running":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout} s")
            time.sleep(poll)
        return self.state()


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (Linux), after the command name; None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> float | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), None where unknown."""
    fields = _stat(pid)
    try:
        return float(fields[19]) if fields else None  # field 22 of stat
    except (IndexError, ValueError):
        return None


def _alive(pid: int | None, started: float | None = None) -> bool:
    """Whether ``pid`` runs and, when ``started`` is known, is the same process (not a recycled pid)."""
    if not pid:
        return False
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # a zombie has ended; only its exit status is left
        return False
    now_started = process_start(pid)
    if started is not None and now_started is not None and now_started != started:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child of this process that nobody reaped yet is not running
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def start(jobs_dir: str | Path, kind: str, argv: list[str], title: str = "", meta: dict | None = None,
          env: dict | None = None, files: dict[str, str] | None = None) -> Job:
    """Start ``python <argv>`` under a supervisor in a new session (it survives the page and the app).
    ``files`` (name -> text) are written into the job's folder first, and ``JOB_DIR`` in an argv item stands
    for that folder: a job runs from its saved config (``--config {job}/analysis.json``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(jobs_dir) / f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}"
    argv = [str(a).replace(JOB_DIR, str(folder)) for a in argv]
    job = Job(folder, kind, title or kind, argv, time.time(), None, meta or {})
    try:  # a full disk is named, and leaves no job folder behind (an empty one listed as nothing)
        with disk_full_named(folder):
            folder.mkdir(parents=True)
            for name, text in (files or {}).items():
                atomic_write_text(folder / name, text)
            job._save()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    proc = subprocess.Popen([sys.executable, "-m", "core.jobs.supervisor", str(folder)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parents[2])
    job.pid, job.pid_started = proc.pid, process_start(proc.pid)
    job._save()
    return job


def world_key(world: str | Path) -> str:
    """How a job records its world (``meta["world"]``, as ``registry.launch`` writes it): the folder, resolved."""
    return str(Path(world).resolve())


def list_jobs(folders: str | Path | Iterable[str | Path], kind: str | None = None,
              world: str | Path | None = None, unrecorded: bool = False) -> list[Job]:
    """Jobs under ``folders`` (one folder or several, e.g. ``Workspace.job_dirs``), newest first; unreadable
    folders are skipped. ``world``: that world's jobs only (``meta["world"]``, as ``registry.launch`` records it);
    ``unrecorded``: only the jobs that record no world (started before jobs recorded theirs), which a page lists
    apart rather than hiding them."""
    key = world_key(world) if world else None
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    out = []
    for folder in (f for d in dict.fromkeys(Path(d) for d in folders) for f in d.glob("*/job.json")):
        try:
            job = Job.load(folder.parent)
        except InputError:
            continue
        if unrecorded and job.meta.get("world"):
            continue
        if (kind is None or job.kind == kind) and (key is None or job.meta.get("world") == key):
            out.append(job)
    return sorted(out, key=lambda j: j.started_at, reverse=True)


def eta_seconds(p: dict, now: float) -> float | None:
    """Seconds left at the rate since the first batch was reported (``first_time``, ``first_done``); None
    until a later report shows that rate, or when done."""
    done, t0, d0 = p.get("done", 0.0), p.get("first_time"), p.get("first_done")
    if not 0 < done < 1 or t0 is None or d0 is None or done <= d0:
        return None
    return max(0.0, now - t0) * (1 - done) / (done - d0)


def _supervise(folder: Path) -> int:
    """Run the job's worker, pass SIGTERM on, record how it ended. Runs as ``python -m core.jobs.supervisor DIR``."""
    job = Job.load(folder)
    env = {**os.environ, PROGRESS_ENV: str(folder / "progress.json"), "PYTHONUNBUFFERED": "1"}
    with open(folder / "log.txt", "ab") as log:
        try:
            worker = subprocess.Popen([sys.executable, *job.argv], stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env)
        except OSError as e:
            log.write(f"workbench: cannot start the worker: {e}\n".encode())
            atomic_write_text(folder / "exit.json", json.dumps({"returncode": 127, "ended_at": time.time()}))
            return 127
        atomic_write_text(folder / "worker.json", json.dumps({"pid": worker.pid, "started": process_start(worker.pid)}))
        signal.signal(signal.SIGTERM, lambda *_: worker.send_signal(signal.SIGTERM))
        code = worker.wait()
    atomic_write_text(folder / "exit.json", json.dumps({"returncode": code, "ended_at": time.time()}))
    return code


if __name__ == "__main__":
    sys.exit(_supervise(Path(sys.argv[1])))
