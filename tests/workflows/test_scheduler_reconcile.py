"""The scheduler's reconcile on the time-skipping server with real ManagedJob workflows: a slot holder that
ends without giving its slot back (a terminated workflow) must not block the jobs waiting behind it."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import Client, WorkflowHandle

from tests.workflows.fakes import FakeCloud, ended_jobs, running
from tests.workflows.test_recovery_table import SPOT_JOB, request
from tsky.activities.scheduling import request_slot
from tsky.contract.ids import CONTROL_QUEUE, SCHEDULER_WORKFLOW_ID, job_workflow_id
from tsky.contract.job import JobResult, JobState
from tsky.contract.scheduling import SchedulerState
from tsky.spec.status import ManagedJobStatus as S
from tsky.workflows.managed_job import ManagedJobWorkflow
from tsky.workflows.scheduler import SchedulerWorkflow

pytestmark = pytest.mark.asyncio


async def test_a_job_waiting_behind_a_terminated_holder_gets_its_slot() -> None:
    cloud = FakeCloud(run_blocks=True)  # job 1 holds its slot until it is terminated
    async with running(cloud, control=[request_slot, ended_jobs]) as env:
        await env.client.start_workflow(
            SchedulerWorkflow.run,
            SchedulerState(reconcile_seconds=1),
            id=SCHEDULER_WORKFLOW_ID,
            task_queue=CONTROL_QUEUE,
        )
        with env.auto_time_skipping_disabled():
            first = await _start(env.client, 1)
            await asyncio.wait_for(cloud.run_started.wait(), 30)
            second = await _start(env.client, 2)
            scheduler = env.client.get_workflow_handle(SCHEDULER_WORKFLOW_ID)
            for _ in range(200):
                if 2 in (await scheduler.query(SchedulerWorkflow.status)).waiters:
                    break
                await asyncio.sleep(0.05)
            await first.terminate("dies without giving its slot back")
            state = await _state(second)
            for _ in range(200):  # ten seconds of reconcile rounds (one a second)
                if state.tasks[0].status is S.RUNNING:
                    break
                await asyncio.sleep(0.05)
                state = await _state(second)
            await second.terminate("test over")
    assert state.tasks[0].status is S.RUNNING, state.tasks[0].details


async def _start(client: Client, job_id: int) -> WorkflowHandle[ManagedJobWorkflow, JobResult]:
    req = request(SPOT_JOB, job_id=job_id)
    req = req.model_copy(update={"policy": req.policy.model_copy(update={"max_running_jobs": 1})})
    return await client.start_workflow(
        ManagedJobWorkflow.run, req, id=job_workflow_id(job_id), task_queue=CONTROL_QUEUE
    )


async def _state(handle: WorkflowHandle[ManagedJobWorkflow, JobResult]) -> JobState:
    return await handle.query(ManagedJobWorkflow.state)
