"""The recovery decision table, one test per row, on the time-skipping server with fake activities.

Backoffs and recovery gaps of minutes pass in milliseconds; each test asserts what a user would see
(final status, #RECOVERIES, attempts and their causes) and that nothing was leaked.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError

from tests.workflows.fakes import LOST, PRECHECK, REGION_B, UNREACHABLE, FakeCloud, running
from tsky.contract.ids import CONTROL_QUEUE
from tsky.contract.job import JobPolicy, JobRequest, JobResult, JobState
from tsky.spec.loader import load_pipeline
from tsky.spec.status import ManagedJobStatus as S
from tsky.workflows.managed_job import ManagedJobWorkflow

pytestmark = pytest.mark.asyncio


def request(yaml_text: str, job_id: int = 1) -> JobRequest:
    pipeline = load_pipeline(yaml_text)
    return JobRequest(
        job_id=job_id,
        name=pipeline.name,
        pipeline=pipeline,
        user="tester",
        user_hash="abcd1234",
        submitted_at=datetime.now(UTC),
        policy=JobPolicy(launch_backoff_initial_seconds=60, launch_backoff_max_seconds=300),
    )


SPOT_JOB = "name: train\nresources:\n  use_spot: true\nrun: python train.py\n"


async def run_job(cloud: FakeCloud, yaml_text: str = SPOT_JOB) -> JobResult:
    async with running(cloud) as env:
        return await env.client.execute_workflow(
            ManagedJobWorkflow.run, request(yaml_text), id="tsky-job-1", task_queue=CONTROL_QUEUE
        )


async def test_preempted_while_running_recovers_in_another_region_first() -> None:
    cloud = FakeCloud(run_script=[LOST, [0]])
    result = await run_job(cloud)
    assert result.status is S.SUCCEEDED
    task = result.tasks[0]
    assert task.recovery_count == 1
    assert [a.cause for a in task.attempts] == ["preempted", "succeeded"]
    # EAGER_NEXT_REGION: the relaunch tries the lost region last.
    assert [c.region for c in cloud.launches[1].candidates] == ["b", "a"]
    assert [a.candidate.region for a in task.attempts if a.candidate] == ["a", "b"]
    assert cloud.launched == ["train-1", "train-1-r1"]
    assert cloud.live_clusters() == set()


async def test_failover_strategy_retries_the_same_region_first() -> None:
    yaml_text = "name: train\nresources:\n  use_spot: true\n  job_recovery: FAILOVER\nrun: x\n"
    cloud = FakeCloud(run_script=[LOST, [0]])
    result = await run_job(cloud, yaml_text)
    assert result.status is S.SUCCEEDED
    assert [c.region for c in cloud.launches[1].candidates] == ["a", "b"]


async def test_preempted_during_setup_recovers_and_reruns_setup() -> None:
    yaml_text = "name: train\nresources:\n  use_spot: true\nsetup: pip install x\nrun: python train.py\n"
    cloud = FakeCloud(setup_script=[LOST, [0]], run_script=[[0]])
    result = await run_job(cloud, yaml_text)
    assert result.status is S.SUCCEEDED
    assert result.tasks[0].recovery_count == 1
    assert [p for p, _, _ in cloud.phases] == ["setup", "setup", "run"]
    assert cloud.live_clusters() == set()


async def test_region_a_full_then_b_succeeds() -> None:
    cloud = FakeCloud(full=[{"a"}])
    result = await run_job(cloud)
    assert result.status is S.SUCCEEDED
    assert len(cloud.launches) == 1  # one launch round failed over from a to b
    assert result.tasks[0].attempts[0].candidate == REGION_B
    assert result.tasks[0].recovery_count == 0


async def test_all_full_waits_pending_then_capacity_returns() -> None:
    cloud = FakeCloud(full=[{"a", "b"}, {"a", "b"}, {"a", "b"}])
    async with running(cloud) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run, request(SPOT_JOB), id="tsky-job-1", task_queue=CONTROL_QUEUE
        )
        with env.auto_time_skipping_disabled():
            state = await _wait_state(handle, lambda s: s.tasks[0].status is S.PENDING)
        assert "In backoff, waiting for resources" in (state.tasks[0].details or "")
        result = await handle.result()
    assert result.status is S.SUCCEEDED
    assert len(cloud.launches) == 4
    assert sum("No capacity" in line for line in cloud.log) == 3
    assert result.tasks[0].recovery_count == 0


async def test_user_error_restarts_up_to_the_budget_then_fails() -> None:
    yaml_text = "name: t\nresources:\n  job_recovery:\n    max_restarts_on_errors: 2\nrun: exit 1\n"
    cloud = FakeCloud(run_script=[[1], [1], [1], [0]])
    result = await run_job(cloud, yaml_text)
    assert result.status is S.FAILED
    task = result.tasks[0]
    assert len(task.attempts) == 3  # the first run plus two restarts
    assert task.recovery_count == 2
    assert "exit code 1" in (task.failure_reason or "")
    assert cloud.live_clusters() == set()


async def test_exit_code_in_recover_on_exit_codes_restarts_without_counting() -> None:
    yaml_text = (
        "name: t\nresources:\n  job_recovery:\n    max_restarts_on_errors: 1\n    recover_on_exit_codes: [33]\nrun: x\n"
    )
    cloud = FakeCloud(run_script=[[33], [33], [1], [0]])
    result = await run_job(cloud, yaml_text)
    assert result.status is S.SUCCEEDED
    causes = [a.cause for a in result.tasks[0].attempts]
    assert causes == ["run exit code 33", "run exit code 33", "run exit code 1", "succeeded"]


async def test_setup_failure_uses_the_budget_and_ends_failed_setup() -> None:
    yaml_text = "name: t\nresources:\n  job_recovery:\n    max_restarts_on_errors: 1\nsetup: x\nrun: y\n"
    cloud = FakeCloud(setup_script=[[2], [2]])
    result = await run_job(cloud, yaml_text)
    assert result.status is S.FAILED_SETUP
    assert len(result.tasks[0].attempts) == 2


async def test_precheck_failure_everywhere_fails_fast() -> None:
    cloud = FakeCloud(full=[{"precheck:a", "precheck:b"}])
    result = await run_job(cloud)
    assert result.status is S.FAILED_PRECHECKS
    assert "bad credentials" in (result.failure_reason or "")
    assert cloud.launched == []


async def test_infeasible_plan_fails_prechecks_without_launching() -> None:
    cloud = FakeCloud(infeasible="No enabled infra offers H100:16 per node")
    result = await run_job(cloud)
    assert result.status is S.FAILED_PRECHECKS
    assert result.failure_reason == "No enabled infra offers H100:16 per node"
    assert cloud.launched == []  # (the launch activity plans first, and stops there)


async def test_an_activity_failing_past_its_retries_ends_failed_controller() -> None:
    cloud = FakeCloud(plan_broken=True)
    result = await run_job(cloud)
    assert result.status is S.FAILED_CONTROLLER
    assert "catalog file is corrupt" in (result.failure_reason or "")
    assert cloud.launched == []


async def test_unreachable_past_the_window_recovers() -> None:
    cloud = FakeCloud(run_script=[UNREACHABLE, [0]])
    result = await run_job(cloud)
    assert result.status is S.SUCCEEDED
    assert [a.cause for a in result.tasks[0].attempts] == ["unreachable", "succeeded"]
    assert cloud.live_clusters() == set()


async def test_no_recovery_strategy_fails_on_preemption() -> None:
    yaml_text = "name: t\nresources:\n  use_spot: true\n  job_recovery: none\nrun: x\n"
    cloud = FakeCloud(run_script=[LOST])
    result = await run_job(cloud, yaml_text)
    assert result.status is S.FAILED
    assert "job_recovery is none" in (result.failure_reason or "")
    assert cloud.live_clusters() == set()


async def test_cancel_during_backoff_is_cancelled_and_leaks_nothing() -> None:
    cloud = FakeCloud(full=[{"a", "b"}] * 100)
    async with running(cloud) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run, request(SPOT_JOB), id="tsky-job-1", task_queue=CONTROL_QUEUE
        )
        with env.auto_time_skipping_disabled():
            await _wait_state(handle, lambda s: s.tasks[0].status is S.PENDING)
            await handle.cancel()
        state = await _expect_cancelled(handle)
    assert state.tasks[0].status is S.CANCELLED
    assert cloud.live_clusters() == set()


async def test_cancel_during_recovery_is_cancelled_and_leaks_nothing() -> None:
    # Preempted, then every region is full: the job sits RECOVERING/PENDING until cancelled.
    cloud = FakeCloud(run_script=[LOST], full=[set()] + [{"a", "b"}] * 100)
    async with running(cloud) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run, request(SPOT_JOB), id="tsky-job-1", task_queue=CONTROL_QUEUE
        )
        with env.auto_time_skipping_disabled():
            await _wait_state(handle, lambda s: len(cloud.launches) >= 2)
            await handle.cancel()
        state = await _expect_cancelled(handle)
    assert state.tasks[0].status is S.CANCELLED
    assert cloud.launched == ["train-1"]
    assert cloud.live_clusters() == set()


async def test_cancel_while_running_tears_down_the_cluster() -> None:
    cloud = FakeCloud(run_blocks=True)
    async with running(cloud) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run, request(SPOT_JOB), id="tsky-job-1", task_queue=CONTROL_QUEUE
        )
        with env.auto_time_skipping_disabled():
            await asyncio.wait_for(cloud.run_started.wait(), 30)
            await handle.cancel()
        state = await _expect_cancelled(handle)
    assert state.tasks[0].status is S.CANCELLED
    assert [a.cause for a in state.tasks[0].attempts] == ["cancelled"]
    assert cloud.torn_down == ["train-1"]


async def test_cancel_during_setup_that_then_succeeds_is_not_lost() -> None:
    """Issue 20: the cancel reached a watcher only with its next heartbeat, so a setup that ended first
    swallowed it and `run` started. The workflow now stops the phase itself and ends CANCELLED."""
    cloud = FakeCloud(setup_gate=asyncio.Event())
    async with running(cloud) as env:
        handle = await env.client.start_workflow(
            ManagedJobWorkflow.run,
            request("name: train\nsetup: sleep 20\nrun: sleep 600\n"),
            id="tsky-job-1",
            task_queue=CONTROL_QUEUE,
        )
        with env.auto_time_skipping_disabled():
            await asyncio.wait_for(cloud.setup_started.wait(), 30)
            await handle.cancel()
            await _wait_state(handle, lambda s: s.tasks[0].status is S.CANCELLING)
            assert cloud.setup_gate is not None
            cloud.setup_gate.set()
        state = await _expect_cancelled(handle)
    assert state.tasks[0].status is S.CANCELLED
    assert [p for p, _, _ in cloud.phases] == ["setup"]  # run never started
    assert cloud.stopped == {"setup-a0"}
    assert cloud.live_clusters() == set()


async def test_pipeline_stops_at_the_failed_task_and_cancels_the_rest() -> None:
    yaml_text = "name: pipe\n---\nname: a\nrun: x\n---\nname: b\nrun: y\n---\nname: c\nrun: z\n"
    cloud = FakeCloud(run_script=[[0], [4]])
    result = await run_job(cloud, yaml_text)
    assert [t.status for t in result.tasks] == [S.SUCCEEDED, S.FAILED, S.CANCELLED]
    assert result.status is S.FAILED
    assert cloud.live_clusters() == set()


async def _wait_state(handle: WorkflowHandle[ManagedJobWorkflow, JobResult], ready: object) -> JobState:
    assert callable(ready)
    for _ in range(300):
        state = await handle.query(ManagedJobWorkflow.state)
        if ready(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"state never reached: {state}")


async def _expect_cancelled(handle: WorkflowHandle[ManagedJobWorkflow, JobResult]) -> JobState:
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert isinstance(info.value.cause, CancelledError)
    return await handle.query(ManagedJobWorkflow.state)


CKPT_JOB = SPOT_JOB + "file_mounts:\n  /checkpoint: {name: ckpt, store: s3, mode: MOUNT}\n"


async def test_a_bucket_that_cannot_be_mounted_fails_prechecks_on_the_first_launch() -> None:
    cloud = FakeCloud(sync_script=[PRECHECK])
    result = await run_job(cloud, CKPT_JOB)
    assert result.status is S.FAILED_PRECHECKS
    assert result.tasks[0].failure_reason == "cannot mount s3://ckpt at /checkpoint: in test"
    assert [p for p, _, _ in cloud.phases] == []
    assert cloud.live_clusters() == set()


async def test_a_bucket_that_cannot_be_mounted_on_recovery_is_retried() -> None:
    cloud = FakeCloud(run_script=[LOST, [0]], sync_script=["", PRECHECK, PRECHECK])
    result = await run_job(cloud, CKPT_JOB)
    assert result.status is S.SUCCEEDED
    assert result.tasks[0].recovery_count == 1
    assert [d for _, d in cloud.syncs] == ["down"] * 4
    assert sum("cannot mount s3://ckpt at /checkpoint: in test; retrying in" in line for line in cloud.log) == 2
    assert cloud.live_clusters() == set()
