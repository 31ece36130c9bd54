"""A pool job's lease on a pool worker, from the job's side: ask the pool (tsky.workflows.pool) for a whole
READY worker, run on it, give it back (or report it lost) when the task's attempt ends.

The pool answers with the `pool_grant` signal (ManagedJob's handler calls `granted`). Jobs take turns on a
worker, so a job's phases carry the job in their name on the nodes (`node_key`).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from tsky.contract.activity_io import ClusterInfo
    from tsky.contract.ids import pool_workflow_id
    from tsky.contract.job import TaskState
    from tsky.contract.names import Signal
    from tsky.contract.pool_state import (
        PoolGrant,
        PoolRelease,
        PoolRequest,
        pool_not_found,
    )
    from tsky.spec.requests import Candidate
    from tsky.spec.status import ManagedJobStatus
    from tsky.workflows.cluster_lifecycle import stop_phase
    from tsky.workflows.job_state import JobRun, PoolLease, TaskEnded
    from tsky.workflows.shield import shielded

Status = ManagedJobStatus

# A job waiting for a pool worker asks again this often (same key: harmless) to notice a vanished pool.
_POOL_RECHECK = timedelta(minutes=5)


def node_key(run: JobRun, index: int, attempt: int, phase: str) -> str:
    """A pool job's phase name on its worker: jobs take turns on a worker, so it carries the job."""
    return f"{phase}-j{run.req.job_id}-t{index}-a{attempt}"


def granted(run: JobRun, grant: PoolGrant) -> None:
    """The pool's answer; one for an acquisition the job gave up (another key) is ignored."""
    if grant.key == run.lease.key:
        run.lease.grant = grant


async def acquire_worker(run: JobRun, ts: TaskState, attempt: int, recovering: bool) -> tuple[ClusterInfo, Candidate]:
    """Wait for the pool to grant a whole READY worker (first come, first served by job id)."""
    pool = run.req.pool
    assert pool is not None
    lease = run.lease
    key = f"{run.req.job_id}-{ts.index}-{attempt}"
    lease.key, lease.grant = key, None
    request = PoolRequest(key=key, job_id=run.req.job_id, workflow_id=workflow.info().workflow_id)
    handle = workflow.get_external_workflow_handle(pool_workflow_id(pool))
    run.set(ts, Status.RECOVERING if recovering else Status.PENDING, f"Waiting for a worker of pool '{pool}'")
    await run.publish()
    while lease.grant is None:
        try:
            await handle.signal(Signal.POOL_REQUEST, request)
        except ApplicationError:
            raise TaskEnded(Status.FAILED_NO_RESOURCE, pool_not_found(pool)) from None
        try:
            await workflow.wait_condition(lambda: lease.grant is not None, timeout=_POOL_RECHECK)
        except TimeoutError:
            continue  # ask again: the same key, so at most one worker is ever granted
    grant = lease.grant
    if grant.cluster is None or grant.candidate is None:
        raise TaskEnded(Status.FAILED_NO_RESOURCE, grant.error or pool_not_found(pool))
    run.log(f"Task {ts.index} ({ts.name}) got worker {grant.worker_id} of pool '{pool}'.")
    return grant.cluster, grant.candidate


async def release_worker(run: JobRun, ts: TaskState, lost: bool) -> None:
    """Stop this job's processes on its worker (the worker stays) and tell the pool (`lost`: it was
    preempted or unreachable under the job, so the pool replaces it); without a worker yet, withdraw
    the request. Shielded like teardown."""
    key, cluster, pool = run.lease.key, run.hold.cluster, run.req.pool
    if key is None or pool is None:
        return
    attempt = ts.attempts[-1].index if ts.attempts else 0

    async def release() -> None:
        if cluster is not None and not lost:
            try:
                await stop_phase(run.calls, cluster, node_key(run, ts.index, attempt, "run"))
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                run.log(f"Could not stop job {run.req.job_id}'s processes on {cluster.name}: {err.cause}")
        reason = f"Lost while running job {run.req.job_id}." if lost else ""
        with contextlib.suppress(ApplicationError):  # a pool that is gone took its workers with it
            await workflow.get_external_workflow_handle(pool_workflow_id(pool)).signal(
                Signal.POOL_RELEASE, PoolRelease(key=key, lost=lost, reason=reason)
            )
        if cluster is not None:
            run.log(f"Worker {cluster.name} of pool '{pool}' released.")

    try:
        await shielded(release)
    finally:
        run.hold.cluster = None
        run.lease = PoolLease()
