"""The workflow a tsky schedule starts (`tsky jobs schedule create`): one ordinary managed job per run.

A Temporal Schedule can only start workflows with fixed ids and inputs, while a managed job needs a fresh
job id from the id registry. So each scheduled action starts this small wrapper, which allocates the id
and starts the job as its child (tsky.workflows.child), tagged with the schedule's name, then waits for
it: the schedule's overlap policy (skip, buffer-one, allow-all) thus applies to the managed jobs
themselves. Cancelling the wrapper cancels its job (and tears it down), as for any child job.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from tsky.contract.names import WorkflowType
    from tsky.spec.job import JobResult
    from tsky.workflows.child import ChildJob, execute_managed_job


class ScheduledRun(BaseModel):
    """A schedule's action input: the job to start on each run (its secrets and webhook URLs sealed)."""

    model_config = ConfigDict(extra="ignore")

    schedule: str
    job: ChildJob


@workflow.defn(name=WorkflowType.SCHEDULED_JOB)
class ScheduledJobWorkflow:
    @workflow.run
    async def run(self, scheduled: ScheduledRun) -> JobResult:
        job = scheduled.job
        tagged = job.orchestration.model_copy(update={"schedule": scheduled.schedule})
        return await execute_managed_job(job.model_copy(update={"orchestration": tagged}))
