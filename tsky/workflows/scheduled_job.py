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
from temporalio.common import RetryPolicy
from temporalio.exceptions import ChildWorkflowError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import tsky.workflows.job_children as job_children
    from tsky.contract.activity_io import ActivityName
    from tsky.contract.ids import LAUNCH_QUEUE
    from tsky.contract.job import JobRequest
    from tsky.contract.names import WorkflowType
    from tsky.contract.orchestration import RunUploads, ScheduledRun, ScheduledRunResult
    from tsky.spec.status import ManagedJobStatus

_COPY_TIMEOUT = timedelta(hours=1)
_COPY_HEARTBEAT = timedelta(seconds=60)
_COPY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=5)  # then this run fails


@workflow.defn(name=WorkflowType.SCHEDULED_JOB)
class ScheduledJobWorkflow:
    @workflow.run
    async def run(self, scheduled: ScheduledRun) -> ScheduledRunResult:
        alloc = await job_children.allocate_job_id(f"allocate a tsky job id for schedule {scheduled.schedule}")
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
            result = await (await job_children.start_job(req))
        except ChildWorkflowError as err:
            if not is_cancelled_exception(err) or workflow.cancellation_reason() is not None:
                raise
            # The job was cancelled from outside (`tsky jobs cancel`): this run is over, the schedule goes on.
            return ScheduledRunResult(job_id=req.job_id, status=ManagedJobStatus.CANCELLED)
        return ScheduledRunResult(job_id=req.job_id, status=result.status)
