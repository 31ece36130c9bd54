"""The sweeper: its workflow on the time-skipping server with a scripted sweep activity (a failed sweep is
logged and the next one runs, the grace-period state travels from one sweep to the next, the wait between
sweeps is the one the activity reports), and the sweep activity's rules on a scripted survey."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from tests.workflows.fakes import time_skipping_env
from tsky.contract.activity_io import ActivityName, SweepInput, SweepResult
from tsky.contract.ids import CONTROL_QUEUE, LAUNCH_QUEUE, SWEEPER_WORKFLOW_ID
from tsky.ops.clouds.base import ClusterRecord
from tsky.ops.sweeping import ClusterView, JobLookup, Survey
from tsky.spec.settings import Settings
from tsky.worker.main import workflow_runner
from tsky.workflows import WORKFLOWS
from tsky.workflows.sweeper import SweeperState, SweeperWorkflow

pytestmark = pytest.mark.asyncio


async def test_sweeps_survive_failures_and_carry_the_grace_state() -> None:
    seen: list[SweepInput] = []

    @activity.defn(name=ActivityName.SWEEP)
    async def sweep(inp: SweepInput) -> SweepResult:
        seen.append(inp)
        if len(seen) == 1:
            raise ApplicationError("the cloud API is down", non_retryable=True)
        if len(seen) == 2:
            return SweepResult(orphans_since={"gcp/us-central1/old-1": 100.0}, live=3, next_sweep_seconds=600)
        return SweepResult(torn_down=["gcp/us-central1/old-1"], next_sweep_seconds=600)

    env = await time_skipping_env()
    try:
        async with (
            Worker(env.client, task_queue=CONTROL_QUEUE, workflows=WORKFLOWS, workflow_runner=workflow_runner()),
            Worker(env.client, task_queue=LAUNCH_QUEUE, activities=[sweep]),
        ):
            handle = await env.client.start_workflow(
                SweeperWorkflow.run, SweeperState(interval_seconds=60), id=SWEEPER_WORKFLOW_ID, task_queue=CONTROL_QUEUE
            )
            await env.sleep(61)  # the failed sweep, then one interval (the initial 60 s)
            state = await handle.query(SweeperWorkflow.status)
            assert state.sweeps == 2 and state.last_error is None and state.interval_seconds == 600
            assert state.orphans_since == {"gcp/us-central1/old-1": 100.0}
            await env.sleep(300)  # within the interval the activity asked for: no sweep
            assert (await handle.query(SweeperWorkflow.status)).sweeps == 2
            await env.sleep(301)
            state = await handle.query(SweeperWorkflow.status)
            assert state.sweeps == 3 and state.torn_down == 1 and state.orphans_since == {}
            assert seen[2].orphans_since == {"gcp/us-central1/old-1": 100.0}
            await handle.terminate()
    finally:
        await env.shutdown()


async def test_sweep_activity_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Which clusters one sweep tears down: ours, job not live, seen so for the grace period; never a live
    job's, never another installation's, never one sharing its name with another installation's."""
    from tsky.activities import sweeper as sweeping

    def view(name: str, job: JobLookup | None, ours: bool = True, backend: str = "gcp") -> ClusterView:
        record = ClusterRecord(name=name, backend=backend, region="r", job_id=1, nodes=1)
        return ClusterView(record=record, ours=ours, job=job)

    ended, unknown, running = JobLookup("SUCCEEDED", False), JobLookup("UNKNOWN", False), JobLookup("RUNNING", True)
    views = [
        view("old-ended", ended),
        view("new-unknown", unknown),
        view("live", running),
        view("theirs", ended, ours=False),
        view("twin", ended),
        view("twin", None, ours=False),
        view("stuck", unknown),
    ]

    async def fake_survey(settings: Settings, client: object) -> Survey:
        return Survey(clusters=views, errors={"aws": "throttled"})

    torn: list[str] = []

    class Backend:
        async def teardown(self, name: str, cluster: object) -> None:
            if name == "stuck":
                raise RuntimeError("API says no")
            torn.append(name)

    async def no_pool_orphans(*args: object) -> list[str]:  # pools have their own (integration) tests
        return []

    monkeypatch.setattr(sweeping, "survey", fake_survey)
    monkeypatch.setattr(sweeping, "get_backend", lambda name, settings: Backend())
    monkeypatch.setattr(sweeping, "cancel_orphaned_pool_workers", no_pool_orphans)
    monkeypatch.setattr(sweeping, "release_workers_of_ended_jobs", no_pool_orphans)
    settings = Settings(home=tmp_path, jobs={"sweeper": {"grace_seconds": 300, "interval_seconds": 42}})
    activities = sweeping.SweeperActivities(settings, client=None)  # type: ignore[arg-type]
    now = time.time()
    long_ago = {"gcp/r/old-ended": now - 400, "gcp/r/twin": now - 400, "gcp/r/stuck": now - 400}
    result = await ActivityEnvironment().run(activities.sweep_clusters, SweepInput(orphans_since=long_ago))

    assert torn == ["old-ended"] and result.torn_down == ["gcp/r/old-ended"]
    assert set(result.orphans_since) == {"gcp/r/new-unknown", "gcp/r/stuck"}  # waiting, or to retry
    assert result.orphans_since["gcp/r/stuck"] == long_ago["gcp/r/stuck"]
    assert result.live == 1 and result.next_sweep_seconds == 42
