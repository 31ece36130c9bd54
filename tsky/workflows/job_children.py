"""Starting a managed job as a child of another workflow: the one way tsky's own wrapper workflows
(`scheduled_job.py`) and users' workflows (`tsky.client.child`) do it, so every such job gets its id from
the same registry and shows up, cancels and tears down alike."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.workflow import ChildWorkflowCancellationType, ChildWorkflowHandle, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from tsky.contract import job_start
    from tsky.contract.activity_io import ActivityName, AllocateJobInput, AllocateJobResult
    from tsky.contract.ids import CONTROL_QUEUE, job_workflow_id
    from tsky.contract.job import JobRequest, JobResult
    from tsky.contract.names import WorkflowType

ACTIVITY_TIMEOUT = timedelta(minutes=1)
ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


async def allocate_job_id(summary: str) -> AllocateJobResult:
    """A job id from the id registry (and the worker's user, user hash and job policy), through an
    activity: a workflow cannot send the registry an update itself. Idempotent: the update id derives
    from the workflow's deterministic uuid."""
    return await workflow.execute_activity(
        ActivityName.ALLOCATE_JOB_ID,
        AllocateJobInput(request_id=str(workflow.uuid4())),
        result_type=AllocateJobResult,
        task_queue=CONTROL_QUEUE,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=ACTIVITY_RETRY,
        summary=summary,
    )


async def start_job(req: JobRequest) -> ChildWorkflowHandle[object, JobResult]:
    """Start the ManagedJob of `req` as a child of the current workflow.

    A job owns clusters: if the parent ends (or is terminated), the job is asked to cancel and tears its
    clusters down (REQUEST_CANCEL; TERMINATE would leak them, ABANDON leave it unwatched); cancelling the
    parent while it awaits the job waits for the job's teardown (WAIT_CANCELLATION_COMPLETED)."""
    return await workflow.start_child_workflow(
        WorkflowType.MANAGED_JOB,
        req,
        id=job_workflow_id(req.job_id),
        task_queue=CONTROL_QUEUE,
        result_type=JobResult,
        parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
        cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=job_start.search_attributes(req),
        memo=job_start.memo(req),
        static_summary=job_start.summary(req),
        static_details=job_start.details(req),
    )
