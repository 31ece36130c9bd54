"""The scheduler entity on the real dev server, driven by stand-in jobs: grants in job-id order, a holder
that dies without releasing is reconciled away, and continue-as-new loses neither holders nor waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.worker import Worker

from tests.harness import TskyEnv
from tests.integration.scheduler_fakes import SlotOnlyJob
from tsky.activities.scheduling import ended_jobs, request_slot
from tsky.contract import search_attributes as sa
from tsky.contract.ids import CONTROL_QUEUE, SCHEDULER_WORKFLOW_ID, job_workflow_id
from tsky.contract.scheduling import SchedulerState, SchedulerStatus, SlotRequest
from tsky.worker.main import workflow_runner
from tsky.workflows.scheduler import SchedulerWorkflow

pytestmark = pytest.mark.integration

LIMIT = 2


async def until(probe: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def start_job(client: Client, job_id: int) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        SlotOnlyJob.run,
        SlotRequest(job_id=job_id, limit=LIMIT),
        id=job_workflow_id(job_id),
        task_queue=CONTROL_QUEUE,
        search_attributes=TypedSearchAttributes([SearchAttributePair(sa.JOB_ID, job_id)]),
    )


async def scenario(client: Client) -> None:
    scheduler = await client.start_workflow(
        SchedulerWorkflow.run,
        SchedulerState(reconcile_seconds=1, actions_per_run=4),
        id=SCHEDULER_WORKFLOW_ID,
        task_queue=CONTROL_QUEUE,
    )
    first_run = scheduler.result_run_id
    current = client.get_workflow_handle(SCHEDULER_WORKFLOW_ID)

    async def status() -> SchedulerStatus:
        return await current.query(SchedulerWorkflow.status)

    async def granted(job_id: int) -> bool:
        return await client.get_workflow_handle(job_workflow_id(job_id)).query(SlotOnlyJob.has_slot)

    jobs = {1: await start_job(client, 1), 2: await start_job(client, 2)}
    await until(lambda: _all(granted(1), granted(2)), "jobs 1 and 2 to hold slots")
    for job_id in (5, 3, 4):  # they arrive out of order
        jobs[job_id] = await start_job(client, job_id)
        await until(lambda job_id=job_id: _has(status(), job_id), f"job {job_id} to wait")
    assert (await status()).waiters == [3, 4, 5]

    await jobs[1].signal(SlotOnlyJob.finish)
    await until(lambda: granted(3), "job 3 (the lowest waiter) to get job 1's slot")
    assert not await granted(4) and not await granted(5)

    await jobs[2].terminate("dies without giving its slot back")
    await until(lambda: granted(4), "job 4 to get the dead holder's slot by reconciliation")
    assert not await granted(5)

    await jobs[3].signal(SlotOnlyJob.finish)
    await until(lambda: granted(5), "job 5 to get a slot")
    final = await status()
    assert final.holders == [4, 5] and final.waiters == [] and final.limit == LIMIT
    old = await client.get_workflow_handle(SCHEDULER_WORKFLOW_ID, run_id=first_run).describe()
    assert old.status == WorkflowExecutionStatus.CONTINUED_AS_NEW

    for job_id in (4, 5):
        await jobs[job_id].signal(SlotOnlyJob.finish)
        await jobs[job_id].result()
    await until(lambda: _empty(status()), "every slot to be free")
    await current.terminate("test over")


async def _all(*probes: Any) -> bool:
    return all(await asyncio.gather(*probes))


async def _has(status: Any, job_id: int) -> bool:
    return job_id in (await status).waiters


async def _empty(status: Any) -> bool:
    got = await status
    return not got.holders and not got.waiters


def test_scheduler_grants_in_order_reconciles_dead_holders_and_continues_as_new(tsky_env: TskyEnv) -> None:
    async def body() -> None:
        client = await tsky_env.client()
        async with Worker(
            client,
            task_queue=CONTROL_QUEUE,
            workflows=[SchedulerWorkflow, SlotOnlyJob],
            activities=[request_slot, ended_jobs],
            workflow_runner=workflow_runner(),
        ):
            await scenario(client)

    asyncio.run(body())
