"""Issue 18's workflow rules on the time-skipping server with fake activities: the scheduled-run wrapper,
`--after` dependency waits, a relaunch skipping the tasks already done, and webhook notifications
(in order, retried, never failing the job)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from tests.workflows.fakes import FakeCloud, running
from tests.workflows.test_recovery_table import request
from tsky.contract import search_attributes as sa
from tsky.contract.activity_io import ActivityName, AllocateJobInput, AllocateJobResult
from tsky.contract.ids import CONTROL_QUEUE, job_workflow_id
from tsky.contract.job import JobPolicy, JobRequest, JobResult, JobState
from tsky.contract.orchestration import (
    JobEvent,
    JobsEnded,
    Notify,
    NotifyInput,
    Orchestration,
    Relaunch,
    ScheduledRun,
    WaitForJobsInput,
)
from tsky.spec.loader import load_pipeline
from tsky.spec.status import ManagedJobStatus as S
from tsky.workflows.managed_job import ManagedJobWorkflow
from tsky.workflows.scheduled_job import ScheduledJobWorkflow

pytestmark = pytest.mark.asyncio

JOB = "name: train\nrun: python train.py\n"
PIPE3 = "name: pipe\n---\nname: prep\nrun: a\n---\nname: train\nrun: b\n---\nname: eval\nrun: c\n"


@dataclass
class Outside:
    """The fakes of what lies outside a job: the other jobs it waits for, the id registry, its webhooks."""

    ended: dict[int, str] = field(default_factory=dict)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    failures_left: int = 0  # the webhook answers 500 this many times first
    always_fails: bool = False
    events: list[JobEvent] = field(default_factory=list)
    waits: list[WaitForJobsInput] = field(default_factory=list)

    @activity.defn(name=ActivityName.WAIT_FOR_JOBS)
    async def wait_for_jobs(self, inp: WaitForJobsInput) -> JobsEnded:
        self.waits.append(inp)
        while not self.released.is_set():
            activity.heartbeat()
            await asyncio.sleep(0.05)
        return JobsEnded(statuses={j: self.ended[j] for j in inp.job_ids if j in self.ended})

    @activity.defn(name=ActivityName.NOTIFY)
    async def notify(self, inp: NotifyInput) -> None:
        if self.always_fails or self.failures_left > 0:
            self.failures_left -= 1
            raise ApplicationError("webhook answered HTTP 500")
        self.events.append(inp.event)

    @activity.defn(name=ActivityName.ALLOCATE_JOB_ID)
    async def allocate(self, inp: AllocateJobInput) -> AllocateJobResult:
        return AllocateJobResult(job_id=7, user="cron", user_hash="abcd1234", policy=JobPolicy())


def with_orchestration(req: JobRequest, **fields: object) -> JobRequest:
    return req.model_copy(update={"orchestration": Orchestration.model_validate(fields)})


async def run(cloud: FakeCloud, outside: Outside, req: JobRequest) -> JobResult:
    async with running(cloud, control=[outside.notify, outside.allocate], watch=[outside.wait_for_jobs]) as env:
        return await env.client.execute_workflow(
            ManagedJobWorkflow.run, req, id=job_workflow_id(req.job_id), task_queue=CONTROL_QUEUE
        )


# -- --after ------------------------------------------------------------------------------------------


async def test_a_job_after_a_failed_one_ends_cancelled_with_the_reason_and_launches_nothing() -> None:
    cloud, outside = FakeCloud(), Outside(ended={5: "FAILED"})
    outside.released.set()
    result = await run(cloud, outside, with_orchestration(request(JOB, job_id=6), after=[5]))
    assert result.status is S.CANCELLED
    assert result.failure_reason is not None and "Job 5 (--after) ended FAILED" in result.failure_reason
    assert cloud.launched == [] and cloud.phases == []
    assert any("Job CANCELLED: Job 5" in line for line in cloud.log)


async def test_after_any_runs_the_job_whatever_its_dependencies_ended_with() -> None:
    cloud, outside = FakeCloud(), Outside(ended={5: "FAILED", 4: "SUCCEEDED"})
    outside.released.set()
    req = with_orchestration(request(JOB, job_id=6), after=[4, 5], after_any=True)
    result = await run(cloud, outside, req)
    assert result.status is S.SUCCEEDED and cloud.launched == ["train-6"]
    assert outside.waits[0].job_ids == [4, 5]


async def test_the_job_waits_pending_for_its_dependencies_then_runs() -> None:
    cloud, outside = FakeCloud(), Outside(ended={5: "SUCCEEDED"})
    req = with_orchestration(request(JOB, job_id=6), after=[5])
    async with running(cloud, watch=[outside.wait_for_jobs]) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run, req, id=job_workflow_id(6), task_queue=CONTROL_QUEUE
        )

        async def waiting() -> JobState:
            while True:
                state = await handle.query(ManagedJobWorkflow.state)
                if state.tasks[0].details:
                    return state
                await asyncio.sleep(0.1)

        state = await asyncio.wait_for(waiting(), 30)
        assert state.tasks[0].status is S.PENDING and state.tasks[0].details == "Waiting for job 5"
        described = await handle.describe()
        assert described.typed_search_attributes.get(sa.STATUS) == "PENDING"
        assert cloud.launched == []
        outside.released.set()
        result = await handle.result()
    assert result.status is S.SUCCEEDED and cloud.launched == ["train-6"]


# -- relaunch -----------------------------------------------------------------------------------------


async def test_a_relaunch_runs_only_the_tasks_not_done_and_keeps_their_task_ids() -> None:
    cloud, outside = FakeCloud(), Outside()
    old_ids = ["sky-managed-old_pipe_prep_3-0", "sky-managed-old_pipe_train_3-1", "sky-managed-old_pipe_eval_3-2"]
    relaunch = Relaunch(of_job=3, skip_tasks=[0], task_ids=old_ids)
    req = with_orchestration(request(PIPE3, job_id=4), relaunch=relaunch.model_dump())
    async with running(cloud) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run, req, id=job_workflow_id(4), task_queue=CONTROL_QUEUE
        )
        result = await handle.result()
        state = await handle.query(ManagedJobWorkflow.state)
    assert [t.status for t in result.tasks] == [S.SUCCEEDED] * 3
    assert cloud.launched == ["train-4-t1", "eval-4-t2"]  # prep is not run again
    assert [t.task_id for t in state.tasks] == old_ids
    assert state.tasks[0].details == "Done in job 3" and state.tasks[0].attempts == []
    del outside


# -- notifications ------------------------------------------------------------------------------------


def notifying(req: JobRequest, statuses: list[S] | None = None) -> JobRequest:
    notify = Notify(sealed_urls=["tsky-sealed:v1:opaque"], statuses=statuses or [], web_ui="http://127.0.0.1:1")
    return with_orchestration(req, notify=notify.model_dump())


async def test_each_transition_is_posted_in_order_even_after_three_failed_tries() -> None:
    cloud, outside = FakeCloud(run_script=[[3]]), Outside(failures_left=3)
    result = await run(cloud, outside, notifying(request(JOB, job_id=9)))
    assert result.status is S.FAILED
    assert [(e.previous_status, e.status) for e in outside.events] == [
        (S.PENDING, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.RUNNING, S.FAILED),
    ]
    last = outside.events[-1]
    assert last.job_id == 9 and last.name == "train" and last.reason and "exit code 3" in last.reason
    assert last.cost_so_far is None  # no running cost computed yet
    assert last.links["web_ui"].endswith("/workflows/tsky-job-9")


async def test_only_the_chosen_statuses_are_posted() -> None:
    cloud, outside = FakeCloud(), Outside()
    await run(cloud, outside, notifying(request(JOB, job_id=9), [S.SUCCEEDED, S.FAILED]))
    assert [e.status for e in outside.events] == [S.SUCCEEDED]
    assert outside.events[0].previous_status is S.RUNNING


async def test_a_webhook_that_never_answers_is_logged_and_the_job_still_succeeds() -> None:
    cloud, outside = FakeCloud(), Outside(always_fails=True)
    result = await run(cloud, outside, notifying(request(JOB, job_id=9), [S.SUCCEEDED]))
    assert result.status is S.SUCCEEDED
    assert any("Webhook 0 not notified of SUCCEEDED (gave up)" in line for line in cloud.log)


# -- the scheduled-run wrapper -----------------------------------------------------------------------


async def test_a_scheduled_run_is_an_ordinary_job_tagged_with_its_schedule() -> None:
    cloud, outside = FakeCloud(), Outside()
    scheduled = ScheduledRun(
        schedule="nightly",
        pipeline=load_pipeline(JOB),
        name="train",
        user="alice",
        orchestration=notifying(request(JOB)).orchestration,
    )
    async with running(cloud, control=[outside.allocate, outside.notify]) as env:
        result = await env.client.execute_workflow(
            ScheduledJobWorkflow.run,
            scheduled,
            id="tsky-schedule-nightly-2026-01-01T03:00:00Z",
            task_queue=CONTROL_QUEUE,
        )
        described = await env.client.get_workflow_handle(job_workflow_id(7)).describe()
        memo = await described.memo()
    assert result.job_id == 7 and result.status is S.SUCCEEDED and cloud.launched == ["train-7"]
    assert described.typed_search_attributes.get(sa.USER) == "alice"
    assert described.typed_search_attributes.get(sa.SCHEDULE) == "nightly"
    assert memo["schedule"] == "nightly"
    assert outside.events[-1].schedule == "nightly"  # the run keeps the schedule's webhooks


async def test_a_cancelled_job_still_posts_its_last_transitions() -> None:
    cloud, outside = FakeCloud(run_blocks=True), Outside()
    req = notifying(request(JOB, job_id=9))
    async with running(cloud, control=[outside.notify]) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run, req, id=job_workflow_id(9), task_queue=CONTROL_QUEUE
        )
        await asyncio.wait_for(cloud.run_started.wait(), 30)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert [e.status for e in outside.events] == [S.STARTING, S.RUNNING, S.CANCELLING, S.CANCELLED]
