"""The programmatic face of `tsky jobs pool`: apply, look at, list and take down pools.

A pool is the workflow `tsky-pool-<name>`; every call here is a Temporal update, query, visibility query
or cancel on it. Nothing is kept anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from tsky.client.jobs import JobRow, row_from_execution
from tsky.contract import search_attributes as sa
from tsky.contract.ids import CONTROL_QUEUE, pool_workflow_id
from tsky.contract.names import Query, Update, WorkflowType
from tsky.contract.pool_state import ApplyResult, PoolApply, PoolSnapshot, PoolState, PoolVersion
from tsky.ops.pool_queries import pool_runs
from tsky.spec.task import Task


def fingerprint(task: Task) -> str:
    """What decides whether an apply recreates the workers: everything but `pool:` (and the ignored
    `run` and the name), secret values included. Only this digest travels, never the secrets."""
    data = task.to_yaml_dict(reveal_secrets=True)
    for key in ("pool", "run", "name"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class PoolUpdateRejected(Exception):
    """The pool refused the new version (e.g. a resize below its running jobs): the user's input is wrong."""


async def apply(client: Client, name: str, req: PoolApply) -> ApplyResult:
    """Create the pool if needed and apply a new version of it, in one atomic call (`tsky jobs pool apply`).

    Args:
        client: A client from `tsky.client.connect.connect`.
        name: The pool's name.
        req: The new version: task, pool spec, sealed secrets, fingerprint (see `fingerprint`).

    Returns:
        Whether the pool was created, its new version, and whether the workers update in place.

    Raises:
        PoolUpdateRejected: The pool refused the version; the message says why.
    """
    start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        WorkflowType.POOL,
        PoolState(name=name),
        id=pool_workflow_id(name),
        task_queue=CONTROL_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"tsky pool {name}",
    )
    try:
        return await client.execute_update_with_start_workflow(
            Update.POOL_APPLY,
            req,
            start_workflow_operation=start,
            id=f"apply-{uuid.uuid4()}",
            result_type=ApplyResult,
        )
    except WorkflowUpdateFailedError as err:
        raise PoolUpdateRejected(str(getattr(err.cause, "message", None) or err.cause or err)) from None


async def get_pool(client: Client, name: str) -> PoolSnapshot | None:
    """What `tsky jobs pool status NAME` shows.

    Args:
        client: A client from `tsky.client.connect.connect`.
        name: The pool's name.

    Returns:
        The pool's snapshot (workers, their statuses, the jobs on them), or None if it is not running.
    """
    if not await pool_runs(client, name):
        return None
    return await client.get_workflow_handle(pool_workflow_id(name)).query(Query.POOL_SNAPSHOT, result_type=PoolSnapshot)


async def current_version(client: Client, name: str) -> PoolVersion | None:
    """The pool's current configuration (what `apply --workers N` resizes), or None if it is not running."""
    if not await pool_runs(client, name):
        return None
    return await client.get_workflow_handle(pool_workflow_id(name)).query(Query.POOL_VERSION, result_type=PoolVersion)


async def list_pools(client: Client) -> list[PoolSnapshot]:
    """Every running pool's snapshot, sorted by name (one visibility query, then one query per pool)."""
    query = f"WorkflowType = '{WorkflowType.POOL}' AND ExecutionStatus = 'Running'"
    ids = sorted({e.id async for e in client.list_workflows(query)})
    snapshots = [await client.get_workflow_handle(i).query(Query.POOL_SNAPSHOT, result_type=PoolSnapshot) for i in ids]
    return sorted(snapshots, key=lambda p: p.name)


async def pool_jobs(client: Client, name: str) -> list[JobRow]:
    """The jobs of pool `name` still in progress (their workflows running), oldest first."""
    quoted = "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    query = f"WorkflowType = '{WorkflowType.MANAGED_JOB}' AND {sa.POOL.name} = {quoted} AND ExecutionStatus = 'Running'"
    rows = [await row_from_execution(e) async for e in client.list_workflows(query)]
    return sorted((r for r in rows if not r.status.is_terminal()), key=lambda r: r.job_id)


async def down(client: Client, name: str) -> None:
    """Shut pool `name` down (`tsky jobs pool down`): waiting jobs are told it is gone, every worker is
    torn down. Returns once asked; the pool ends when its last worker is gone."""
    await client.get_workflow_handle(pool_workflow_id(name)).cancel()


async def job_worker(client: Client, job_id: int) -> str | None:
    """The cluster of the pool worker a running pool job is on (None if it is on none)."""
    from tsky.contract.ids import job_workflow_id
    from tsky.contract.job import JobState

    try:
        state = await client.get_workflow_handle(job_workflow_id(job_id)).query(Query.JOB_STATE, result_type=JobState)
    except RPCError:
        return None
    task = state.current_task()
    attempt = task.current_attempt()
    if state.pool is None or task.status.is_terminal() or attempt is None or attempt.ended_at is not None:
        return None
    return attempt.cluster_name
