"""A ManagedJob's lifecycle limits in the workflow (docs/lifecycle.md; the rules are in tsky.workflows.limits):
the durable timer to the nearest of max_duration / max_cost beside a task's attempts, the debug hold of a
failed task's cluster (`--keep-on-failure`), and the switch from spot to on-demand after N preemptions.

Each new command sequence is behind its own `workflow.patched` id, asked only on the path that needs it,
so jobs without limits replay as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from tsky.contract.activity_io import ClusterInfo
    from tsky.contract.job import TaskState
    from tsky.spec.requests import Candidate
    from tsky.spec.status import ManagedJobStatus
    from tsky.spec.task import Task
    from tsky.workflows.job_state import JobRun
    from tsky.workflows.limits import debug_access, limit_reason, next_limit

Status = ManagedJobStatus

_PATCH_LIMIT_TIMERS = "lifecycle-limit-timers"
_PATCH_KEEP_ON_FAILURE = "lifecycle-keep-on-failure-hold"
_PATCH_SPOT_FALLBACK = "lifecycle-spot-fallback-on-demand"


async def within_limits(run: JobRun, task: Task, ts: TaskState, attempts: Coroutine[Any, Any, None]) -> None:
    """Run the task's attempts; with a max_duration or max_cost, beside them a durable timer to the nearest
    limit, set again whenever a cluster starts or stops billing (no polling). On expiry `run.limit_hit`
    says why and the attempts are stopped as by a cancel: the phase stopped, the cluster torn down."""
    limited = task.max_duration is not None or run.req.lifecycle.max_cost is not None
    if not limited or not workflow.patched(_PATCH_LIMIT_TIMERS):
        await attempts
        return
    running = asyncio.create_task(attempts)
    try:
        while not running.done():
            limit = next_limit(run.job, ts, task, run.req.lifecycle, workflow.now())
            epoch = run.billing_epoch

            def changed(epoch: int = epoch) -> bool:
                return running.done() or run.billing_epoch != epoch

            try:
                await workflow.wait_condition(
                    changed,
                    timeout=timedelta(seconds=limit.seconds) if limit else None,
                    timeout_summary=f"{limit.kind} limit" if limit else None,
                )
            except TimeoutError:
                assert limit is not None
                run.limit_hit = limit_reason(limit, run.job, task, run.req.lifecycle, workflow.now())
                run.log(f"Task {ts.index} ({ts.name}) {run.limit_hit}: stopping it.")
                running.cancel()
                break
    except asyncio.CancelledError:
        if running.done():
            raise
        running.cancel()  # the user's cancel goes to the attempts, which stop and clean up
    await running
    run.limit_hit = None  # the attempts ended anyway (a limit that only ended a debug hold)


async def hold_for_debugging(
    run: JobRun, ts: TaskState, status: ManagedJobStatus, reason: str, cluster: ClusterInfo
) -> None:
    """`--keep-on-failure`: after the task's program failed (FAILED, FAILED_SETUP), keep the cluster for the
    hold so the user can get on it. The task is FAILED already; the timer, a cancel or a limit ends the
    hold, and the teardown follows as on every other path. The caller never holds after a preemption."""
    hold = run.req.lifecycle.keep_on_failure_seconds
    user_error = status in (Status.FAILED, Status.FAILED_SETUP)
    if hold is None or not user_error or run.req.pool is not None or not workflow.patched(_PATCH_KEEP_ON_FAILURE):
        return
    until = workflow.now() + timedelta(seconds=hold)
    run.finish(ts, status, reason or None)
    ts.held_until = until
    ts.details = f"kept for debugging until {until:%H:%M} UTC"
    run.start_billing(ts, ts.hourly_price)
    run.log(
        f"Task {ts.index} ({ts.name}) {status.value}; its cluster {cluster.name} is kept for debugging until "
        f"{until:%Y-%m-%d %H:%M:%S} UTC: {debug_access(cluster)}. `tsky jobs cancel {run.req.job_id}` ends "
        "the hold."
    )
    await run.publish()
    try:
        await workflow.sleep(timedelta(seconds=hold), summary="keep on failure")
        run.log(f"Debug hold of {cluster.name} over.")
    except asyncio.CancelledError:
        # The cancel ends the hold; the task stays FAILED (its own outcome) and is torn down next.
        run.log(f"Debug hold of {cluster.name} ended by {'a limit' if run.limit_hit else 'a cancel'}.")
    finally:
        run.stop_billing(ts, wasted=True)
        ts.held_until = None
        ts.details = None


def preemptions(ts: TaskState) -> int:
    return sum(a.cause == "preempted" for a in ts.attempts)


def falls_back_to_on_demand(run: JobRun, task: Task, ts: TaskState, candidates: list[Candidate]) -> bool:
    """Whether this launch is the one that moves the task to on-demand instances (once per task)."""
    after = task.job_recovery().fallback_after(run.req.lifecycle.spot_fallback_after)
    return (
        after is not None
        and ts.on_demand_since_attempt is None
        and preemptions(ts) >= after
        and any(c.use_spot for c in candidates)
        and workflow.patched(_PATCH_SPOT_FALLBACK)
    )
