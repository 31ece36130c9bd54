"""The scheduler's side effects: asking it for a slot (creating it on first use), and finding the jobs
that ended without giving their slot back."""

from __future__ import annotations

from temporalio import activity
from temporalio.common import WorkflowIDConflictPolicy

from tsky.contract import search_attributes as sa
from tsky.contract.activity_io import ActivityName
from tsky.contract.ids import CONTROL_QUEUE, SCHEDULER_WORKFLOW_ID
from tsky.contract.names import Signal, WorkflowType
from tsky.contract.scheduling import EndedJobsInput, SchedulerState, SlotRequest

_IDS_PER_QUERY = 200  # keeps each visibility query short


@activity.defn(name=ActivityName.REQUEST_SLOT)
async def request_slot(req: SlotRequest) -> None:
    """Signal-with-start: the first job that needs the limit creates `tsky-scheduler`. Idempotent: the
    scheduler ignores a request from a job that already holds a slot or already waits."""
    await activity.client().start_workflow(
        WorkflowType.SCHEDULER,
        SchedulerState(),
        id=SCHEDULER_WORKFLOW_ID,
        task_queue=CONTROL_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal=Signal.ACQUIRE_SLOT,
        start_signal_args=[req],
        static_summary="Grants running slots to managed jobs (jobs.controller.max_running_jobs)",
    )


@activity.defn(name=ActivityName.ENDED_JOBS)
async def ended_jobs(inp: EndedJobsInput) -> list[int]:
    """Which of these jobs' workflows have closed: positive evidence only (a job visibility does not show
    yet is not reported)."""
    client = activity.client()
    ended: list[int] = []
    for start in range(0, len(inp.job_ids), _IDS_PER_QUERY):
        ids = ", ".join(str(i) for i in inp.job_ids[start : start + _IDS_PER_QUERY])
        closed = f"WorkflowType = '{WorkflowType.MANAGED_JOB}' AND ExecutionStatus != 'Running'"
        query = f"{closed} AND {sa.JOB_ID.name} IN ({ids})"
        async for execution in client.list_workflows(query, page_size=_IDS_PER_QUERY):
            job_id = execution.typed_search_attributes.get(sa.JOB_ID)
            if job_id is not None:
                ended.append(job_id)
    return ended
