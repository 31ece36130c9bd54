"""The running-jobs limit, from a job's side: wait PENDING for a slot of the scheduler
(tsky.workflows.scheduler), give it back on every ending.

The scheduler grants with the `slot_granted` signal (ManagedJob's handler sets `run.slot`).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from tsky.contract import scheduling
    from tsky.contract.activity_io import ActivityName
    from tsky.contract.names import Signal
    from tsky.spec.status import ManagedJobStatus
    from tsky.workflows.job_state import JobRun, SlotState
    from tsky.workflows.shield import shielded


async def take_slot(run: JobRun) -> None:
    """Wait PENDING for a running slot when the request carries a limit; without one this costs nothing.
    Pool jobs run on the pool's workers and skip the limit, as in SkyPilot."""
    limit = run.req.policy.max_running_jobs
    if limit is None or run.req.pool is not None:
        return
    run.slot = SlotState.WAITING
    run.set(run.job.tasks[0], ManagedJobStatus.PENDING, scheduling.WAITING_DETAILS)
    run.log(f"Waiting for a running slot (at most {limit} jobs run at once).")
    await run.publish()
    request = scheduling.SlotRequest(job_id=run.req.job_id, limit=limit, priority=run.req.priority)
    await shielded(
        lambda: workflow.execute_local_activity(
            ActivityName.REQUEST_SLOT, request, start_to_close_timeout=timedelta(seconds=30)
        )
    )
    await workflow.wait_condition(lambda: run.slot is SlotState.HELD)
    run.job.tasks[0].details = None
    run.log("Running slot granted.")


def slot_granted(run: JobRun) -> None:
    """The scheduler's grant (a grant for a job no longer waiting changes nothing)."""
    if run.slot is SlotState.WAITING:
        run.slot = SlotState.HELD


async def give_slot(run: JobRun) -> None:
    """Free the slot, or the place in the wait, on every ending. Shielded like teardown."""
    if run.slot is None:
        return
    run.slot = None

    async def release() -> None:
        try:
            scheduler = workflow.get_external_workflow_handle(scheduling.SCHEDULER_WORKFLOW_ID)
            await scheduler.signal(Signal.RELEASE_SLOT, run.req.job_id)
        except FailureError as err:  # the scheduler reconciles against ended jobs
            run.log(f"Could not give the running slot back ({err}); the scheduler will notice.")

    await shielded(release)
