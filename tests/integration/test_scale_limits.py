"""Controller limits and several workers: the launch limit per worker process, the running-jobs limit
across all workers, and work shared by workers that come and go without any job running twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.harness import TskyEnv, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, queue_json

pytestmark = pytest.mark.integration

STAMP = 'echo "$SKYPILOT_MANAGED_JOB_ID {what} $(date +%s.%N)" >> {file}'


def stamped(file: Path, body: str) -> str:
    """Shell lines that record the job id with start and end times around `body`."""
    return f"{STAMP.format(what='start', file=file)}\n{body}\n{STAMP.format(what='end', file=file)}"


def write_job(env: TskyEnv, **spec: str) -> Path:
    return env.write("job.yaml", yaml.safe_dump(spec))


def intervals(file: Path) -> dict[int, tuple[float, float | None]]:
    spans: dict[int, tuple[float, float | None]] = {}
    for line in file.read_text().splitlines() if file.exists() else []:
        job, what, when = line.split()
        if what == "start":
            spans[int(job)] = (float(when), None)
        else:
            spans[int(job)] = (spans[int(job)][0], float(when))
    return spans


def max_overlap(spans: dict[int, tuple[float, float | None]]) -> int:
    """The most intervals open at one instant (an end at the same instant as a start does not overlap)."""
    edges = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values() if e is not None])
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


def statuses(env: TskyEnv) -> dict[int, dict[str, object]]:
    return {int(str(job["job_id"])): job for job in queue_json(env)}


def all_ended(env: TskyEnv, count: int) -> dict[int, dict[str, object]] | None:
    jobs = statuses(env)
    done = len(jobs) == count and all(j["status"] in ("SUCCEEDED", "CANCELLED", "FAILED") for j in jobs.values())
    return jobs if done else None


def test_launch_limit_bounds_concurrent_setups_per_worker(tsky_env: TskyEnv) -> None:
    tsky_env.configure({"jobs": {"controller": {"launch_concurrency": 2}}})
    tsky_env.start_worker()
    setups = tsky_env.home / "setups.txt"
    job = write_job(tsky_env, name="limited", setup=stamped(setups, "sleep 1.5"), run="true")
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--num-jobs", "6", str(job)).returncode == 0

    jobs = wait_until(lambda: all_ended(tsky_env, 6), 180, 1, what="6 jobs to end")
    assert {j["status"] for j in jobs.values()} == {"SUCCEEDED"}, jobs
    spans = intervals(setups)
    assert len(spans) == 6 and all(end is not None for _, end in spans.values()), spans
    assert max_overlap(spans) <= 2, spans


def test_running_limit_holds_jobs_pending_and_cancel_withdraws_a_waiter(tsky_env: TskyEnv) -> None:
    tsky_env.configure({"jobs": {"controller": {"max_running_jobs": 3}}})
    tsky_env.start_worker()
    runs, gate = tsky_env.home / "runs.txt", tsky_env.home / "gate"
    body = f"while [ ! -e {gate} ]; do sleep 0.2; done; sleep 1"
    job = write_job(tsky_env, name="capped", run=stamped(runs, body))
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--num-jobs", "7", str(job)).returncode == 0

    # Three jobs run (blocked on the gate); the other four wait PENDING with SkyPilot's detail line.
    wait_until(lambda: len(intervals(runs)) == 3, 120, what="three runs to start")

    def waiting() -> list[int] | None:
        jobs = statuses(tsky_env)
        ids = [
            i for i, j in jobs.items()
            if j["status"] == "PENDING" and json.dumps(j["tasks"]).count("Waiting for other jobs to launch")
        ]  # fmt: skip
        return ids if len(ids) == 4 else None

    pending = wait_until(waiting, 60, 1, what="four jobs waiting for a slot")
    assert len(intervals(runs)) == 3
    withdrawn = pending[-1]
    assert tsky_env.tsky("jobs", "cancel", "-y", str(withdrawn)).returncode == 0
    wait_until(lambda: statuses(tsky_env)[withdrawn]["status"] == "CANCELLED", 60, 1, what="the waiter cancelled")

    gate.touch()
    jobs = wait_until(lambda: all_ended(tsky_env, 7), 180, 1, what="all jobs to end")
    assert sorted(j["status"] for j in jobs.values()) == ["CANCELLED"] + ["SUCCEEDED"] * 6, jobs
    spans = intervals(runs)
    assert withdrawn not in spans and len(spans) == 6
    assert max_overlap(spans) <= 3, spans


def test_two_workers_share_jobs_and_survive_sigterm_and_kill(tsky_env: TskyEnv) -> None:
    first, second = tsky_env.start_worker(), tsky_env.start_worker()
    runs = tsky_env.home / "runs.txt"
    job = write_job(tsky_env, name="shared", run=stamped(runs, "sleep 4"))
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--num-jobs", "20", str(job)).returncode == 0

    wait_until(lambda: len(intervals(runs)) >= 5, 120, what="five runs to start")
    assert first.stop() == 0  # SIGTERM: a graceful stop hands its jobs over
    third = tsky_env.start_worker()
    wait_until(lambda: len(intervals(runs)) >= 12, 180, what="twelve runs to start")
    second.kill9()

    jobs = wait_until(lambda: all_ended(tsky_env, 20), 300, 1, what="20 jobs to end")
    assert {j["status"] for j in jobs.values()} == {"SUCCEEDED"}, jobs
    assert {j["recoveries"] for j in jobs.values()} == {0}, "watchers re-attached; no job was relaunched"
    starts = [line.split()[0] for line in runs.read_text().splitlines() if " start " in line]
    assert sorted(map(int, starts)) == list(range(1, 21)), "each run executed exactly once"
    assert third.proc.poll() is None
    assert no_tagged_processes("shared-")
