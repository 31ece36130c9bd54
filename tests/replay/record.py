"""Record the histories the replay tests check: `.venv/bin/python -m tests.replay.record [scenario ...]`.

Each scenario runs the real workflow code with fake activities registered under the real activity names
(tests.workflows.fakes) and saves the history of each workflow run it names as JSON under
`tests/replay/histories/<workflow type>/<file>.json`; name scenarios to record just those. Most run on
the time-skipping server (backoffs and timers of hours pass at once). The continue-as-new paths that only
the server can trigger (Temporal suggesting it once a history is long) run on a real dev server told to
suggest it early. Every file must be listed in `histories/manifest.yaml` under the path it covers (the
replay test checks both ways).

Re-record deliberately when a change to the command sequence is guarded by `workflow.patched`, and keep
the old file under a new name so the unpatched branch stays replayed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.harness import DevServer
from tests.replay.examples import child_workflow_example
from tests.workflows.fakes import LOST, PRECHECK, UNREACHABLE, FakeCloud, ended_jobs, serving, time_skipping_env
from tests.workflows.test_orchestration import JOB as ONE_TASK
from tests.workflows.test_orchestration import PIPE3, Outside, notifying
from tests.workflows.test_pool_workflow import (
    LOSE_WHEN_IDLE,
    POOL,
    FlakyLaunchCloud,
    apply_pool,
    run_pool_job,
    watch_cluster,
)
from tests.workflows.test_recovery_table import CKPT_JOB, SPOT_JOB, request
from tests.workflows.test_teardown import FlakyTeardownCloud
from tsky.activities.job_ids import JobIdActivities
from tsky.activities.scheduling import request_slot
from tsky.client.connect import DATA_CONVERTER
from tsky.client.jobs import allocate_job_ids
from tsky.contract.activity_io import ActivityName, PhaseInput, PhaseResult, SweepInput, SweepResult
from tsky.contract.ids import (
    CONTROL_QUEUE,
    ID_REGISTRY_WORKFLOW_ID,
    SCHEDULER_WORKFLOW_ID,
    SWEEPER_WORKFLOW_ID,
    job_workflow_id,
    pool_worker_workflow_id,
    pool_workflow_id,
)
from tsky.contract.job import GracefulCancel, JobRequest, JobState
from tsky.contract.names import Signal, WorkflowType
from tsky.contract.orchestration import Orchestration, Relaunch, ScheduledRun
from tsky.contract.pool_state import PoolSnapshot
from tsky.contract.scheduling import SchedulerState
from tsky.spec.loader import load_pipeline
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus, PoolWorkerStatus
from tsky.spec.storage import BucketURL, UploadLocation
from tsky.worker.main import workflow_runner
from tsky.workflows.managed_job import ManagedJobWorkflow
from tsky.workflows.pool import PoolWorkflow
from tsky.workflows.scheduled_job import ScheduledJobWorkflow
from tsky.workflows.scheduler import SchedulerWorkflow
from tsky.workflows.sweeper import SweeperState, SweeperWorkflow

HISTORIES = Path(__file__).parent / "histories"
# The user's parent workflow of examples/child_workflow.py (not registered by tsky's worker).
PARENT = "TrainThenEval"
PARENT_QUEUE = "train-then-eval"

PIPELINE = "name: pipe\n---\nname: train\nrun: x\n---\nname: eval\nrun: y\n"
RESTARTS = "name: t\nresources:\n  job_recovery:\n    max_restarts_on_errors: 1\nsetup: s\nrun: exit 1\n"
FAILOVER = (
    "name: t\nresources:\n  use_spot: true\n  job_recovery:\n    strategy: FAILOVER\n"
    "    max_restarts_on_errors: 1\nsetup: s\nrun: x\n"
)
SETUP = "name: train\nresources:\n  use_spot: true\nsetup: pip install x\nrun: python train.py\n"
NO_RECOVERY = "name: t\nresources:\n  use_spot: true\n  job_recovery: none\nrun: x\n"
EXIT_CODES = "name: t\nresources:\n  job_recovery:\n    recover_on_exit_codes: [33]\nrun: x\n"
# What `tsky jobs launch` submits for a job with a local workdir (uploaded, then removed when the job ends)
# and a bucket of its own (`persistent: false`, deleted when the job ends).
UPLOADED = BucketURL(store="s3", bucket="tsky-uploads-abcd1234", prefix="job-1")
FILES = "name: train\nfile_mounts:\n  /scratch: {name: train-scratch, store: s3, persistent: false}\nrun: x\n"
AUTOSCALING_POOL = (
    "pool:\n  min_workers: 0\n  max_workers: 2\n  queue_length_threshold: 1\n"
    "  upscale_delay_seconds: 1\n  downscale_delay_seconds: 2\nsetup: echo warm\n"
)

Handle = WorkflowHandle[Any, Any]


@dataclass
class World:
    """What a scenario drives: a client of its server, the fake cloud, and (time-skipping only) the
    environment whose clock it may move."""

    client: Client
    cloud: FakeCloud
    env: WorkflowEnvironment | None = None
    recorded: list[tuple[str, str, Handle]] = field(default_factory=list)

    def keep(self, workflow_type: str, name: str, handle: Handle) -> None:
        self.recorded.append((workflow_type, name, handle))

    async def sleep(self, seconds: float) -> None:
        assert self.env is not None, "only the time-skipping server moves its clock"
        await self.env.sleep(seconds)


Run = Callable[[World], Awaitable[None]]


@dataclass
class Scenario:
    name: str
    run: Run
    cloud: Callable[[], FakeCloud] = FakeCloud
    # None: the time-skipping server. N: a dev server that suggests continue-as-new past N events.
    suggest_continue_as_new_after: int | None = None


# -- helpers -----------------------------------------------------------------------------------------------


async def wait_for(what: str, ready: Callable[[], Awaitable[bool]], seconds: float = 60) -> None:
    """Poll (in real time) until `ready`; a scenario that never gets there fails loudly."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await ready():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never reached: {what}")
        await asyncio.sleep(0.05)


async def job_state(handle: Handle) -> JobState:
    return await handle.query(ManagedJobWorkflow.state)


async def pool_snapshot(client: Client) -> PoolSnapshot:
    return await client.get_workflow_handle(pool_workflow_id("p")).query(PoolWorkflow.snapshot)


async def workers_are(client: Client, expected: list[tuple[int, str]]) -> bool:
    snap = await pool_snapshot(client)
    return sorted((w.worker_id, w.status.value) for w in snap.workers) == expected


async def expect_cancelled(handle: Handle) -> None:
    with pytest.raises(WorkflowFailureError):  # cancelled, as intended
        await handle.result()


async def runs(client: Client, workflow_id: str, first_run_id: str | None) -> list[Handle]:
    """Every run of a workflow that continued as new, first to last."""
    handles = [client.get_workflow_handle(workflow_id, run_id=first_run_id)]
    while True:
        history = await handles[-1].fetch_history()
        attrs = history.events[-1].workflow_execution_continued_as_new_event_attributes
        if not attrs.new_execution_run_id:
            return handles
        handles.append(client.get_workflow_handle(workflow_id, run_id=attrs.new_execution_run_id))


async def start_job(world: World, yaml_text: str, job_id: int = 1, **update: Any) -> Handle:
    req = request(yaml_text, job_id=job_id).model_copy(update=update)
    return await world.client.start_workflow(
        ManagedJobWorkflow.run, req, id=job_workflow_id(job_id), task_queue=CONTROL_QUEUE
    )


def job(yaml_text: str, **update: Any) -> Run:
    """One job run to its end, recorded under the scenario's name."""

    async def run(world: World) -> None:
        handle = await start_job(world, yaml_text, **update)
        await handle.result()
        world.keep(WorkflowType.MANAGED_JOB, "", handle)

    return run


async def down(world: World) -> None:
    handle = world.client.get_workflow_handle(pool_workflow_id("p"))
    await handle.cancel()
    await expect_cancelled(handle)


def keep_pool(world: World, *workers: int) -> None:
    world.keep(WorkflowType.POOL, "", world.client.get_workflow_handle(pool_workflow_id("p")))
    for worker_id in workers:
        handle = world.client.get_workflow_handle(pool_worker_workflow_id("p", worker_id))
        world.keep(WorkflowType.POOL_WORKER, f"worker{worker_id}" if len(workers) > 1 else "", handle)


# -- ManagedJob ----------------------------------------------------------------------------------------------


async def _cancelled(world: World, grace_seconds: float | None = None) -> None:
    handle = await start_job(world, SPOT_JOB)
    await asyncio.wait_for(world.cloud.run_started.wait(), 30)
    if grace_seconds is not None:  # what `tsky jobs cancel --graceful` sends before the cancel
        await handle.signal(Signal.GRACEFUL_CANCEL, GracefulCancel(grace_seconds=grace_seconds))
    await handle.cancel()
    await expect_cancelled(handle)
    world.keep(WorkflowType.MANAGED_JOB, "", handle)


async def _cancelled_in_backoff(world: World) -> None:
    handle = await start_job(world, SPOT_JOB)
    assert world.env is not None
    with world.env.auto_time_skipping_disabled():
        await wait_for(
            "the job in launch backoff",
            lambda: _in_backoff(handle),
        )
        await handle.cancel()
    await expect_cancelled(handle)
    world.keep(WorkflowType.MANAGED_JOB, "", handle)


async def _cancelled_in_recovery(world: World) -> None:
    """Preempted, then every region is full: cancelled while RECOVERING in backoff."""
    handle = await start_job(world, SPOT_JOB)
    assert world.env is not None
    with world.env.auto_time_skipping_disabled():
        await wait_for("a relaunch in backoff", lambda: _launches(world.cloud, 2))
        await handle.cancel()
    await expect_cancelled(handle)
    world.keep(WorkflowType.MANAGED_JOB, "", handle)


async def _cancelled_in_setup(world: World) -> None:
    """Cancelled while setup runs; setup then ends on its own: the workflow stops it and never runs `run`."""
    gate = world.cloud.setup_gate
    assert world.env is not None and gate is not None
    handle = await start_job(world, "name: train\nsetup: sleep 20\nrun: sleep 600\n")
    with world.env.auto_time_skipping_disabled():
        await asyncio.wait_for(world.cloud.setup_started.wait(), 30)
        await handle.cancel()
        await wait_for("CANCELLING", lambda: _status_is(handle, ManagedJobStatus.CANCELLING))
        gate.set()
    await expect_cancelled(handle)
    world.keep(WorkflowType.MANAGED_JOB, "", handle)


async def _status_is(handle: Handle, status: ManagedJobStatus) -> bool:
    return (await job_state(handle)).tasks[0].status is status


async def _in_backoff(handle: Handle) -> bool:
    return "In backoff" in ((await job_state(handle)).tasks[0].details or "")


async def _files_and_cleanup(world: World) -> None:
    req = request(FILES)
    task = req.pipeline.tasks[0].model_copy(update={"workdir": UPLOADED.child("workdir").url})
    pipeline = req.pipeline.model_copy(update={"tasks": [task]})
    handle = await start_job(world, FILES, pipeline=pipeline, uploads=[UploadLocation(bucket=UPLOADED)])
    await handle.result()
    assert world.cloud.syncs and world.cloud.cleanups
    world.keep(WorkflowType.MANAGED_JOB, "", handle)


async def _pool_missing(world: World) -> None:
    await run_pool_job(world.client, "name: j\nrun: echo hi\n", pool="nope")
    world.keep(WorkflowType.MANAGED_JOB, "", world.client.get_workflow_handle(job_workflow_id(1)))


# -- the scheduler -----------------------------------------------------------------------------------------


async def _scheduled(world: World, priorities: tuple[int, ...] = (0, 0)) -> None:
    """Jobs under a running limit of one: the later ones wait for the first's slot (higher priority first)."""
    jobs = []
    for job_id, priority in enumerate(priorities, start=1):
        jobs.append(await start_job(world, SPOT_JOB, job_id, policy=LIMITED, priority=priority))
    for handle in jobs:
        await handle.result()
    scheduler = world.client.get_workflow_handle(SCHEDULER_WORKFLOW_ID)
    await scheduler.terminate("recording done")
    world.keep(WorkflowType.SCHEDULER, "", scheduler)
    world.keep(WorkflowType.MANAGED_JOB, "job", jobs[1])


LIMITED = request(SPOT_JOB).policy.model_copy(update={"max_running_jobs": 1})


async def _scheduler_continues_as_new_then_reconciles(world: World) -> None:
    """A scheduler whose run may handle three actions: job 1 takes the slot, job 2 waits and the run
    continues as new carrying both. Job 1 is then terminated (no release): the next run's reconcile finds
    it ended and grants job 2."""
    start = await world.client.start_workflow(
        SchedulerWorkflow.run,
        SchedulerState(actions_per_run=3, reconcile_seconds=1),
        id=SCHEDULER_WORKFLOW_ID,
        task_queue=CONTROL_QUEUE,
    )
    first = await start_job(world, SPOT_JOB, 1, policy=LIMITED)
    await asyncio.wait_for(world.cloud.run_started.wait(), 30)
    second = await start_job(world, SPOT_JOB, 2, policy=LIMITED)
    await wait_for("a second run", lambda: _has_runs(world.client, SCHEDULER_WORKFLOW_ID, start, 2))
    await first.terminate("the holder dies without a word")
    await wait_for("job 2 running", lambda: _running(second))
    await second.cancel()
    await expect_cancelled(second)
    await world.client.get_workflow_handle(SCHEDULER_WORKFLOW_ID).terminate("recording done")
    chain = await runs(world.client, SCHEDULER_WORKFLOW_ID, start.first_execution_run_id)
    world.keep(WorkflowType.SCHEDULER, "first_run", chain[0])
    world.keep(WorkflowType.SCHEDULER, "next_run", chain[1])


async def _late_waiter_reconciled(world: World) -> None:
    """Job 1 takes the slot while no job waits; job 2 comes to wait after that, and job 1 is terminated
    (no release): the reconcile timer armed for job 2's wait finds job 1 ended and grants job 2 (patch
    scheduler-reconciles-late-waiters)."""
    await world.client.start_workflow(
        SchedulerWorkflow.run, SchedulerState(reconcile_seconds=1), id=SCHEDULER_WORKFLOW_ID, task_queue=CONTROL_QUEUE
    )
    scheduler = world.client.get_workflow_handle(SCHEDULER_WORKFLOW_ID)
    first = await start_job(world, SPOT_JOB, 1, policy=LIMITED)
    await asyncio.wait_for(world.cloud.run_started.wait(), 30)
    # Job 2 must come after the scheduler went back to sleep with no waiter (else it is seen at once).
    await wait_for("the scheduler asleep after its grant", lambda: _asleep_after_grant(scheduler))
    second = await start_job(world, SPOT_JOB, 2, policy=LIMITED)
    await wait_for("job 2 waiting", lambda: _waiting(scheduler, 2))
    await first.terminate("the holder dies without a word")
    await wait_for("job 2 running", lambda: _running(second))
    await second.cancel()
    await expect_cancelled(second)
    await scheduler.terminate("recording done")
    world.keep(WorkflowType.SCHEDULER, "", scheduler)


async def _asleep_after_grant(scheduler: Handle) -> bool:
    """The scheduler's last workflow task completed after its grant was delivered: it waits again."""
    events = (await scheduler.fetch_history()).events
    delivered = [
        e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_EXTERNAL_WORKFLOW_EXECUTION_SIGNALED
    ]
    last = events[-1]
    return (
        bool(delivered)
        and last.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        and last.event_id > delivered[-1]
    )


async def _waiting(scheduler: Handle, job_id: int) -> bool:
    try:
        return job_id in (await scheduler.query(SchedulerWorkflow.status)).waiters
    except Exception:  # not started yet
        return False


async def _running(handle: Handle) -> bool:
    return (await job_state(handle)).tasks[0].status is ManagedJobStatus.RUNNING


# -- the id registry and the sweeper -----------------------------------------------------------------------


async def _registry(world: World) -> None:
    for count in (1, 3, 1):
        await allocate_job_ids(world.client, count)
    handle = world.client.get_workflow_handle(ID_REGISTRY_WORKFLOW_ID)
    await handle.terminate("recording done")
    world.keep(WorkflowType.ID_REGISTRY, "", handle)


_sweeps = 0
_sweep_interval = 60.0  # what each sweep asks for (the worker's jobs.sweeper.interval_seconds)


@activity.defn(name=ActivityName.SWEEP)
async def _sweep(inp: SweepInput) -> SweepResult:
    """A failed sweep, then one that finds an orphan, then sweeps that tear it down."""
    global _sweeps
    _sweeps += 1
    if _sweeps == 1:
        raise ApplicationError("the cloud API is down", non_retryable=True)
    if _sweeps == 2:
        return SweepResult(orphans_since={"local/local/old-1": 100.0}, next_sweep_seconds=_sweep_interval)
    return SweepResult(torn_down=["local/local/old-1"], next_sweep_seconds=_sweep_interval)


async def _swept(world: World) -> None:
    global _sweeps, _sweep_interval
    _sweeps, _sweep_interval = 0, 60
    handle = await world.client.start_workflow(
        SweeperWorkflow.run, SweeperState(interval_seconds=60), id=SWEEPER_WORKFLOW_ID, task_queue=CONTROL_QUEUE
    )
    await world.sleep(200)  # a failed sweep, then two that report an orphan and tear it down
    await handle.terminate("recording done")
    world.keep(WorkflowType.SWEEPER, "", handle)


async def _sweeper_continues_as_new(world: World) -> None:
    global _sweeps, _sweep_interval
    # Every sweep tears down and asks for the next in a second: the dev server suggests continue-as-new soon.
    _sweeps, _sweep_interval = 2, 1
    start = await world.client.start_workflow(
        SweeperWorkflow.run, SweeperState(interval_seconds=1), id=SWEEPER_WORKFLOW_ID, task_queue=CONTROL_QUEUE
    )
    await wait_for("a second run", lambda: _has_runs(world.client, SWEEPER_WORKFLOW_ID, start, 2), 120)
    await world.client.get_workflow_handle(SWEEPER_WORKFLOW_ID).terminate("recording done")
    chain = await runs(world.client, SWEEPER_WORKFLOW_ID, start.first_execution_run_id)
    world.keep(WorkflowType.SWEEPER, "first_run", chain[0])
    world.keep(WorkflowType.SWEEPER, "next_run", chain[1])


async def _has_runs(client: Client, workflow_id: str, start: Handle, count: int) -> bool:
    return len(await runs(client, workflow_id, start.first_execution_run_id)) >= count


# -- pools ---------------------------------------------------------------------------------------------------


async def _pooled(world: World) -> None:
    """A pool of two, a job that fails once and restarts on a worker, then `down`."""
    await apply_pool(world.client)
    await run_pool_job(world.client, "name: j\nrun: x\nresources:\n  job_recovery:\n    max_restarts_on_errors: 1\n")
    await down(world)
    keep_pool(world, 1)
    world.keep(WorkflowType.MANAGED_JOB, "job", world.client.get_workflow_handle(job_workflow_id(1)))


async def _worker_lost_under_a_job(world: World) -> None:
    await apply_pool(world.client)
    await run_pool_job(world.client, "name: j\nrun: python step.py\n")
    await wait_for("a replacement READY", lambda: _ready_workers(world.client, 2))
    await down(world)
    keep_pool(world)
    world.keep(WorkflowType.MANAGED_JOB, "job", world.client.get_workflow_handle(job_workflow_id(1)))
    lost = (await job_state(world.client.get_workflow_handle(job_workflow_id(1)))).tasks[0].attempts[0]
    worker_id = int((lost.cluster_name or "").rsplit("-w", 1)[1])
    world.keep(WorkflowType.POOL_WORKER, "", world.client.get_workflow_handle(pool_worker_workflow_id("p", worker_id)))


async def _ready_workers(client: Client, count: int) -> bool:
    snap = await pool_snapshot(client)
    return len([w for w in snap.workers if w.status is PoolWorkerStatus.READY]) == count


async def _idle_worker_lost(world: World) -> None:
    LOSE_WHEN_IDLE.add("p-w1")
    await apply_pool(world.client)
    await wait_for("worker 1 replaced", lambda: workers_are(world.client, [(2, "READY"), (3, "READY")]))
    await down(world)
    keep_pool(world, 1)


async def _worker_launch_errors(world: World) -> None:
    """The worker's launch activity fails past its retries (a cloud outage): it backs off and comes up."""
    await apply_pool(world.client, "pool:\n  workers: 1\nsetup: echo warm\n")
    await run_pool_job(world.client, "name: j\nrun: echo hi\n")
    await down(world)
    assert len(world.cloud.launches) == 1  # the second launch activity; the first never answered
    worker = world.client.get_workflow_handle(pool_worker_workflow_id("p", 1))
    world.keep(WorkflowType.POOL_WORKER, "", worker)


async def _setup_fails(world: World) -> None:
    await apply_pool(world.client, "pool:\n  workers: 1\nsetup: exit 1\n")
    await wait_for("three failures in a row", lambda: _gone_workers(world.client, 3))
    await down(world)
    keep_pool(world, 1)


async def _gone_workers(client: Client, count: int) -> bool:
    snap = await pool_snapshot(client)
    return len([w for w in snap.workers if w.gone]) == count


async def _rolling_update(world: World) -> None:
    await apply_pool(world.client)
    await wait_for("version 1 READY", lambda: _ready_workers(world.client, 2))
    await apply_pool(world.client, POOL.replace("echo warm", "echo warmer"))
    await wait_for("version 2 rolled out", lambda: workers_are(world.client, [(3, "READY"), (4, "READY")]))
    await down(world)
    keep_pool(world, 1)


async def _resized(world: World) -> None:
    await apply_pool(world.client)
    await wait_for("two READY", lambda: workers_are(world.client, [(1, "READY"), (2, "READY")]))
    await apply_pool(world.client, POOL.replace("workers: 2", "workers: 1"))
    await wait_for("one left", lambda: workers_are(world.client, [(1, "READY")]))
    await apply_pool(world.client, POOL.replace("workers: 2", "workers: 3"))
    await wait_for("three READY", lambda: _ready_workers(world.client, 3))
    await down(world)
    keep_pool(world, 2)


async def _autoscaled(world: World) -> None:
    """No worker until jobs wait; one at once, a second after the upscale delay while more than one job
    waits; none again once the queue has been empty for the downscale delay."""
    await apply_pool(world.client, AUTOSCALING_POOL)
    jobs = []
    for job_id in (1, 2, 3):
        pipeline = load_pipeline("name: j\nrun: python step.py\n")
        req = JobRequest(
            job_id=job_id,
            name="j",
            pipeline=pipeline,
            user="tester",
            user_hash="abcd1234",
            submitted_at=datetime.now(UTC),
            pool="p",
        )
        jobs.append(
            await world.client.start_workflow(
                ManagedJobWorkflow.run, req, id=job_workflow_id(job_id), task_queue=CONTROL_QUEUE
            )
        )
    for handle in jobs:
        await handle.result()
    # (Idle workers' watchers run on: the server's clock cannot skip, so the delays are short and real.)
    await wait_for("scaled to zero", lambda: _no_live_workers(world.client))
    await down(world)
    assert len(world.cloud.launched) == 2, "the pool never grew to its second worker"
    keep_pool(world)


@dataclass
class SlowRunCloud(FakeCloud):
    """Every run takes a (real) second, so jobs queue up long enough for the autoscaler to react."""

    @activity.defn(name=ActivityName.RUN)
    async def run(self, inp: PhaseInput) -> PhaseResult:
        self.phases.append((inp.phase, inp.cluster.name, inp.attempt))
        for _ in range(20):
            activity.heartbeat()
            await asyncio.sleep(0.05)
        return PhaseResult(exit_codes=[0] * len(inp.cluster.nodes))


async def _no_live_workers(client: Client) -> bool:
    return not [w for w in (await pool_snapshot(client)).workers if w.live()]


async def _down_while_a_job_waits(world: World) -> None:
    """No region has room: the worker backs off, the job waits; `down` tells the job the pool is gone."""
    await apply_pool(world.client, "pool:\n  workers: 1\nsetup: echo warm\n")
    job_handle = await world.client.start_workflow(
        ManagedJobWorkflow.run,
        JobRequest(
            job_id=1,
            name="j",
            pipeline=load_pipeline("name: j\nrun: x\n"),
            user="tester",
            user_hash="abcd1234",
            submitted_at=datetime.now(UTC),
            pool="p",
        ),
        id=job_workflow_id(1),
        task_queue=CONTROL_QUEUE,
    )
    assert world.env is not None
    with world.env.auto_time_skipping_disabled():
        await wait_for("the job queued", lambda: _queued(world.client, 1))
        await wait_for("the worker in backoff", lambda: _launches(world.cloud, 1))
    await down(world)
    await job_handle.result()
    keep_pool(world, 1)
    world.keep(WorkflowType.MANAGED_JOB, "job", job_handle)


async def _pool_terminated(world: World) -> None:
    """The pool's workflow is terminated while its worker runs setup: the worker's next report finds no
    pool, and it tears itself down."""
    gate = world.cloud.setup_gate
    assert world.env is not None and gate is not None
    await apply_pool(world.client, "pool:\n  workers: 1\nsetup: echo warm\n")
    await asyncio.wait_for(world.cloud.setup_started.wait(), 30)
    await world.client.get_workflow_handle(pool_workflow_id("p")).terminate("removed by hand")
    gate.set()
    worker = world.client.get_workflow_handle(pool_worker_workflow_id("p", 1))
    await worker.result()
    assert world.cloud.torn_down == ["p-w1"]
    world.keep(WorkflowType.POOL_WORKER, "", worker)


async def _queued(client: Client, job_id: int) -> bool:
    return job_id in (await pool_snapshot(client)).queued_jobs


async def _launches(cloud: FakeCloud, count: int) -> bool:
    return len(cloud.launches) >= count


async def _pool_continues_as_new(world: World) -> None:
    """A pool whose history grows past the point the server suggests continue-as-new: the run ends after a
    reconcile and the next one carries the workers, then serves a job and goes `down`."""
    await apply_pool(world.client)
    first_run = (await world.client.get_workflow_handle(pool_workflow_id("p")).describe()).run_id
    await wait_for("two READY", lambda: _ready_workers(world.client, 2))
    await wait_for("a second run", lambda: _pool_has_runs(world.client, first_run, 2), 120)
    await run_pool_job(world.client, "name: j\nrun: python step.py\n")
    await down(world)
    chain = await runs(world.client, pool_workflow_id("p"), first_run)
    world.keep(WorkflowType.POOL, "first_run", chain[0])
    world.keep(WorkflowType.POOL, "last_run", chain[-1])
    world.keep(WorkflowType.POOL_WORKER, "", world.client.get_workflow_handle(pool_worker_workflow_id("p", 1)))


async def _pool_has_runs(client: Client, first_run: str, count: int) -> bool:
    return len(await runs(client, pool_workflow_id("p"), first_run)) >= count


# -- a user's parent workflow (examples/child_workflow.py) ---------------------------------------------------


def parent(how: str) -> Run:
    """The example's TrainThenEval on its own queue, with tsky's real job-id activities."""

    async def run(world: World) -> None:
        example = child_workflow_example()
        from tsky.client.child import ChildJob

        train = ChildJob(pipeline=load_pipeline(example.TRAIN))
        evaluate = ChildJob(pipeline=load_pipeline(example.EVAL))
        inp = example.TrainThenEvalInput(train=train, evaluate=evaluate)
        async with Worker(
            world.client,
            task_queue=PARENT_QUEUE,
            workflows=[example.TrainThenEval],
            workflow_runner=workflow_runner(),
        ):
            handle = await world.client.start_workflow(
                "TrainThenEval", inp, id="train-then-eval-1", task_queue=PARENT_QUEUE
            )
            if how == "finish":
                await handle.result()
            else:
                await asyncio.wait_for(world.cloud.run_started.wait(), 30)
                if how == "cancel_job":  # `tsky jobs cancel 1`: the parent gets the job's CANCELLED result
                    await world.client.get_workflow_handle(job_workflow_id(1)).cancel()
                    await handle.result()
                else:  # the parent is cancelled: its running job is cancelled and torn down first
                    await handle.cancel()
                    await expect_cancelled(handle)
        world.keep(PARENT, "", handle)
        world.keep(WorkflowType.MANAGED_JOB, "train_job", world.client.get_workflow_handle(job_workflow_id(1)))

    return run


# -- the list ------------------------------------------------------------------------------------------------


def cloud(**script: object) -> Callable[[], FakeCloud]:
    return lambda: FakeCloud(**script)  # type: ignore[arg-type]


# -- orchestration (issue 18): the jobs a job waits for and its webhooks, faked ------------------------------

_outside = Outside(ended={5: "FAILED"})
_outside.released.set()


def _notified(world: World) -> Awaitable[None]:
    _outside.failures_left = 3  # the webhook answers 500 three times first
    return job(ONE_TASK, job_id=9, orchestration=notifying(request(ONE_TASK)).orchestration)(world)


async def _scheduled_run(world: World) -> None:
    handle = await world.client.start_workflow(
        ScheduledJobWorkflow.run,
        ScheduledRun(schedule="nightly", pipeline=load_pipeline(ONE_TASK), name="train", user="alice"),
        id="tsky-schedule-nightly-2026-01-01T03:00:00Z",
        task_queue=CONTROL_QUEUE,
    )
    result = await handle.result()
    world.keep(WorkflowType.SCHEDULED_JOB, "", handle)
    world.keep(WorkflowType.MANAGED_JOB, "job", world.client.get_workflow_handle(job_workflow_id(result.job_id)))


SCENARIOS: list[Scenario] = [
    # ManagedJob
    Scenario("succeeded", job(SPOT_JOB)),
    Scenario("preempted_then_succeeded", job(SPOT_JOB), cloud(run_script=[LOST, [0]])),
    Scenario("backoff_then_succeeded", job(SPOT_JOB), cloud(full=[{"a", "b"}])),
    Scenario("restarts_then_failed", job(RESTARTS), cloud(run_script=[[1], [1]])),
    Scenario("pipeline_second_task_failed", job(PIPELINE), cloud(run_script=[[0], [3]])),
    Scenario(
        "bucket_mount_retried_on_recovery",
        job(CKPT_JOB),
        cloud(run_script=[LOST, [0]], sync_script=["", PRECHECK]),
    ),
    Scenario("cancelled_while_running", _cancelled, cloud(run_blocks=True)),
    Scenario("gracefully_cancelled_while_running", lambda w: _cancelled(w, grace_seconds=30), cloud(run_blocks=True)),
    Scenario("files_synced_then_job_cleaned_up", _files_and_cleanup),
    Scenario("unreachable_then_recovered", job(SPOT_JOB), cloud(run_script=[UNREACHABLE, [0]])),
    Scenario("failover_restarts_in_place", job(FAILOVER), cloud(run_script=[[1], [0]])),
    Scenario("recover_on_exit_code_relaunches", job(EXIT_CODES), cloud(run_script=[[33], [0]])),
    Scenario("cancelled_during_launch_backoff", _cancelled_in_backoff, cloud(full=[{"a", "b"}] * 100)),
    Scenario("failed_prechecks_everywhere", job(SPOT_JOB), cloud(full=[{"precheck:a", "precheck:b"}])),
    Scenario("failed_prechecks_infeasible", job(SPOT_JOB), cloud(infeasible="No enabled infra offers H100:16")),
    Scenario("failed_prechecks_bucket_cannot_mount", job(CKPT_JOB), cloud(sync_script=[PRECHECK])),
    Scenario("teardown_gave_up", job(SPOT_JOB), lambda: FlakyTeardownCloud(failures=-1)),
    Scenario("pool_does_not_exist", _pool_missing),
    Scenario("launch_errors_then_backs_off", job(SPOT_JOB), lambda: FlakyLaunchCloud(failures=3)),
    Scenario("preempted_during_setup", job(SETUP), cloud(setup_script=[LOST, [0]])),
    Scenario("setup_failed", job(SETUP), cloud(setup_script=[[2]])),
    Scenario("no_recovery_fails_on_preemption", job(NO_RECOVERY), cloud(run_script=[LOST])),
    Scenario("failed_controller_plan_broken", job(SPOT_JOB), cloud(plan_broken=True)),
    Scenario("no_run_command_is_done_at_once", job("name: t\nsetup: echo nothing to run\n")),
    Scenario(
        "cancelled_during_recovery_backoff",
        _cancelled_in_recovery,
        cloud(run_script=[LOST], full=[set()] + [{"a", "b"}] * 100),
    ),
    Scenario("cancelled_during_setup", _cancelled_in_setup, lambda: FakeCloud(setup_gate=asyncio.Event())),
    # the scheduler, the id registry, the sweeper
    Scenario("three_allocations", _registry),
    Scenario("second_job_waits_for_a_slot", _scheduled),
    Scenario("waiters_granted_by_priority", lambda w: _scheduled(w, (0, 0, 5))),
    Scenario(
        "continued_as_new_then_reconciled",
        _scheduler_continues_as_new_then_reconciles,
        cloud(run_blocks=True),
    ),
    Scenario("late_waiter_reconciled", _late_waiter_reconciled, cloud(run_blocks=True)),
    Scenario("sweeps_fail_then_tear_down", _swept),
    Scenario("sweeper_continues_as_new", _sweeper_continues_as_new, suggest_continue_as_new_after=40),
    # pools
    Scenario("job_restarts_on_a_worker_then_down", _pooled, cloud(run_script=[[1], [0]])),
    Scenario("worker_lost_under_a_job", _worker_lost_under_a_job, cloud(run_script=[LOST, [0]])),
    Scenario("idle_worker_preempted", _idle_worker_lost),
    Scenario("worker_launch_errors_then_backs_off", _worker_launch_errors, lambda: FlakyLaunchCloud(failures=3)),
    Scenario("setup_fails_three_times", _setup_fails, cloud(setup_script=[[1], [1], [1]])),
    Scenario("rolling_update", _rolling_update),
    Scenario("resized_down_then_up", _resized),
    Scenario("autoscaled_up_then_to_zero", _autoscaled, SlowRunCloud),
    Scenario("down_while_a_job_waits", _down_while_a_job_waits, cloud(full=[{"a", "b"}] * 100)),
    Scenario("pool_terminated_under_its_worker", _pool_terminated, lambda: FakeCloud(setup_gate=asyncio.Event())),
    Scenario("pool_continues_as_new", _pool_continues_as_new, suggest_continue_as_new_after=25),
    # a user's workflow with managed jobs as children
    Scenario("train_then_eval", parent("finish")),
    Scenario("training_failed_skips_eval", parent("finish"), cloud(run_script=[[1]])),
    Scenario("job_cancelled_from_outside", parent("cancel_job"), cloud(run_blocks=True)),
    Scenario("parent_cancelled_cancels_its_job", parent("cancel_parent"), cloud(run_blocks=True)),
    # orchestration (issue 18)
    Scenario("after_a_failed_job_cancelled", job(ONE_TASK, job_id=6, orchestration=Orchestration(after=[5]))),
    Scenario(
        "relaunch_skips_the_done_task",
        job(PIPE3, job_id=4, orchestration=Orchestration(relaunch=Relaunch(of_job=3, skip_tasks=[0]))),
    ),
    Scenario("notified_each_transition_after_retries", _notified, cloud(run_script=[[3]])),
    Scenario("scheduled_run", _scheduled_run),
]


@asynccontextmanager
async def world_for(scenario: Scenario) -> AsyncIterator[World]:
    fake = scenario.cloud()

    @asynccontextmanager
    async def served(client: Client, env: WorkflowEnvironment | None) -> AsyncIterator[World]:
        # tsky's real job-id activities (for a user's parent workflow), served by the control queue.
        ids = JobIdActivities(client, Settings(home=Path("/nonexistent-tsky-home")))
        control: list[Callable[..., Any]] = [request_slot, ended_jobs, ids.allocate_job_id, ids.job_result]
        control.append(_outside.notify)
        watch = [watch_cluster, _outside.wait_for_jobs]
        async with serving(client, fake, control=control, launch=[_sweep], watch=watch):
            yield World(client, fake, env)

    if scenario.suggest_continue_as_new_after is None:
        env = await time_skipping_env()
        try:
            async with served(env.client, env) as world:
                yield world
        finally:
            await env.shutdown()
        return
    server = DevServer(
        "--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={scenario.suggest_continue_as_new_after}"
    )
    await asyncio.to_thread(server.start)
    try:
        async with served(await Client.connect(server.address, data_converter=DATA_CONVERTER), None) as world:
            yield world
    finally:
        await asyncio.to_thread(server.stop)


async def record(only: set[str]) -> None:
    unknown = only - {s.name for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"no such scenario: {', '.join(sorted(unknown))}")
    for scenario in SCENARIOS:
        if only and scenario.name not in only:
            continue
        LOSE_WHEN_IDLE.clear()
        async with world_for(scenario) as world:
            await asyncio.wait_for(scenario.run(world), timedelta(minutes=5).total_seconds())
            for workflow_type, suffix, handle in world.recorded:
                history = await handle.fetch_history()
                name = f"{scenario.name}_{suffix}" if suffix else scenario.name
                path = HISTORIES / workflow_type / f"{name}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(history.to_json())
                print(f"recorded {path.relative_to(HISTORIES.parent.parent.parent)} ({len(history.events)} events)")


if __name__ == "__main__":
    import logging
    import os

    logging.getLogger("temporalio").setLevel(logging.ERROR)  # the fakes' scripted failures are expected
    asyncio.run(record(set(sys.argv[1:])))
    sys.stdout.flush()
    os._exit(0)  # a process that used the Temporal client can abort at exit (sdk-python#300)
