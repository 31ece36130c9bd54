"""Pool jobs on the time-skipping server with fake activities: a job takes a whole worker, restarts and
recoveries go through the pool, workers outlive the jobs, and a missing pool fails the job."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment

from tests.workflows.fakes import LOST, FakeCloud
from tests.workflows.fakes import running as fakes_running
from tsky.client.pools import fingerprint
from tsky.contract.activity_io import ActivityName, LaunchInput, LaunchResult, WatchClusterInput
from tsky.contract.ids import CONTROL_QUEUE, job_workflow_id, pool_workflow_id
from tsky.contract.job import JobRequest, JobResult
from tsky.contract.pool_state import PoolApply, PoolSnapshot, PoolState
from tsky.spec.loader import load_pipeline, load_pool
from tsky.spec.status import ManagedJobStatus as S
from tsky.workflows.managed_job import ManagedJobWorkflow
from tsky.workflows.pool import PoolWorkflow

pytestmark = pytest.mark.asyncio

POOL = "pool:\n  workers: 2\nsetup: echo warm\n"


# Clusters whose idle worker the fake watcher reports lost (once each).
LOSE_WHEN_IDLE: set[str] = set()


@activity.defn(name=ActivityName.WATCH_CLUSTER)
async def watch_cluster(inp: WatchClusterInput) -> str:
    """An idle worker that never fails (unless listed in LOSE_WHEN_IDLE): watch until it is stopped."""
    if inp.cluster.name in LOSE_WHEN_IDLE:
        LOSE_WHEN_IDLE.discard(inp.cluster.name)
        return f"Cluster {inp.cluster.name} lost: node 0 is PREEMPTED"
    while True:
        activity.heartbeat()
        await asyncio.sleep(0.05)


def running(cloud: FakeCloud) -> AbstractAsyncContextManager[WorkflowEnvironment]:
    return fakes_running(cloud, watch=[watch_cluster])


async def apply_pool(client: Client, text: str = POOL) -> None:
    spec, task = load_pool(text)
    start = WithStartWorkflowOperation(
        PoolWorkflow.run,
        PoolState(name="p"),
        id=pool_workflow_id("p"),
        task_queue=CONTROL_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    req = PoolApply(task=task, spec=spec, fingerprint=fingerprint(task))
    await client.execute_update_with_start_workflow(PoolWorkflow.apply, req, start_workflow_operation=start)


async def run_pool_job(client: Client, yaml_text: str, job_id: int = 1, pool: str = "p") -> JobResult:
    pipeline = load_pipeline(yaml_text)
    req = JobRequest(
        job_id=job_id,
        name=pipeline.name,
        pipeline=pipeline,
        user="tester",
        user_hash="abcd1234",
        submitted_at=datetime.now(UTC),
        pool=pool,
    )
    return await client.execute_workflow(
        ManagedJobWorkflow.run, req, id=job_workflow_id(job_id), task_queue=CONTROL_QUEUE
    )


async def down(client: Client) -> None:
    handle = client.get_workflow_handle(pool_workflow_id("p"))
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()


async def snapshot(client: Client) -> PoolSnapshot:
    return await client.get_workflow_handle(pool_workflow_id("p")).query(PoolWorkflow.snapshot)


async def test_a_failed_run_restarts_on_a_worker_and_no_worker_is_torn_down() -> None:
    cloud = FakeCloud(run_script=[[1], [0]])
    job = "name: j\nsetup: never on a pool\nrun: python step.py\nresources:\n  job_recovery:\n"
    job += "    max_restarts_on_errors: 1\n"
    async with running(cloud) as env:
        await apply_pool(env.client)
        result = await run_pool_job(env.client, job)
        assert result.status is S.SUCCEEDED
        attempts = result.tasks[0].attempts
        assert [a.cause for a in attempts] == ["run exit code 1", "succeeded"]
        assert {a.cluster_name for a in attempts} <= {"p-w1", "p-w2"}
        assert cloud.torn_down == []  # the job ended; the workers stay
        # The pool's setup ran once per worker; the job's own setup never ran.
        assert sorted(p[1] for p in cloud.phases if p[0] == "setup") == ["p-w1", "p-w2"]
        pool = await snapshot(env.client)
        assert sorted((w.worker_id, w.status.value) for w in pool.workers) == [(1, "READY"), (2, "READY")]
        await down(env.client)
    assert sorted(cloud.torn_down) == ["p-w1", "p-w2"]


async def test_a_worker_lost_under_a_job_is_replaced_and_the_job_recovers_elsewhere() -> None:
    cloud = FakeCloud(run_script=[LOST, [0]])
    async with running(cloud) as env:
        await apply_pool(env.client)
        result = await run_pool_job(env.client, "name: j\nrun: python step.py\n")
        assert result.status is S.SUCCEEDED
        task = result.tasks[0]
        assert task.recovery_count == 1
        lost, rerun = (a.cluster_name for a in task.attempts)
        assert lost != rerun
        for _ in range(100):  # the replacement comes up
            pool = await snapshot(env.client)
            if len([w for w in pool.workers if w.status.value == "READY"]) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(w.cluster_name for w in pool.workers) == sorted([rerun, "p-w3"])
        assert lost in cloud.torn_down
        await down(env.client)
    assert cloud.live_clusters() == set()


async def test_a_job_for_a_pool_that_does_not_exist_fails_no_resource() -> None:
    cloud = FakeCloud()
    async with running(cloud) as env:
        result = await run_pool_job(env.client, "name: j\nrun: echo hi\n", pool="nope")
    assert result.status is S.FAILED_NO_RESOURCE
    assert result.failure_reason == "Pool 'nope' does not exist."
    assert cloud.launched == []


async def test_an_idle_worker_preempted_is_torn_down_and_replaced() -> None:
    cloud = FakeCloud()
    LOSE_WHEN_IDLE.add("p-w1")
    async with running(cloud) as env:
        await apply_pool(env.client)
        for _ in range(200):
            pool = await snapshot(env.client)
            if sorted((w.worker_id, w.status.value) for w in pool.workers) == [(2, "READY"), (3, "READY")]:
                break
            await asyncio.sleep(0.05)
        assert sorted((w.worker_id, w.status.value) for w in pool.workers) == [(2, "READY"), (3, "READY")]
        assert cloud.torn_down == ["p-w1"]
        await down(env.client)
    assert cloud.live_clusters() == set()


@dataclass
class FlakyLaunchCloud(FakeCloud):
    """A backend whose launch API errors `failures` times (an outage) before it works again."""

    failures: int = 0

    @activity.defn(name=ActivityName.LAUNCH)
    async def launch(self, inp: LaunchInput) -> LaunchResult:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("cloud API: 503 Service Unavailable")
        return await super().launch(inp)


async def test_a_worker_whose_launch_errors_past_its_retries_backs_off_and_comes_up() -> None:
    # The first launch activity of one worker fails all three of its tries: like a job, the worker waits
    # out the launch backoff and tries again, instead of dying with whatever the failed tries left behind.
    cloud = FlakyLaunchCloud(failures=3)
    async with running(cloud) as env:
        await apply_pool(env.client, "pool:\n  workers: 1\nsetup: echo warm\n")
        # Time skips while the job waits. (Before, the worker's workflow failed and the job waited for ever.)
        result = await asyncio.wait_for(run_pool_job(env.client, "name: j\nrun: echo hi\n"), timeout=120)
        assert result.status is S.SUCCEEDED
        assert [a.cluster_name for a in result.tasks[0].attempts] == ["p-w1"]
        pool = await snapshot(env.client)
        assert [(w.worker_id, w.status.value) for w in pool.workers] == [(1, "READY")]
        assert len(cloud.launches) == 1  # the second activity; the first never got an answer
        await down(env.client)
    assert cloud.live_clusters() == set()
