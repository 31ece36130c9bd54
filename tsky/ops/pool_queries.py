"""What Temporal says about pools: which pool workers and pools run, and which leases belong to jobs that
have ended. Used by the sweeper and by `tsky jobs pool` (through `tsky.client.pools`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from tsky.contract.ids import job_workflow_id, pool_worker_cluster_name, pool_worker_from_workflow_id, pool_workflow_id
from tsky.contract.names import Query, Signal, WorkflowType
from tsky.contract.pool_state import PoolRelease, PoolSnapshot

logger = logging.getLogger(__name__)


async def live_pool_worker_clusters(client: Client) -> set[str]:
    """The clusters of the pool workers whose workflow runs (one visibility query): a pool's worker
    belongs to its worker workflow, not to the jobs it runs, so the sweeper must leave these alone."""
    query = f"WorkflowType = '{WorkflowType.POOL_WORKER}' AND ExecutionStatus = 'Running'"
    names: set[str] = set()
    async for execution in client.list_workflows(query):
        worker = pool_worker_from_workflow_id(execution.id)
        if worker is not None:
            names.add(pool_worker_cluster_name(*worker))
    return names


async def pool_runs(client: Client, pool: str) -> bool:
    """Whether the pool's workflow (its latest run: strongly consistent, unlike a visibility query that
    may lag a continue-as-new) is running."""
    try:
        description = await client.get_workflow_handle(pool_workflow_id(pool)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return description.status == WorkflowExecutionStatus.RUNNING


async def cancel_orphaned_pool_workers(client: Client) -> list[str]:
    """Cancel the pool workers whose pool workflow no longer runs, and return their workflow ids.

    `tsky jobs pool down` stops the workers before the pool ends; a pool terminated from outside (the Web
    UI, `temporal workflow terminate`) leaves them running (they are ABANDON children), each holding its
    cluster and watching it forever. Cancelled, a worker tears its cluster down and ends."""
    query = f"WorkflowType = '{WorkflowType.POOL_WORKER}' AND ExecutionStatus = 'Running'"
    alive: dict[str, bool] = {}
    cancelled: list[str] = []
    async for execution in client.list_workflows(query):
        worker = pool_worker_from_workflow_id(execution.id)
        if worker is None:
            continue
        pool = worker[0]
        if pool not in alive:
            alive[pool] = await pool_runs(client, pool)
        if not alive[pool]:
            await client.get_workflow_handle(execution.id).cancel()
            cancelled.append(execution.id)
    return cancelled


async def _ended_at(client: Client, workflow_id: str) -> datetime | None:
    """When the workflow closed; None while it runs. One that does not exist ended long ago."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return datetime.min.replace(tzinfo=UTC)
        raise
    if description.status == WorkflowExecutionStatus.RUNNING:
        return None
    return description.close_time or datetime.min.replace(tzinfo=UTC)


async def release_workers_of_ended_jobs(client: Client, grace_seconds: float) -> list[str]:
    """Have each running pool take back the workers still leased to jobs whose workflow ended more than
    `grace_seconds` ago, and say which.

    A job gives its worker back on every ending it sees; one terminated from outside cannot, and would
    hold the worker (and leave its processes running there) forever. Released as lost, the worker is
    replaced, and its teardown takes whatever the job left behind with it."""
    query = f"WorkflowType = '{WorkflowType.POOL}' AND ExecutionStatus = 'Running'"
    now = datetime.now(UTC)
    released: list[str] = []
    async for execution in client.list_workflows(query):
        pool = client.get_workflow_handle(execution.id)
        try:
            snapshot = await pool.query(Query.POOL_SNAPSHOT, result_type=PoolSnapshot)
        except (RPCError, WorkflowQueryFailedError) as err:  # ended since the listing: nothing to release
            logger.info("sweeper: could not ask pool %s for its workers: %s", execution.id, err)
            continue
        for worker in snapshot.workers:
            if worker.lease is None or worker.job_id is None:
                continue
            ended = await _ended_at(client, job_workflow_id(worker.job_id))
            if ended is None or (now - ended).total_seconds() < grace_seconds:
                continue
            reason = f"Job {worker.job_id} ended without giving its worker back."
            await pool.signal(Signal.POOL_RELEASE, PoolRelease(key=worker.lease, lost=True, reason=reason))
            released.append(f"pool '{snapshot.name}' worker {worker.worker_id} (job {worker.job_id})")
    return released
