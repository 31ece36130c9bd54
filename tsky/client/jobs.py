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

from tsky.contract import job_start
from tsky.contract import search_attributes as sa
from tsky.contract.id_registry import AllocateRequest, RegistryState
from tsky.contract.ids import CONTROL_QUEUE, ID_REGISTRY_WORKFLOW_ID, job_workflow_id
from tsky.contract.job import GracefulCancel, JobPolicy, JobRequest, JobResult, TaskState
from tsky.contract.names import Query, Signal, Update, WorkflowType
from tsky.contract.orchestration import Orchestration
from tsky.ops.uploads import Uploader
from tsky.ops.uploads import UploadError as UploadError
from tsky.spec.secrets import load_key, seal
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus
from tsky.spec.storage import UploadLocation
from tsky.spec.task import Pipeline

_START_CONCURRENCY = 64


async def allocate_job_ids(client: Client, count: int) -> int:
    """Reserve consecutive job ids from the namespace's id registry (created on first use).

    Args:
        client: A client from `tsky.client.connect.connect`.
        count: How many ids to reserve (at least 1).

    Returns:
        The first id of the range; the others follow it.
    """
    start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        WorkflowType.ID_REGISTRY,
        RegistryState(),
        id=ID_REGISTRY_WORKFLOW_ID,
        task_queue=CONTROL_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return await client.execute_update_with_start_workflow(
        Update.ALLOCATE_JOB_IDS,
        AllocateRequest(count=count),
        start_workflow_operation=start,
        id=f"allocate-{uuid.uuid4()}",
        result_type=int,
    )


async def start_job(client: Client, req: JobRequest) -> WorkflowHandle[Any, Any]:
    """Start the ManagedJob workflow for a prepared request (id allocated, files uploaded, secrets sealed).

    Args:
        client: A client from `tsky.client.connect.connect`.
        req: The job's request; `req.job_id` names its workflow (`tsky-job-<id>`).

    Returns:
        The started workflow's handle. Starting the same id twice raises
        `temporalio.exceptions.WorkflowAlreadyStartedError`.
    """
    return await client.start_workflow(
        WorkflowType.MANAGED_JOB,
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
    progress: Callable[[str], None] | None = None,
    orchestration: Orchestration | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[int]:
    """Launch managed jobs, as `tsky jobs launch` does (without printing or following).

    Local workdir and file mounts are uploaded first (see `tsky.ops.uploads`), one copy per job, and
    each job's tasks refer to its copy; task secrets are sealed with the installation's key.

    Args:
        client: A client from `tsky.client.connect.connect`.
        settings: The settings (`tsky.spec.settings.load_settings()`): bucket, key, job policy.
        pipeline: The loaded task or pipeline (`tsky.spec.loader.load_pipeline`).
        user: Shown in `tsky jobs queue` and given to the job as `SKYPILOT_USER`.
        user_hash: The submitter's id (`tsky.contract.ids.user_hash`).
        num_jobs: How many copies to start (`--num-jobs`); each gets its rank in `SKYPILOT_JOB_RANK`.
        pool: Run on this pool's workers instead of a cluster of its own (`--pool`).
        priority: Higher runs first when `jobs.controller.max_running_jobs` makes jobs wait.
        progress: Called with a line to show while files upload.
        warn: Called with one line per special file (socket, named pipe) left out of an uploaded
            directory.

    Returns:
        The new jobs' ids, in rank order.

    Raises:
        UploadError: A file or bucket could not be uploaded; raised before any job id is taken.
    """
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
        if warn is not None:
            for warning in uploader.skipped_warnings():
                warn(warning)
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
            orchestration=orchestration or Orchestration(),
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
    """One row of `tsky jobs queue`: a job as its workflow's search attributes and memo describe it."""

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
    # Relations to schedules and other jobs (tsky.contract.job_start.links): schedule, after, relaunch_of.
    links: dict[str, Any] = field(default_factory=dict)


def _quoted(value: str) -> str:
    """A visibility-query string literal (names are validated, but never trust them in a query)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _query(user: str | None, extra: str = "", schedule: str | None = None) -> str:
    query = f"WorkflowType = '{WorkflowType.MANAGED_JOB}'"
    if user is not None:
        query += f" AND {sa.USER.name} = {_quoted(user)}"
    if schedule is not None:
        query += f" AND {sa.SCHEDULE.name} = {_quoted(schedule)}"
    return query + extra


async def row_from_execution(execution: WorkflowExecution) -> JobRow:
    """A job's row from a listed or described ManagedJob execution (no extra call but the memo's decode).

    A workflow closed from outside tsky (terminated in the Web UI) shows FAILED_CONTROLLER, whatever
    status it last published."""
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
        links={key: memo[key] for key in ("schedule", "after", "relaunch_of") if key in memo},
    )


async def list_jobs(
    client: Client, *, user: str | None, skip_finished: bool = False, schedule: str | None = None
) -> list[JobRow]:
    """Every managed job, newest first, with one visibility query.

    Args:
        client: A client from `tsky.client.connect.connect`.
        user: Only this user's jobs; None for everyone's.
        skip_finished: Only jobs whose workflow still runs.
        schedule: Only the jobs this schedule started (`tsky jobs schedule`).

    Returns:
        The jobs' rows. For the latest N of many thousands, `latest_jobs` is cheaper.
    """
    extra = " AND ExecutionStatus = 'Running'" if skip_finished else ""
    query = _query(user, extra, schedule)
    rows = [await row_from_execution(e) async for e in client.list_workflows(query, page_size=1000)]
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
        return await handle.query(Query.NEXT_JOB_ID, result_type=int, rpc_timeout=timedelta(seconds=5))
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
    """One job's row.

    Args:
        client: A client from `tsky.client.connect.connect`.
        job_id: The job's id.

    Returns:
        Its row, or None if no such job exists in this namespace.
    """
    handle = client.get_workflow_handle(job_workflow_id(job_id))
    try:
        description = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return await row_from_execution(description)


async def get_jobs(client: Client, job_ids: list[int]) -> list[JobRow | None]:
    """`get_job` for each id, in order, asked concurrently (a cancel of a thousand ids is not a thousand
    round-trips in a row)."""
    semaphore = asyncio.Semaphore(_START_CONCURRENCY)

    async def one(job_id: int) -> JobRow | None:
        async with semaphore:
            return await get_job(client, job_id)

    return list(await asyncio.gather(*(one(j) for j in job_ids)))


async def missing_jobs(client: Client, job_ids: list[int]) -> list[int]:
    """The ids among `job_ids` that name no managed job."""
    return [job_id for job_id in job_ids if await get_job(client, job_id) is None]


async def jobs_named(client: Client, name: str, *, running_only: bool) -> list[JobRow]:
    """The jobs called `name` (`tsky jobs cancel -n`, `logs -n`), oldest first; only running ones if asked."""
    extra = f" AND {sa.JOB_NAME.name} = {_quoted(name)}"
    if running_only:
        extra += " AND ExecutionStatus = 'Running'"
    rows = [await row_from_execution(e) async for e in client.list_workflows(_query(None, extra))]
    return sorted(rows, key=lambda r: r.job_id)


async def cancel(client: Client, job_ids: list[int], grace_seconds: float | None = None) -> None:
    """Cancel jobs: each shows CANCELLING at once, stops its processes, tears its cluster down, and
    ends CANCELLED. Cancelling an ended job changes nothing.

    Args:
        client: A client from `tsky.client.connect.connect`.
        job_ids: The jobs to cancel.
        grace_seconds: With `--graceful`, how long the running phase gets between SIGTERM and SIGKILL
            (a cancel request carries no parameters, so a signal sent just before it tells the job).
    """
    semaphore = asyncio.Semaphore(_START_CONCURRENCY)

    async def one(job_id: int) -> None:
        async with semaphore:
            handle = client.get_workflow_handle(job_workflow_id(job_id))
            if grace_seconds is not None:
                await handle.signal(Signal.GRACEFUL_CANCEL, GracefulCancel(grace_seconds=grace_seconds))
            await handle.cancel()

    await asyncio.gather(*(one(j) for j in job_ids))


async def wait(client: Client, job_id: int) -> JobResult | None:
    """Wait for a job to end.

    Args:
        client: A client from `tsky.client.connect.connect`.
        job_id: The job's id.

    Returns:
        Its result (final status, each task's status, recoveries, attempts), or None if its workflow
        was cancelled or failed rather than returning one.
    """
    handle = client.get_workflow_handle(job_workflow_id(job_id), result_type=JobResult)
    from temporalio.client import WorkflowFailureError

    try:
        return await handle.result()
    except WorkflowFailureError:
        return None


def as_dict(row: JobRow) -> dict[str, Any]:
    """A row as the JSON object `tsky jobs queue --json` prints."""
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
        **row.links,
    }
