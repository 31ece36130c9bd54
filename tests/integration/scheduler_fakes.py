"""A stand-in for the ManagedJob workflow that only takes and gives back a running slot, so the scheduler
can be driven step by step."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from tsky.contract.activity_io import ActivityName
    from tsky.contract.names import Signal, WorkflowType
    from tsky.contract.scheduling import SCHEDULER_WORKFLOW_ID, SlotRequest


@workflow.defn(name=WorkflowType.MANAGED_JOB)
class SlotOnlyJob:
    def __init__(self) -> None:
        self.granted = False
        self.finished = False

    @workflow.signal(name=Signal.SLOT_GRANTED)
    def slot_granted(self) -> None:
        self.granted = True

    @workflow.signal
    def finish(self) -> None:
        self.finished = True

    @workflow.query
    def has_slot(self) -> bool:
        return self.granted

    @workflow.run
    async def run(self, req: SlotRequest) -> None:
        await workflow.execute_local_activity(
            ActivityName.REQUEST_SLOT, req, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.wait_condition(lambda: self.granted)
        await workflow.wait_condition(lambda: self.finished)
        await workflow.get_external_workflow_handle(SCHEDULER_WORKFLOW_ID).signal(Signal.RELEASE_SLOT, req.job_id)
