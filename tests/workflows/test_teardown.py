"""Teardown that fails, on the time-skipping server with a fake backend whose teardown fails: retried until
the backend confirms; a cancel arriving mid-teardown waits for it; past the give-up window the job ends
FAILED_CONTROLLER ("resources may have leaked") and the sweeper takes the leaked cluster down."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.testing import ActivityEnvironment

from tests.workflows.fakes import FakeCloud, running
from tests.workflows.test_recovery_table import SPOT_JOB, request
from tsky.activities import sweeper
from tsky.contract.activity_io import ActivityName, SweepInput, TeardownInput
from tsky.contract.ids import CONTROL_QUEUE
from tsky.ops import sweeping
from tsky.ops.clouds.base import ClusterRecord
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus as S
from tsky.workflows.managed_job import ManagedJobWorkflow

pytestmark = pytest.mark.asyncio


@dataclass
class FlakyTeardownCloud(FakeCloud):
    """A backend whose teardown fails `failures` times (-1: always) before it confirms; with `gate`, each
    teardown call first waits (heartbeating) until the gate opens."""

    failures: int = 0
    gate: asyncio.Event | None = None
    calls: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False  # a teardown in flight was cancelled (it must never be)

    @activity.defn(name=ActivityName.TEARDOWN)
    async def teardown(self, inp: TeardownInput) -> None:
        self.calls += 1
        self.started.set()
        try:
            while self.gate is not None and not self.gate.is_set():
                activity.heartbeat()
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.failures < 0 or self.calls <= self.failures:
            raise RuntimeError("cloud API: instance deletion throttled")
        self.torn_down.append(inp.cluster_name)


async def test_failing_teardown_is_retried_until_the_backend_confirms() -> None:
    cloud = FlakyTeardownCloud(failures=5)
    async with running(cloud) as env:
        result = await env.client.execute_workflow(
            ManagedJobWorkflow.run, request(SPOT_JOB), id="tsky-job-1", task_queue=CONTROL_QUEUE
        )
    assert result.status is S.SUCCEEDED
    assert cloud.calls == 6 and cloud.torn_down == ["train-1"]
    assert any(line.endswith("Cluster train-1 torn down.") for line in cloud.log)


async def test_cancel_arriving_mid_teardown_waits_for_it() -> None:
    cloud = FlakyTeardownCloud(failures=2, gate=asyncio.Event())  # `run` exits 0, then the teardown hangs
    async with running(cloud) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run, request(SPOT_JOB), id="tsky-job-1", task_queue=CONTROL_QUEUE
        )
        with env.auto_time_skipping_disabled():
            await asyncio.wait_for(cloud.started.wait(), 30)
            await handle.cancel()
            await _wait_for_event(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)
            await asyncio.sleep(1)  # time for a wrongly delivered cancel to reach the teardown
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
            assert cloud.torn_down == [] and not cloud.cancelled
            cloud.gate.set()  # type: ignore[union-attr]
        with pytest.raises(WorkflowFailureError) as info:  # the cancel is honoured once the teardown is done
            await handle.result()
        assert isinstance(info.value.cause, CancelledError)
    assert not cloud.cancelled and cloud.calls == 3 and cloud.torn_down == ["train-1"]


async def test_teardown_failing_past_the_give_up_window_fails_controller_then_the_sweeper_cleans_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cloud = FlakyTeardownCloud(failures=-1)
    async with running(cloud) as env:
        result = await env.client.execute_workflow(
            ManagedJobWorkflow.run, request(SPOT_JOB), id="tsky-job-1", task_queue=CONTROL_QUEUE
        )
        assert result.status is S.FAILED_CONTROLLER
        assert "Failed to clean up train-1, resources may have leaked" in (result.failure_reason or "")
        assert cloud.calls > 10 and cloud.live_clusters() == {"train-1"}  # retried for the whole window

        # The sweeper finds the leaked cluster, looks its job up in Temporal (ended) and tears it down
        # once the cloud lets it.
        cloud.failures = 0

        async def listed(settings: Settings) -> tuple[list[ClusterRecord], dict[str, str]]:
            records = [
                ClusterRecord(name=n, backend="local", region="a", job_id=1, nodes=1) for n in cloud.live_clusters()
            ]
            return records, {}

        class Backend:
            async def teardown(self, name: str, cluster: object) -> None:
                await cloud.teardown(TeardownInput(cluster_name=name, backend="local"))

        async def no_pools(*args: object) -> list[str]:  # pools have their own (integration) tests
            return []

        monkeypatch.setattr(sweeping, "list_all_clusters", listed)
        monkeypatch.setattr(sweeping, "live_pool_worker_clusters", no_pools)
        monkeypatch.setattr(sweeper, "get_backend", lambda name, settings: Backend())
        for helper in ("cancel_orphaned_pool_workers", "release_workers_of_ended_jobs"):
            monkeypatch.setattr(sweeper, helper, no_pools)
        settings = Settings(home=tmp_path, jobs={"sweeper": {"grace_seconds": 0}})
        activities = sweeper.SweeperActivities(settings, env.client)
        swept = await ActivityEnvironment().run(activities.sweep_clusters, SweepInput(orphans_since={}))
    assert swept.torn_down == ["local/a/train-1"]
    assert cloud.live_clusters() == set()


async def _wait_for_event(handle: object, event_type: EventType.ValueType) -> None:
    for _ in range(300):
        history = await handle.fetch_history()  # type: ignore[attr-defined]
        if any(e.event_type == event_type for e in history.events):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"event {event_type} never appeared")
