"""The workflow a tsky schedule starts (`tsky jobs schedule create`): one ordinary managed job per run.

A Temporal Schedule can only start workflows with fixed ids and inputs, while a managed job needs a fresh
job id from the id registry. So each scheduled action starts this small wrapper, which allocates the id
(as `tsky.client.child` does for users' workflows) and starts the job as its child, tagged with the
schedule's name, then waits for it: the schedule's overlap policy (skip, buffer-one, allow-all) thus
applies to the managed jobs themselves. Cancelling the wrapper cancels its job, which tears down first.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ChildWorkflowError, is_cancelled_exception
from temporalio.workflow import ChildWorkflowCancellationType, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from tsky.contract import job_start
    from tsky.contract.activity_io import ActivityName, AllocateJobInput, AllocateJobResult
    from tsky.contract.ids import CONTROL_QUEUE, LAUNCH_QUEUE, job_workflow_id
    from tsky.contract.job import JobRequest, JobResult
    from tsky.contract.names import WorkflowType
    from tsky.contract.orchestration import RunUploads, ScheduledRun, ScheduledRunResult
    from tsky.spec.status import ManagedJobStatus

_ALLOCATE_TIMEOUT = timedelta(minutes=1)
_ALLOCATE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
_COPY_TIMEOUT = timedelta(hours=1)
_COPY_HEARTBEAT = timedelta(seconds=60)
_COPY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=5)  # then this run fails


@workflow.defn(name=WorkflowType.SCHEDULED_JOB)
class ScheduledJobWorkflow:
    @workflow.run
    async def run(self, scheduled: ScheduledRun) -> ScheduledRunResult:
        alloc = await workflow.execute_activity(
            ActivityName.ALLOCATE_JOB_ID,
            AllocateJobInput(request_id=str(workflow.uuid4())),
            result_type=AllocateJobResult,
            task_queue=CONTROL_QUEUE,
            start_to_close_timeout=_ALLOCATE_TIMEOUT,
            retry_policy=_ALLOCATE_RETRY,
            summary=f"allocate a tsky job id for schedule {scheduled.schedule}",
        )
        pipeline, uploads = scheduled.pipeline, []
        if scheduled.uploads:
            run_copy = await workflow.execute_activity(
                ActivityName.COPY_RUN_UPLOADS,
                RunUploads(
                    pipeline=pipeline,
                    uploads=scheduled.uploads,
                    run_id=f"{alloc.job_id}-{workflow.uuid4().hex[:8]}",
                    user=scheduled.user,
                    user_hash=alloc.user_hash,
                ),
                result_type=RunUploads,
                task_queue=LAUNCH_QUEUE,
                start_to_close_timeout=_COPY_TIMEOUT,
                heartbeat_timeout=_COPY_HEARTBEAT,
                retry_policy=_COPY_RETRY,
                summary=f"copy schedule {scheduled.schedule}'s files for job {alloc.job_id}",
            )
            pipeline, uploads = run_copy.pipeline, run_copy.uploads
        req = JobRequest(
            job_id=alloc.job_id,
            name=scheduled.name,
            pipeline=pipeline,
            uploads=uploads,
            user=scheduled.user,
            user_hash=alloc.user_hash,
            submitted_at=workflow.now(),
            sealed_secrets=scheduled.sealed_secrets,
            priority=scheduled.priority,
            pool=scheduled.pool,
            policy=alloc.policy,
            orchestration=scheduled.orchestration.model_copy(update={"schedule": scheduled.schedule}),
        )
        try:
            result = await workflow.execute_child_workflow(
                WorkflowType.MANAGED_JOB,
                req,
                id=job_workflow_id(req.job_id),
                task_queue=CONTROL_QUEUE,
                result_type=JobResult,
                # A job owns clusters: ending the wrapper asks the job to cancel (and tear down).
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
                cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=job_start.search_attributes(req),
                memo=job_start.memo(req),
                static_summary=job_start.summary(req),
                static_details=job_start.details(req),
            )
        except ChildWorkflowError as err:
            if not is_cancelled_exception(err) or workflow.cancellation_reason() is not None:
                raise
            # The job was cancelled from outside (`tsky jobs cancel`): this run is over, the schedule goes on.
            return ScheduledRunResult(job_id=req.job_id, status=ManagedJobStatus.CANCELLED)
        return ScheduledRunResult(job_id=req.job_id, status=result.status)
