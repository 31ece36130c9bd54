"""Record the histories the replay tests check: `.venv/bin/python -m tests.replay.record`.

Each scenario runs the real workflow code on the time-skipping server with fake activities and saves the
history as JSON under `tests/replay/histories/<workflow>/<scenario>.json`; name scenarios to record just
those. Re-record deliberately when a change to the command sequence is guarded by `workflow.patched`, and
keep the old file under a new name so the unpatched branch stays replayed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.workflows.fakes import LOST, PRECHECK, FakeCloud, running
from tests.workflows.test_orchestration import JOB, PIPE3, Outside, notifying, with_orchestration
from tests.workflows.test_pool_workflow import apply_pool, down, run_pool_job, watch_cluster
from tests.workflows.test_recovery_table import CKPT_JOB, SPOT_JOB, request
from tsky.activities.scheduling import ended_jobs, request_slot
from tsky.client.jobs import allocate_job_ids
from tsky.contract.activity_io import ActivityName, SweepInput, SweepResult
from tsky.contract.ids import (
    CONTROL_QUEUE,
    ID_REGISTRY_WORKFLOW_ID,
    SCHEDULER_WORKFLOW_ID,
    SWEEPER_WORKFLOW_ID,
    job_workflow_id,
    pool_worker_workflow_id,
    pool_workflow_id,
)
from tsky.contract.job import GRACEFUL_CANCEL_SIGNAL, GracefulCancel, JobRequest
from tsky.contract.orchestration import Relaunch, ScheduledRun
from tsky.contract.pool_state import POOL_WORKER_WORKFLOW, POOL_WORKFLOW
from tsky.spec.loader import load_pipeline
from tsky.workflows.managed_job import ManagedJobWorkflow
from tsky.workflows.scheduled_job import ScheduledJobWorkflow
from tsky.workflows.sweeper import SweeperState, SweeperWorkflow

HISTORIES = Path(__file__).parent / "histories"

PIPELINE = "name: pipe\n---\nname: train\nrun: x\n---\nname: eval\nrun: y\n"
RESTARTS = "name: t\nresources:\n  job_recovery:\n    max_restarts_on_errors: 1\nsetup: s\nrun: exit 1\n"


async def _job(client: Client, yaml_text: str) -> WorkflowHandle[ManagedJobWorkflow, object]:
    handle = await client.start_workflow(
        ManagedJobWorkflow.run, request(yaml_text), id="tsky-job-1", task_queue=CONTROL_QUEUE
    )
    await handle.result()
    return handle  # type: ignore[return-value]


async def _cancelled(client: Client, cloud: FakeCloud, grace_seconds: float | None = None) -> Handles:
    handle = await client.start_workflow(
        ManagedJobWorkflow.run, request(SPOT_JOB), id="tsky-job-1", task_queue=CONTROL_QUEUE
    )
    await asyncio.wait_for(cloud.run_started.wait(), 30)
    if grace_seconds is not None:  # what `tsky jobs cancel --graceful` sends before the cancel
        await handle.signal(GRACEFUL_CANCEL_SIGNAL, GracefulCancel(grace_seconds=grace_seconds))
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):  # cancelled, as intended
        await handle.result()
    return [handle]


async def _registry(client: Client) -> Handles:
    for count in (1, 3, 1):
        await allocate_job_ids(client, count)
    handle = client.get_workflow_handle(ID_REGISTRY_WORKFLOW_ID)
    await handle.terminate("recording done")
    return [handle]


async def _scheduled(client: Client, priorities: tuple[int, ...] = (0, 0)) -> Handles:
    """Jobs under a running limit of one: the later ones wait for the first's slot (higher priority first)."""
    jobs = []
    for job_id, priority in enumerate(priorities, start=1):
        req = request(SPOT_JOB, job_id=job_id)
        policy = req.policy.model_copy(update={"max_running_jobs": 1})
        req = req.model_copy(update={"policy": policy, "priority": priority})
        jobs.append(
            await client.start_workflow(
                ManagedJobWorkflow.run, req, id=job_workflow_id(job_id), task_queue=CONTROL_QUEUE
            )
        )
    for job in jobs:
        await job.result()
    scheduler = client.get_workflow_handle(SCHEDULER_WORKFLOW_ID)
    await scheduler.terminate("recording done")
    return [scheduler, jobs[1]]


async def _swept(client: Client, env: WorkflowEnvironment) -> Handles:
    handle = await client.start_workflow(
        SweeperWorkflow.run, SweeperState(interval_seconds=60), id=SWEEPER_WORKFLOW_ID, task_queue=CONTROL_QUEUE
    )
    await env.sleep(200)  # a failed sweep, then two that report an orphan and tear it down
    await handle.terminate("recording done")
    return [handle]


async def _pooled(client: Client) -> Handles:
    """A pool of two, a job that fails once and restarts on a worker, then `down`."""
    await apply_pool(client)
    job = "name: j\nrun: x\nresources:\n  job_recovery:\n    max_restarts_on_errors: 1\n"
    await run_pool_job(client, job)
    await down(client)
    return [
        client.get_workflow_handle(pool_workflow_id("p")),
        client.get_workflow_handle(pool_worker_workflow_id("p", 1)),
        client.get_workflow_handle(job_workflow_id(1)),
    ]


_sweeps = 0


@activity.defn(name=ActivityName.SWEEP)
async def _sweep(inp: SweepInput) -> SweepResult:
    global _sweeps
    _sweeps += 1
    if _sweeps == 1:
        raise ApplicationError("the cloud API is down", non_retryable=True)
    if _sweeps == 2:
        return SweepResult(orphans_since={"local/local/old-1": 100.0}, next_sweep_seconds=60)
    return SweepResult(torn_down=["local/local/old-1"], next_sweep_seconds=60)


# -- orchestration (issue 18): the fakes of what lies outside a job, shared by these scenarios
_outside = Outside(ended={5: "FAILED"}, failures_left=3)
_outside.released.set()


async def _orchestrated(client: Client, req: JobRequest) -> Handles:
    handle = await client.start_workflow(
        ManagedJobWorkflow.run, req, id=job_workflow_id(req.job_id), task_queue=CONTROL_QUEUE
    )
    await handle.result()
    return [handle]


async def _scheduled_run(client: Client) -> Handles:
    handle = await client.start_workflow(
        ScheduledJobWorkflow.run,
        ScheduledRun(schedule="nightly", pipeline=load_pipeline(JOB), name="train", user="alice"),
        id="tsky-schedule-nightly-2026-01-01T03:00:00Z",
        task_queue=CONTROL_QUEUE,
    )
    await handle.result()
    return [handle, client.get_workflow_handle(job_workflow_id(7))]


_RELAUNCH = Relaunch(of_job=3, skip_tasks=[0], task_ids=["old-0", "old-1", "old-2"]).model_dump()


Handles = list[WorkflowHandle]  # type: ignore[type-arg]
Run = Callable[[Client, FakeCloud, WorkflowEnvironment], Awaitable[Handles]]


def job(yaml_text: str) -> Run:
    async def run(client: Client, cloud: FakeCloud, env: WorkflowEnvironment) -> Handles:
        return [await _job(client, yaml_text)]

    return run


# (scenario, fake cloud script, how it runs, the workflow type of each handle it returns, in order)
SCENARIOS: list[tuple[str, dict[str, object], Run, list[str]]] = [
    ("succeeded", {}, job(SPOT_JOB), ["ManagedJob"]),
    ("preempted_then_succeeded", {"run_script": [LOST, [0]]}, job(SPOT_JOB), ["ManagedJob"]),
    ("backoff_then_succeeded", {"full": [{"a", "b"}]}, job(SPOT_JOB), ["ManagedJob"]),
    ("restarts_then_failed", {"run_script": [[1], [1]]}, job(RESTARTS), ["ManagedJob"]),
    ("pipeline_second_task_failed", {"run_script": [[0], [3]]}, job(PIPELINE), ["ManagedJob"]),
    (
        "bucket_mount_retried_on_recovery",
        {"run_script": [LOST, [0]], "sync_script": ["", PRECHECK]},
        job(CKPT_JOB),
        ["ManagedJob"],
    ),
    ("cancelled_while_running", {"run_blocks": True}, lambda c, cloud, env: _cancelled(c, cloud), ["ManagedJob"]),
    (
        "gracefully_cancelled_while_running",
        {"run_blocks": True},
        lambda c, cloud, env: _cancelled(c, cloud, grace_seconds=30),
        ["ManagedJob"],
    ),
    ("three_allocations", {}, lambda c, cloud, env: _registry(c), ["TskyIdRegistry"]),
    ("second_job_waits_for_a_slot", {}, lambda c, cloud, env: _scheduled(c), ["TskyScheduler", "ManagedJob"]),
    (
        "waiters_granted_by_priority",
        {},
        lambda c, cloud, env: _scheduled(c, (0, 0, 5)),
        ["TskyScheduler", "ManagedJob"],
    ),
    ("sweeps_fail_then_tear_down", {}, lambda c, cloud, env: _swept(c, env), ["TskySweeper"]),
    (
        "job_restarts_on_a_worker_then_down",
        {"run_script": [[1], [0]]},
        lambda c, cloud, env: _pooled(c),
        [POOL_WORKFLOW, POOL_WORKER_WORKFLOW, "ManagedJob"],
    ),
    (
        "after_a_failed_job_cancelled",
        {},
        lambda c, cloud, env: _orchestrated(c, with_orchestration(request(JOB, job_id=6), after=[5])),
        ["ManagedJob"],
    ),
    (
        "relaunch_skips_the_done_task",
        {},
        lambda c, cloud, env: _orchestrated(c, with_orchestration(request(PIPE3, job_id=4), relaunch=_RELAUNCH)),
        ["ManagedJob"],
    ),
    (
        "notified_each_transition_after_retries",
        {"run_script": [[3]]},
        lambda c, cloud, env: _orchestrated(c, notifying(request(JOB, job_id=9))),
        ["ManagedJob"],
    ),
    ("scheduled_run", {}, lambda c, cloud, env: _scheduled_run(c), ["TskyScheduledJob", "ManagedJob"]),
]


async def record(only: set[str]) -> None:
    for scenario, fake, run, types in SCENARIOS:
        if only and scenario not in only:
            continue
        cloud = FakeCloud(**fake)  # type: ignore[arg-type]
        control = [request_slot, ended_jobs, _outside.notify, _outside.allocate]
        watch = [watch_cluster, _outside.wait_for_jobs]
        async with running(cloud, control=control, launch=[_sweep], watch=watch) as env:
            handles = await run(env.client, cloud, env)
            for workflow_type, handle in zip(types, handles, strict=True):
                history = await handle.fetch_history()
                name = scenario if workflow_type != "ManagedJob" or len(types) == 1 else f"{scenario}_job"
                path = HISTORIES / workflow_type / f"{name}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(history.to_json())
                print(f"recorded {path.relative_to(HISTORIES.parent.parent.parent)}")


if __name__ == "__main__":
    asyncio.run(record(set(sys.argv[1:])))
