"""The sweeper workflow on the time-skipping server with a scripted sweep activity: a failed sweep is
logged and the next one runs, the grace-period state travels from one sweep to the next, and the wait
between sweeps is the one the activity reports (the worker's setting)."""

from __future__ import annotations

import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from tests.workflows.fakes import time_skipping_env
from tsky.spec.activity_io import ActivityName, SweepInput, SweepResult
from tsky.spec.ids import CONTROL_QUEUE, LAUNCH_QUEUE, SWEEPER_WORKFLOW_ID
from tsky.worker.main import workflow_runner
from tsky.workflows import WORKFLOWS
from tsky.workflows.sweeper import SweeperState, SweeperWorkflow

pytestmark = pytest.mark.asyncio


async def test_sweeps_survive_failures_and_carry_the_grace_state() -> None:
    seen: list[SweepInput] = []

    @activity.defn(name=ActivityName.SWEEP)
    async def sweep(inp: SweepInput) -> SweepResult:
        seen.append(inp)
        if len(seen) == 1:
            raise ApplicationError("the cloud API is down", non_retryable=True)
        if len(seen) == 2:
            return SweepResult(orphans_since={"gcp/us-central1/old-1": 100.0}, live=3, next_sweep_seconds=600)
        return SweepResult(torn_down=["gcp/us-central1/old-1"], next_sweep_seconds=600)

    env = await time_skipping_env()
    try:
        async with (
            Worker(env.client, task_queue=CONTROL_QUEUE, workflows=WORKFLOWS, workflow_runner=workflow_runner()),
            Worker(env.client, task_queue=LAUNCH_QUEUE, activities=[sweep]),
        ):
            handle = await env.client.start_workflow(
                SweeperWorkflow.run, SweeperState(interval_seconds=60), id=SWEEPER_WORKFLOW_ID, task_queue=CONTROL_QUEUE
            )
            await env.sleep(61)  # the failed sweep, then one interval (the initial 60 s)
            state = await handle.query(SweeperWorkflow.status)
            assert state.sweeps == 2 and state.last_error is None and state.interval_seconds == 600
            assert state.orphans_since == {"gcp/us-central1/old-1": 100.0}
            await env.sleep(300)  # within the interval the activity asked for: no sweep
            assert (await handle.query(SweeperWorkflow.status)).sweeps == 2
            await env.sleep(301)
            state = await handle.query(SweeperWorkflow.status)
            assert state.sweeps == 3 and state.torn_down == 1 and state.orphans_since == {}
            assert seen[2].orphans_since == {"gcp/us-central1/old-1": 100.0}
            await handle.terminate()
    finally:
        await env.shutdown()
