"""The sweeper: the leak backstop behind every job's own teardown.

One long-lived workflow per namespace (id `tsky-sweeper`), started by every worker with USE_EXISTING.
It is a timer loop, not a Temporal Schedule: the state it needs between sweeps (since when each cluster
has been seen without a live job, for the grace period) lives in the workflow and travels through
continue-as-new, sweeps never overlap, and starting it idempotently is one `start_workflow` call.
Each sweep is one activity on the launch queue (it lists clusters, looks jobs up, tears down); its
result says how long to wait before the next one, so a changed `jobs.sweeper.interval_seconds` applies
without restarting the workflow.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from tsky.contract.activity_io import ActivityName, SweepInput, SweepResult
    from tsky.contract.ids import LAUNCH_QUEUE
    from tsky.contract.names import Query, WorkflowType

# Bounds the history of one run (about 10 events per sweep); then continue-as-new.
_SWEEPS_PER_RUN = 200
_SWEEP_TIMEOUT = timedelta(hours=1)
_SWEEP_HEARTBEAT = timedelta(minutes=2)
_SWEEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=3)


class SweeperState(BaseModel):
    orphans_since: dict[str, float] = {}
    interval_seconds: float = 60  # until a sweep reports the worker's setting
    sweeps: int = 0  # over all runs
    torn_down: int = 0  # over all runs
    last_error: str | None = None


@workflow.defn(name=WorkflowType.SWEEPER)
class SweeperWorkflow:
    @workflow.init
    def __init__(self, state: SweeperState) -> None:
        self.state = state.model_copy(deep=True)

    @workflow.run
    async def run(self, state: SweeperState) -> None:
        for _ in range(_SWEEPS_PER_RUN):
            await self._sweep()
            if workflow.info().is_continue_as_new_suggested():
                break
            await workflow.sleep(timedelta(seconds=self.state.interval_seconds), summary="until the next sweep")
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self.state)

    async def _sweep(self) -> None:
        try:
            result = await workflow.execute_activity(
                ActivityName.SWEEP,
                SweepInput(orphans_since=self.state.orphans_since),
                result_type=SweepResult,
                task_queue=LAUNCH_QUEUE,
                start_to_close_timeout=_SWEEP_TIMEOUT,
                heartbeat_timeout=_SWEEP_HEARTBEAT,
                retry_policy=_SWEEP_RETRY,
                summary="sweep clusters",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            # A failed sweep deletes nothing; the next one tries again. The sweeper itself never fails.
            self.state.last_error = str(err.cause or err)
            workflow.logger.warning("sweep failed: %s", self.state.last_error)
        else:
            self.state.orphans_since = result.orphans_since
            self.state.interval_seconds = result.next_sweep_seconds
            self.state.torn_down += len(result.torn_down)
            self.state.last_error = None
            for key in result.torn_down:
                workflow.logger.info("swept %s", key)
        self.state.sweeps += 1

    @workflow.query(
        name=Query.SWEEPER_STATUS, description="Sweeps done, clusters torn down, clusters waiting out the grace period."
    )
    def status(self) -> SweeperState:
        return self.state
