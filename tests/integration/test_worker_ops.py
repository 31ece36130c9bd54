"""Operating workers: a worker exports the SDK's metrics and tsky's on its Prometheus port, and
`tsky server status` shows what each running worker uses (asked from the server: workers on any host)."""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.harness import TskyEnv, free_port, wait_until
from tests.integration.test_scale_limits import all_ended

pytestmark = pytest.mark.integration


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def series(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def test_worker_metrics_count_jobs_and_status_lists_each_workers_limits(tsky_env: TskyEnv) -> None:
    port = free_port()
    tsky_env.configure({"jobs": {"controller": {"launch_concurrency": 3, "watch_concurrency": 70}}})
    first = tsky_env.start_worker({"TSKY_METRICS_PORT": str(port)})
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", "--num-jobs", "3", "echo metrics").returncode == 0
    wait_until(lambda: all_ended(tsky_env, 3), 120, 1, what="3 jobs to end")

    text = scrape(port)
    assert series(text, "temporal_worker_task_slots_available") > 0  # the SDK's runtime metrics
    assert series(text, "tsky_job_status_changes", status="SUCCEEDED") == 3
    assert series(text, "tsky_launches", outcome="launched") == 3
    assert "tsky_jobs{" in text  # the in-progress gauge, refreshed from visibility

    second = tsky_env.start_worker()

    def listed() -> str | None:
        out = tsky_env.tsky("server", "status").stdout
        return out if "Workers:         2 polling" in out else None

    status = wait_until(listed, 60, 1, what="both workers in `tsky server status`")
    for worker in (first, second):
        assert re.search(rf"{worker.pid}@\S+: launch concurrency 3, watch concurrency 70, cached workflows", status)
    assert "Running jobs:    no limit in force" in status
