"""Issue 18 end to end through the CLI (real dev server, real worker, local backend): scheduled jobs,
`--after` dependencies, relaunching a failed pipeline, webhook notifications."""

from __future__ import annotations

import json
import time

import pytest

from tests.harness import TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import wait_status

pytestmark = pytest.mark.integration

QUICK = "name: tick\nrun: echo tick\n"


def schedule_runs(env: TskyEnv, name: str) -> list[dict[str, object]]:
    result = env.tsky("jobs", "queue", "--json", "-a", "--schedule", name)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_schedule_every_5s_launches_tagged_jobs_until_it_is_deleted(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    job = tsky_env.write("tick.yaml", QUICK)
    created = tsky_env.tsky("jobs", "schedule", "create", "ticker", str(job), "--every", "5s")
    assert created.returncode == 0, created.stdout + created.stderr
    assert "Schedule 'ticker' created: every 5s" in created.stdout

    listed = tsky_env.tsky("jobs", "schedule", "list")
    assert "ticker" in listed.stdout and "every 5s" in listed.stdout and "ACTIVE" in listed.stdout

    # Each run is an ordinary managed job, tagged with the schedule, that runs to its end.
    runs = wait_until(lambda: len(r := schedule_runs(tsky_env, "ticker")) >= 2 and r, timeout=120, what="2 runs")
    assert all(r["schedule"] == "ticker" and r["name"] == "tick" for r in runs)
    first = min(int(str(r["job_id"])) for r in runs)
    wait_status(tsky_env, first, "SUCCEEDED")
    unrelated = tsky_env.tsky("jobs", "launch", "-y", "-d", "-n", "other", "echo", "hi")
    assert unrelated.returncode == 0, unrelated.stderr
    assert all(r["name"] == "tick" for r in schedule_runs(tsky_env, "ticker"))

    described = tsky_env.tsky("jobs", "schedule", "describe", "ticker")
    assert described.returncode == 0, described.stderr
    assert "Overlap:         skip" in described.stdout and "Latest jobs:" in described.stdout

    deleted = tsky_env.tsky("jobs", "schedule", "delete", "ticker")
    assert deleted.returncode == 0, deleted.stderr
    count = len(schedule_runs(tsky_env, "ticker"))
    time.sleep(12)  # two more periods: a live schedule would have started more runs
    assert len(schedule_runs(tsky_env, "ticker")) == count
    assert tsky_env.tsky("jobs", "schedule", "describe", "ticker").returncode == 102
    assert "No schedules" in tsky_env.tsky("jobs", "schedule", "list").stdout


def test_bad_schedule_input_exits_2_and_creates_nothing(tsky_env: TskyEnv) -> None:
    job = tsky_env.write("tick.yaml", QUICK)
    both = tsky_env.tsky("jobs", "schedule", "create", "x", str(job), "--every", "5s", "--cron", "0 3 * * *")
    assert both.returncode == 2 and "exactly one of --cron" in both.stderr
    zone = tsky_env.tsky("jobs", "schedule", "create", "x", str(job), "--cron", "0 3 * * *", "--timezone", "Mars/Base")
    assert zone.returncode == 2 and "--timezone 'Mars/Base'" in zone.stderr
    overlap = tsky_env.tsky("jobs", "schedule", "create", "x", str(job), "--every", "1h", "--overlap", "never")
    assert overlap.returncode == 2 and "skip, buffer-one, allow-all" in overlap.stderr
    assert "Traceback" not in both.stderr + zone.stderr + overlap.stderr
