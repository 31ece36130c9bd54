"""What a workflow of the user's own needs from tsky to start a managed job as its child.

Workflows cannot call the id registry's update themselves, so `allocate_job_id` does it for them:
the same registry and the same update as `tsky jobs launch`, so ids stay unique and monotonic across
the CLI and child jobs. The request id is the update id: a retried activity gets the same id back
(while the registry's run lasts; across its continue-as-new a retry may skip an id, never reuse one).

`job_result` reads a finished job's final state, for a parent whose child job was cancelled from
outside (`tsky jobs cancel`): a cancelled workflow returns no result of its own.
"""

from __future__ import annotations

import getpass
import socket
from typing import Any

from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from tsky.contract.activity_io import ActivityName, AllocateJobInput, AllocateJobResult, JobResultInput
from tsky.contract.ids import CONTROL_QUEUE, ID_REGISTRY_WORKFLOW_ID, job_workflow_id, user_hash
from tsky.contract.job import JobPolicy, JobResult, JobState, job_result
from tsky.contract.names import Query, Update, WorkflowType
from tsky.spec.settings import Settings


class JobIdActivities:
    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings

    @activity.defn(name=ActivityName.ALLOCATE_JOB_ID)
    async def allocate_job_id(self, inp: AllocateJobInput) -> AllocateJobResult:
        # By name, like every workflow-facing call here: activities never import workflow code.
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            WorkflowType.ID_REGISTRY,
            {"next_id": 1},
            id=ID_REGISTRY_WORKFLOW_ID,
            task_queue=CONTROL_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        job_id = await self.client.execute_update_with_start_workflow(
            Update.ALLOCATE_JOB_IDS,
            {"count": 1},
            start_workflow_operation=start,
            id=f"allocate-{inp.request_id}",
            result_type=int,
        )
        user = getpass.getuser()
        return AllocateJobResult(
            job_id=job_id,
            user=user,
            user_hash=user_hash(user, socket.gethostname()),
            policy=JobPolicy.from_settings(self.settings),
        )

    @activity.defn(name=ActivityName.JOB_RESULT)
    async def job_result(self, inp: JobResultInput) -> JobResult:
        handle = self.client.get_workflow_handle(job_workflow_id(inp.job_id))
        state = await handle.query(Query.JOB_STATE, result_type=JobState)
        return job_result(state)
