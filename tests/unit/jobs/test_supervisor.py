"""Background jobs: they report progress, end in the right state however they end, and cancel gracefully."""

import textwrap
import time

import pandas as pd
import pytest

from core.drift.analysis import Analysis
from core.jobs import supervisor as jobs

WORKER = textwrap.dedent("""
    import sys, time
    from core.progress import cancel_flag, report_progress
    stop = cancel_flag()
    steps = int(sys.argv[1])
    for i in range(steps):
        if stop():
            print("stopping at", i, flush=True)
            sys.exit(130)
        report_progress(i + 1, steps, f"step {i + 1}")
        time.sleep(0.05)
    print("finished", flush=True)
    sys.exit(int(sys.argv[2]))
""")


def start_worker(tmp_path, steps: int, code: int = 0) -> jobs.Job:
    return jobs.start(tmp_path, "test", ["-c", WORKER, str(steps), str(code)], title="a test job")


def test_a_job_reports_progress_and_ends_done(tmp_path):
    job = start_worker(tmp_path, 10)
    assert job.wait(30) == "done"
    p = job.progress()
    assert p["done"] == 1.0 and p["message"] == "step 10"
    assert "finished" in job.log_tail()
    again = jobs.Job.load(job.dir)  # another page process re-attaches from the folder alone
    assert again.state() == "done" and again.title == "a test job"


def test_a_failing_worker_ends_failed_with_its_output(tmp_path):
    job = start_worker(tmp_path, 2, code=3)
    assert job.wait(30) == "failed"
    assert job.exit_info()["returncode"] == 3


def test_cancel_stops_the_worker_at_its_next_check(tmp_path):
    job = start_worker(tmp_path, 10_000)
    deadline = time.monotonic() + 20
    while job.progress()["done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.state() == "running"
    assert job.cancel()
    assert job.wait(180) == "cancelled"  # seconds normally; it took over 60 s once under load on 2 cores
    assert "stopping at" in job.log_tail()
    assert not job.cancel()  # nothing left to cancel


SLOW_STOP = textwrap.dedent("""
    import sys, time
    from core.progress import cancel_flag, report_progress
    stop = cancel_flag()
    time.sleep(1.0)  # importing torch, say: no report yet
    while True:
        report_progress(0.5, 1, "scoring")
        if stop():
            time.sleep(1.5)  # the batch under way finishes first
            sys.exit(130)
        time.sleep(0.05)
""")


def test_a_job_says_it_is_starting_then_cancelling_until_it_stops(tmp_path):
    job = jobs.start(tmp_path, "test", ["-c", SLOW_STOP], title="slow to stop")
    assert job.progress()["message"] == jobs.STARTING  # before the worker's first report: what it is doing
    assert _wait_for(lambda: job.progress()["message"] == "scoring")
    assert not job.cancelling
    assert job.cancel()
    assert job.cancelling and job.state() == "running"  # at once, on every page that reads the folder
    assert jobs.Job.load(job.dir).cancelling
    assert job.wait(60) == "cancelled" and not job.cancelling


def _wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def test_a_killed_supervisor_leaves_the_job_running_while_its_worker_lives(tmp_path):
    import os
    import signal

    job = start_worker(tmp_path, 10_000)
    assert _wait_for(lambda: job.progress()["done"] > 0)
    worker = job.worker()["pid"]
    os.kill(job.pid, signal.SIGKILL)  # the supervisor only: its worker goes on, as after an OOM kill of it
    assert _wait_for(lambda: not jobs._alive(job.pid))
    assert job.state() == "running" and job.live_pids() == [worker]
    assert job.cancel()  # reaches the orphaned worker through its process group
    assert _wait_for(lambda: job.state() != "running", 60)
    assert job.state() == "died"  # nobody recorded its exit code


def test_a_killed_process_group_reads_as_died(tmp_path):
    import os
    import signal

    job = start_worker(tmp_path, 10_000)
    assert _wait_for(lambda: job.worker() is not None)
    os.killpg(job.pid, signal.SIGKILL)
    assert _wait_for(lambda: job.state() != "running")
    assert job.state() == "died"


def test_a_recycled_pid_is_not_taken_for_the_job(tmp_path):
    import os

    job = jobs.Job(tmp_path, "test", "t", [], time.time(), os.getpid(), {}, pid_started=1.0)  # another start time
    assert jobs.process_start(os.getpid()) not in (None, 1.0)
    assert job.state() == "died"
    job.pid_started = jobs.process_start(os.getpid())
    assert job.state() == "running"


def test_list_jobs_newest_first_and_skips_junk(tmp_path):
    a = start_worker(tmp_path, 1)
    b = start_worker(tmp_path, 1)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "job.json").write_text("{not json")
    assert [j.id for j in jobs.list_jobs(tmp_path)] == [b.id, a.id]
    assert jobs.list_jobs(tmp_path, kind="other") == []
    a.wait(30), b.wait(30)


@pytest.mark.slow
def test_score_and_perturb_run_as_jobs_on_the_quick_world(tmp_path, quick_world):
    """Jobs run the engine's worker (core.jobs.worker) from the config saved in the job folder: settings that have
    no command-line flag (labels, answer template, tau) reach the analysis unchanged."""
    from core.drift.config import AnalysisConfig
    from core.drift.job import ScoreOptions
    from core.jobs import registry
    from core.perturb.job import PerturbOptions

    out = tmp_path / "analysis"
    cfg = AnalysisConfig.from_world(quick_world, limit=3, labels=["Edema", "Pneumonia"], tau=0.2,
                                    template=" </think> Answer:", positions="end")
    argv, files = registry.command("score", cfg, ScoreOptions(out=str(out), cache=False))
    job = jobs.start(tmp_path / "runs", "score", argv, files=files)
    assert job.wait(120) == "done", job.log_tail()
    assert job.argv[:3] == ["-m", "core.jobs.worker", "score"] and (job.dir / "config.json").is_file()
    assert job.progress()["done"] == 1.0
    result = Analysis.load(out)
    assert result.config == cfg  # labels, template, tau: through the job into config.json
    assert set(result.tokens["checkpoint"]) >= {"base"} and len(result.beliefs) > 0
    assert {c for c in result.beliefs if c.startswith("p:")} == {"p:Edema", "p:Pneumonia"}

    pairs = tmp_path / "pairs.parquet"
    argv, files = registry.command("perturb", AnalysisConfig.from_world(quick_world, limit=20),
                                   PerturbOptions(out=str(pairs), find="opacity", replace="shadow", mode="probe"))
    job = jobs.start(tmp_path / "runs", "perturb", argv, files=files)
    assert job.wait(120) == "done", job.log_tail()
    df = pd.read_parquet(pairs)
    assert {"traj_id", "checkpoint", "answer_before", "answer_after", "flip"} <= set(df.columns)


def test_a_worker_whose_supervisor_was_killed_still_says_how_it_ended(tmp_path):
    import os
    import signal

    worker = "import time\nfrom core.progress import record_worker_exit\ntime.sleep(1.5)\nrecord_worker_exit(0)\n"
    job = jobs.start(tmp_path, "test", ["-c", worker], title="orphan")
    assert _wait_for(lambda: job.worker() is not None)
    os.kill(job.pid, signal.SIGKILL)
    assert _wait_for(lambda: job.state() != "running", 30)
    assert job.state() == "done" and not (job.dir / "exit.json").exists()


def test_the_cli_records_its_exit_code_for_its_job(tmp_path, monkeypatch):
    from workbench import cli

    monkeypatch.setenv(jobs.PROGRESS_ENV, str(tmp_path / "progress.json"))
    assert cli.main(["score", "--out", str(tmp_path / "o")]) == 2  # neither --world nor --base
    job = jobs.Job(tmp_path, "score", "t", [], time.time(), None)
    assert job.exit_info()["returncode"] == 2 and job.state() == "failed"
