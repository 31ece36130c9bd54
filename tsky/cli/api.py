"""The programmatic face of the CLI: submit, list, cancel and wait for managed jobs.

Every call goes through the Temporal client; nothing here keeps state of its own. Listing is one
visibility query (search attributes + memo), never a call per job, so it stays quick with thousands.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import (
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from tsky.activities.uploads import Uploader
from tsky.spec import job_start
from tsky.spec import search_attributes as sa
from tsky.spec.ids import CONTROL_QUEUE, ID_REGISTRY_WORKFLOW_ID, job_workflow_id
from tsky.spec.job import GRACEFUL_CANCEL_SIGNAL, GracefulCancel, JobPolicy, JobRequest, JobResult, TaskState
from tsky.spec.lifecycle import Lifecycle
from tsky.spec.secrets import load_key, seal
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus
from tsky.spec.storage import UploadLocation
from tsky.spec.task import Pipeline
from tsky.workflows.id_registry import AllocateRequest, IdRegistryWorkflow, RegistryState
from tsky.workflows.managed_job import ManagedJobWorkflow

_START_CONCURRENCY = 64


async def allocate_job_ids(client: Client, count: int) -> int:
    """Reserve `count` consecutive job ids; returns the first. Safe to retry (one update id)."""
    start = WithStartWorkflowOperation(
        IdRegistryWorkflow.run,
        RegistryState(),
        id=ID_REGISTRY_WORKFLOW_ID,
        task_queue=CONTROL_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return await client.execute_update_with_start_workflow(
        IdRegistryWorkflow.allocate,
        AllocateRequest(count=count),
        start_workflow_operation=start,
        id=f"allocate-{uuid.uuid4()}",
    )


async def start_job(client: Client, req: JobRequest) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        ManagedJobWorkflow.run,
        req,
        id=job_workflow_id(req.job_id),
        task_queue=CONTROL_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=job_start.search_attributes(req),
        memo=job_start.memo(req),
        static_summary=job_start.summary(req),
        static_details=job_start.details(req),
    )


async def submit(
    client: Client,
    settings: Settings,
    pipeline: Pipeline,
    *,
    user: str,
    user_hash: str,
    num_jobs: int = 1,
    pool: str | None = None,
    priority: int = 0,
    lifecycle: Lifecycle | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[int]:
    """Start `num_jobs` managed jobs running `pipeline`; returns their ids (ranks follow id order).

    Local workdir and file mounts are uploaded first (see `tsky.activities.uploads`), one copy per job,
    and each job's tasks refer to its copy. An `UploadError` (bad `jobs.bucket`, a storage object
    that cannot be uploaded) is raised before any job id is taken."""
    uploader = Uploader(settings, pipeline, user=user, user_hash=user_hash)
    first = await allocate_job_ids(client, num_jobs)
    secrets = [task.secrets for task in pipeline.tasks]
    sealed = [seal(s, load_key(settings.home, create=True)) if s else {} for s in secrets]
    policy = JobPolicy.from_settings(settings)
    now = datetime.now(UTC)
    ids = list(range(first, first + num_jobs))
    semaphore = asyncio.Semaphore(_START_CONCURRENCY)
    prepared: dict[int, tuple[Pipeline, list[UploadLocation]]] = {}
    if uploader.needed:
        if progress is not None:
            progress(uploader.describe())
        done = await asyncio.to_thread(uploader.upload, _run_id(ids[0]))
        prepared[ids[0]] = done
        for job_id in ids[1:]:
            prepared[job_id] = await asyncio.to_thread(uploader.copy_for, done[0], done[1], _run_id(job_id))

    async def start(rank: int, job_id: int) -> None:
        job_pipeline, uploads = prepared.get(job_id, (pipeline, []))
        req = JobRequest(
            job_id=job_id,
            name=pipeline.name,
            pipeline=job_pipeline,
            uploads=uploads,
            user=user,
            user_hash=user_hash,
            submitted_at=now,
            sealed_secrets=sealed,
            rank=rank,
            num_jobs=num_jobs,
            pool=pool,
            priority=priority,
            policy=policy,
            lifecycle=lifecycle or Lifecycle(),
        )
        async with semaphore:
            await start_job(client, req)

    await asyncio.gather(*(start(rank, job_id) for rank, job_id in enumerate(ids)))
    return ids


def _run_id(job_id: int) -> str:
    """Names a job's upload directory: its id (for people) and 8 random hex digits (for uniqueness in a
    `jobs.bucket` shared by several tsky installations)."""
    return f"{job_id}-{uuid.uuid4().hex[:8]}"


# -- listing ----------------------------------------------------------------------------------------


@dataclass
class JobRow:
    job_id: int
    name: str
    user: str
    status: ManagedJobStatus
    submitted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    recoveries: int
    resources: str
    pool: str
    infra: str
    closed: bool
    tasks: list[TaskState] = field(default_factory=list)

    @property
    def cancellable(self) -> bool:
        """Still running, or ended FAILED with its cluster kept for debugging (a cancel ends the hold)."""
        return not self.closed and (not self.status.is_terminal() or any(t.held_until for t in self.tasks))


def _quoted(value: str) -> str:
    """A visibility-query string literal (names are validated, but never trust them in a query)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _query(user: str | None, extra: str = "") -> str:
    query = "WorkflowType = 'ManagedJob'"
    if user is not None:
        query += f" AND {sa.USER.name} = {_quoted(user)}"
    return query + extra


async def row_from_execution(execution: WorkflowExecution) -> JobRow:
    attrs = execution.typed_search_attributes
    memo = await execution.memo()
    tasks = [TaskState.model_validate(t) for t in memo.get("tasks", [])]
    status = ManagedJobStatus(attrs.get(sa.STATUS) or "PENDING")
    closed = execution.status is not None and execution.status != WorkflowExecutionStatus.RUNNING
    ended_at = attrs.get(sa.ENDED_AT)
    if closed and not status.is_terminal():
        # Ended from outside (terminated in the Web UI, say): the last status it published is stale.
        assert execution.status is not None
        status, ended_at = ManagedJobStatus.FAILED_CONTROLLER, execution.close_time
        reason = (
            f"The job's workflow was {execution.status.name.lower()} outside tsky; "
            "the sweeper tears down what it left running."
        )
        for task in tasks:
            if not task.status.is_terminal():
                task.status, task.failure_reason, task.details, task.end_at = status, reason, None, ended_at
    return JobRow(
        job_id=attrs.get(sa.JOB_ID) or 0,
        name=attrs.get(sa.JOB_NAME) or "",
        user=attrs.get(sa.USER) or "",
        status=status,
        submitted_at=attrs.get(sa.SUBMITTED_AT),
        started_at=attrs.get(sa.STARTED_AT),
        ended_at=ended_at,
        recoveries=attrs.get(sa.RECOVERIES) or 0,
        resources=attrs.get(sa.RESOURCES) or "-",
        pool=attrs.get(sa.POOL) or "",
        infra=attrs.get(sa.INFRA) or "",
        closed=closed,
        tasks=tasks,
    )


async def list_jobs(client: Client, *, user: str | None, skip_finished: bool = False) -> list[JobRow]:
    """Every managed job (of `user`, or everyone's when None), newest first. One visibility query."""
    extra = " AND ExecutionStatus = 'Running'" if skip_finished else ""
    rows = [await row_from_execution(e) async for e in client.list_workflows(_query(user, extra), page_size=1000)]
    rows.sort(key=lambda r: r.job_id, reverse=True)
    return rows


@dataclass
class JobsPage:
    """The latest jobs and what the queue's header needs, without listing every job ever run."""

    rows: list[JobRow]  # newest first, at most `limit`
    in_progress: list[JobRow]  # every job whose workflow still runs (the header's counts)
    more: bool  # older matching jobs exist


async def next_job_id(client: Client) -> int | None:
    """The id the registry hands out next; None when nothing answers the query in time (it needs a
    worker) or no job was ever submitted."""
    handle = client.get_workflow_handle(ID_REGISTRY_WORKFLOW_ID)
    try:
        return await handle.query(IdRegistryWorkflow.next_id, rpc_timeout=timedelta(seconds=5))
    except RPCError:
        return None


async def latest_jobs(client: Client, *, user: str | None, limit: int, statuses: Collection[str] = ()) -> JobsPage:
    """The latest `limit` jobs (of `user`, in `statuses`) with one visibility query in the common case.

    SQL visibility cannot sort, so listing "the latest 50" would mean listing every job. Job ids are
    allocated in order, so the query asks for ids at or above `next id - window` (plus every job still
    running, for the header), and widens the window only when too few of those match."""
    next_id = await next_job_id(client)
    extra = f" AND {sa.STATUS.name} IN ({', '.join(_quoted(s) for s in sorted(statuses))})" if statuses else ""
    if next_id is None:
        rows = await list_jobs(client, user=user)
        rows = [r for r in rows if not statuses or r.status.value in statuses]
        return JobsPage(rows=rows[:limit], in_progress=[r for r in rows if not r.closed], more=len(rows) > limit)
    window = limit
    while True:
        low = max(1, next_id - window)
        query = _query(user, f" AND ({sa.JOB_ID.name} >= {low} OR ExecutionStatus = 'Running'){extra}")
        found = [await row_from_execution(e) async for e in client.list_workflows(query, page_size=1000)]
        found.sort(key=lambda r: r.job_id, reverse=True)
        recent = [r for r in found if r.job_id >= low]
        if len(recent) >= limit or low == 1:
            break
        window *= 4
    older = [r for r in found if r.job_id < low]  # running jobs below the window
    rows = (recent + older)[:limit]
    more = len(recent) + len(older) > limit
    if not more and low > 1:
        more = (await client.count_workflows(_query(user, f" AND {sa.JOB_ID.name} < {low}{extra}"))).count > len(older)
    return JobsPage(rows=rows, in_progress=[r for r in found if not r.closed], more=more)


async def get_job(client: Client, job_id: int) -> JobRow | None:
    """One job's row, or None if no such job exists."""
    handle = client.get_workflow_handle(job_workflow_id(job_id))
    try:
        description = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return await row_from_execution(description)


async def jobs_named(client: Client, name: str, *, running_only: bool) -> list[JobRow]:
    extra = f" AND {sa.JOB_NAME.name} = {_quoted(name)}"
    if running_only:
        extra += " AND ExecutionStatus = 'Running'"
    rows = [await row_from_execution(e) async for e in client.list_workflows(_query(None, extra))]
    return sorted(rows, key=lambda r: r.job_id)


async def cancel(client: Client, job_ids: list[int], grace_seconds: float | None = None) -> None:
    """Request cancellation; the workflows go CANCELLING, tear down, then CANCELLED. With `grace_seconds`
    (`--graceful`), the running phase gets that long between SIGTERM and SIGKILL: a cancel request carries
    no parameters, so a signal sent just before it tells the job."""
    semaphore = asyncio.Semaphore(_START_CONCURRENCY)

    async def one(job_id: int) -> None:
        async with semaphore:
            handle = client.get_workflow_handle(job_workflow_id(job_id))
            if grace_seconds is not None:
                await handle.signal(GRACEFUL_CANCEL_SIGNAL, GracefulCancel(grace_seconds=grace_seconds))
            await handle.cancel()

    await asyncio.gather(*(one(j) for j in job_ids))


async def wait(client: Client, job_id: int) -> JobResult | None:
    """Block until the job ends; its result, or None if it was cancelled."""
    handle = client.get_workflow_handle(job_workflow_id(job_id), result_type=JobResult)
    from temporalio.client import WorkflowFailureError

    try:
        return await handle.result()
    except WorkflowFailureError:
        return None


def as_dict(row: JobRow) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "job_id": row.job_id,
        "name": row.name,
        "user": row.user,
        "status": row.status.value,
        "submitted_at": row.submitted_at.isoformat() if row.submitted_at else None,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
        "recoveries": row.recoveries,
        "resources": row.resources,
        "pool": row.pool or None,
        "infra": row.infra or None,
        "tasks": [t.model_dump(mode="json", exclude={"attempts"}) for t in row.tasks],
        # Estimated from catalog prices (docs/lifecycle.md); the clusters billing now included.
        "cost": {
            "total_usd": round(sum(t.cost(now) for t in row.tasks), 6),
            "wasted_usd": round(sum(t.wasted_cost_usd for t in row.tasks), 6),
            "hourly_usd": sum(t.hourly_price for t in row.tasks if t.billing_since is not None),
        },
    }
