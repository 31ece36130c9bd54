"""Lifecycle limits end to end (docs/lifecycle.md): the CLI, a real dev server, a real worker, the local
backend, small durations. One scenario per feature: max_duration, the debug hold, cost and the budget cap,
spot → on-demand fallback."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.harness import TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import no_tagged_processes, wait_status
from tests.integration.test_recovery import SPOT_JOB, TWO_REGIONS, attempt_log

pytestmark = pytest.mark.integration

# $1 per node-second on demand, 50 cents spot: a budget of a few dollars lasts a few seconds.
PRICED = {"local": {"regions": [{"name": "local", "instance_types": [{"name": "local", "price": 3600.0,
                                                                      "spot_price": 1800.0}]}]}}  # fmt: skip


def job_json(env: TskyEnv, job_id: int = 1) -> dict[str, Any]:
    rows = json.loads(env.tsky("jobs", "queue", "--json", "-a").stdout)
    return next(r for r in rows if r["job_id"] == job_id)


def no_live_clusters(env: TskyEnv) -> bool:
    return env.tsky("status").stdout.strip() == "No live clusters."


def test_max_duration_stops_the_task_fails_it_and_tears_down(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    launched = tsky_env.tsky("jobs", "launch", "-y", "-d", "--max-duration", "3s", "sleep", "60")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    wait_status(tsky_env, 1, "FAILED", timeout=60)
    job = job_json(tsky_env)
    assert job["tasks"][0]["failure_reason"] == "exceeded max_duration 3s"
    assert "Failure: exceeded max_duration 3s" in tsky_env.tsky("jobs", "queue", "-v").stdout
    wait_until(lambda: no_live_clusters(tsky_env), 30, what="the cluster torn down")
    assert no_tagged_processes("sky-cmd-1")
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert "exceeded max_duration 3s: stopping it" in controller
    assert "torn down" in controller


def test_keep_on_failure_keeps_the_cluster_until_cancel(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    launched = tsky_env.tsky("jobs", "launch", "-y", "-d", "--keep-on-failure", "30m", "exit 3")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    # A long hold: the CLI calls below take long on a loaded machine; the cancel ends it anyway.
    held = wait_until(lambda: (job := job_json(tsky_env))["tasks"][0]["held_until"] and job, 60, what="the hold")
    assert held["status"] == "FAILED"
    assert "sky-cmd-1" in tsky_env.tsky("status").stdout  # the user can still get on it
    assert re.search(r"kept for debugging until \d\d:\d\d UTC", tsky_env.tsky("jobs", "queue", "-v").stdout)
    # Following the job stops once it has failed: only its hold goes on.
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert re.search(r"kept for debugging until .*: cd \S+/sky-cmd-1/node-0", controller), controller

    cancelled = tsky_env.tsky("jobs", "cancel", "-y", "1")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "scheduled to be cancelled" in cancelled.stdout
    wait_until(lambda: no_live_clusters(tsky_env), 30, what="the held cluster torn down")
    wait_until(lambda: not job_json(tsky_env)["tasks"][0]["held_until"], 30, what="the hold to end")
    job = job_json(tsky_env)
    assert job["status"] == "FAILED"  # the program's outcome; the cancel only ended the hold
    assert "exit code 3" in job["tasks"][0]["failure_reason"]
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert "Debug hold of sky-cmd-1 ended by a cancel." in controller


def test_budget_stops_the_job_and_the_cost_is_shown(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    tsky_env.configure(PRICED)
    launched = tsky_env.tsky("jobs", "launch", "-y", "-d", "--max-cost", "3", "sleep", "60")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    wait_status(tsky_env, 1, "FAILED", timeout=60)
    job = job_json(tsky_env)
    reason = job["tasks"][0]["failure_reason"]
    assert reason.startswith("exceeded max_cost $3.00 (spent $3."), reason
    assert 3 <= job["cost"]["total_usd"] < 4
    assert job["cost"]["wasted_usd"] == pytest.approx(job["cost"]["total_usd"])  # the attempt bought nothing
    queue = tsky_env.tsky("jobs", "queue", "-v").stdout
    assert "COST" in queue
    assert re.search(r"\$3\.\d\d\s*$", queue, re.M), queue
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert re.search(r"attempt 0 cost \$3\.\d\d \(on-demand, \$3,600\.00/h for \d+s\)", controller), controller
    assert "estimated from catalog prices" in controller
    wait_until(lambda: no_live_clusters(tsky_env), 30, what="the cluster torn down")


def test_spot_falls_back_to_on_demand_after_a_preemption(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    tsky_env.configure({**TWO_REGIONS, "jobs": {"spot_fallback_after": 1}})
    job = tsky_env.write("spot.yaml", SPOT_JOB)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    log = attempt_log(tsky_env, 0)
    wait_until(lambda: log.exists() and "step 3" in log.read_text(), 60, what="the first attempt to run")
    preempted = tsky_env.tsky("debug", "preempt", "1")
    assert preempted.returncode == 0, preempted.stderr
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=90)
    assert job_json(tsky_env)["recoveries"] == 1
    assert job_json(tsky_env)["tasks"][0]["on_demand_since_attempt"] == 1
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    assert "launching it on on-demand instances from now on" in controller
    launched = re.findall(r"Cluster launched: spotty-1\S*\. Resources: 1x Local \(\w+\) local(\[Spot\])?", controller)
    assert launched == ["[Spot]", ""], controller
