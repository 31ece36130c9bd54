"""Spot preemption on the real stack: the local simulator's regions, `tsky debug preempt`, recovery."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import pytest

from tests.harness import TskyEnv, WorkerProc, wait_until
from tests.integration.test_jobs_cli import wait_status
from tsky.client.jobs import get_job

pytestmark = pytest.mark.integration

TWO_REGIONS = {
    "local": {
        "regions": [
            # Clusters take a moment to boot, as VMs do, so RECOVERING lasts long enough to be seen.
            {
                "name": "east",
                "provision_seconds": 2,
                "instance_types": [{"name": "local", "price": 1.0, "spot_price": 0.2}],
            },
            {
                "name": "west",
                "provision_seconds": 2,
                "instance_types": [{"name": "local", "price": 1.1, "spot_price": 0.3}],
            },
        ]
    }
}

SPOT_JOB = """\
name: spotty
resources:
  use_spot: true
run: |
  for i in $(seq 1 30); do echo "step $i"; sleep 0.5; done
"""


class StatusRecorder:
    """Samples the job's status from visibility every 50 ms in a thread, as `tsky jobs queue` sees it."""

    def __init__(self, env: TskyEnv, job_id: int) -> None:
        self.env, self.job_id = env, job_id
        self.seen: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        client = await self.env.client()
        while not self.stop.is_set():
            row = await get_job(client, self.job_id)
            if row is not None and (not self.seen or self.seen[-1] != row.status.value):
                self.seen.append(row.status.value)
            await asyncio.sleep(0.05)

    def close(self) -> list[str]:
        self.stop.set()
        self.thread.join(10)
        return self.seen


def attempt_log(env: TskyEnv, attempt: int) -> Path:
    return env.home / "logs" / "jobs" / "1" / "task-0" / f"attempt-{attempt}" / "run.log"


# Slow (`./scripts/test.sh -m slow`): by default, preemption and recovery run end to end in the Quickstart,
# pipeline, pool and live-mount tests, and the region order in tests/workflows/test_recovery_table.py.
@pytest.mark.slow
def test_spot_job_preempted_twice_recovers_in_other_regions_and_succeeds(tsky_env: TskyEnv, worker: WorkerProc) -> None:
    tsky_env.configure(TWO_REGIONS)
    job = tsky_env.write("spot.yaml", SPOT_JOB)
    assert tsky_env.tsky("jobs", "launch", "-y", "-d", str(job)).returncode == 0
    recorder = StatusRecorder(tsky_env, 1)
    for attempt in (0, 1):
        wait_until(
            lambda a=attempt: attempt_log(tsky_env, a).exists() and "step 3" in attempt_log(tsky_env, a).read_text(),
            60,
            what=f"attempt {attempt} to run",
        )
        preempted = tsky_env.tsky("debug", "preempt", "1")
        assert preempted.returncode == 0, preempted.stderr
    wait_status(tsky_env, 1, "SUCCEEDED", timeout=120)
    seen = recorder.close()
    assert seen.count("RECOVERING") == 2, seen
    assert seen[-1] == "SUCCEEDED"

    job_row = json.loads(tsky_env.tsky("jobs", "queue", "--json").stdout)[0]
    assert job_row["recoveries"] == 2
    queue = tsky_env.tsky("jobs", "queue").stdout
    assert re.search(r"^1\s+-\s+spotty\s+1x\[CPU:1\+\]\[Spot\].*\s2\s+SUCCEEDED", queue, re.M), queue

    # Every attempt keeps its own log; the first two end where they were preempted.
    first = tsky_env.tsky("jobs", "logs", "1", "--attempt", "0")
    assert "step 3" in first.stdout and "step 30" not in first.stdout
    last = tsky_env.tsky("jobs", "logs", "1", "--attempt", "2")
    assert "step 30" in last.stdout

    # The timeline: cheapest region first, then away from the region just lost.
    controller = tsky_env.tsky("jobs", "logs", "--controller", "1").stdout
    launched = re.findall(r"Cluster launched: spotty-1\S*\. Resources: 1x Local \((\w+)\)", controller)
    assert launched == ["east", "west", "east"], controller
    assert controller.count("recovering: Cluster preempted or failed") == 2
    assert tsky_env.tsky("status").stdout.strip() == "No live clusters."
