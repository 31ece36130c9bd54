"""`tsky jobs queue` without listing every job ever run: the latest N by job id, the header still
counting every job in progress, and the truncation note only when older jobs exist."""

from __future__ import annotations

import re

import pytest

from tests.harness import TskyEnv, WorkerProc, wait_until
from tests.integration.test_scale_limits import all_ended, statuses, write_job

pytestmark = pytest.mark.integration


def ids_shown(output: str) -> list[int]:
    return [int(m) for m in re.findall(r"^(\d+)\s", output, re.M)]


def test_queue_shows_latest_jobs_and_counts_older_running_ones(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    gate = tsky_env.home / "gate"
    slow = write_job(tsky_env, name="slow", run=f"while [ ! -e {gate} ]; do sleep 0.2; done")
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(slow)).returncode == 0
    wait_until(lambda: statuses(tsky_env).get(1, {}).get("status") == "RUNNING", 60, 1, what="job 1 running")
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--num-jobs", "6", "true").returncode == 0
    wait_until(lambda: sum(j["status"] == "SUCCEEDED" for j in statuses(tsky_env).values()) == 6, 120, 1)

    latest = tsky_env.tsky("jobs", "queue", "--limit", "3").stdout
    assert ids_shown(latest) == [7, 6, 5], latest
    assert "In progress tasks: 1 RUNNING" in latest  # job 1, far below the window
    assert "Only showing the latest 3 managed jobs" in latest

    everything = tsky_env.tsky("jobs", "queue", "--limit", "10").stdout
    assert ids_shown(everything) == [7, 6, 5, 4, 3, 2, 1], everything
    assert "Only showing" not in everything

    running = tsky_env.tsky("jobs", "queue", "--status", "RUNNING", "--limit", "2").stdout
    assert ids_shown(running) == [1], running  # the window widens until it finds enough, or all
    assert "Only showing" not in running

    gate.touch()
    wait_until(lambda: all_ended(tsky_env, 7), 60, 1, what="all jobs to end")
