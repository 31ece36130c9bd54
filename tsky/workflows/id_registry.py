"""Job ids: integers from 1, monotonic, never reused, allocated durably.

One long-lived entity workflow per namespace hands out ranges through an update. Clients call it with
update-with-start (the first launch ever creates it) and an update id of their own, so a retried
allocation returns the same range instead of burning a new one. It continues-as-new well before the
per-run update limit (2,000), carrying only the next id.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from tsky.contract.id_registry import AllocateRequest, RegistryState
    from tsky.contract.names import Query, Update, WorkflowType

_ALLOCATIONS_PER_RUN = 500


@workflow.defn(name=WorkflowType.ID_REGISTRY)
class IdRegistryWorkflow:
    @workflow.init
    def __init__(self, state: RegistryState) -> None:
        self.state = state.model_copy()
        self.allocations = 0

    @workflow.run
    async def run(self, state: RegistryState) -> None:
        await workflow.wait_condition(
            lambda: self.allocations >= _ALLOCATIONS_PER_RUN or workflow.info().is_continue_as_new_suggested()
        )
        # Let in-flight allocations reply before the history is cut.
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self.state)

    @workflow.update(
        name=Update.ALLOCATE_JOB_IDS, description="Reserve `count` consecutive job ids; returns the first."
    )
    def allocate(self, req: AllocateRequest) -> int:
        first = self.state.next_id
        self.state.next_id += req.count
        self.allocations += 1
        return first

    @allocate.validator
    def _validate_allocate(self, req: AllocateRequest) -> None:
        if req.count < 1:
            raise ValueError("count must be at least 1")

    @workflow.query(name=Query.NEXT_JOB_ID, description="The next id that will be handed out.")
    def next_id(self) -> int:
        return self.state.next_id
