"""Lifecycle limits (docs/lifecycle.md) on the time-skipping server with fake activities: max_duration across
a recovery, the debug hold (expiry, cancel, never after a preemption), spot → on-demand fallback, cost per
attempt and per job, and the budget stop. Hours of workflow time pass in milliseconds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from tests.workflows.fakes import LOST, REGION_A, REGION_B, FakeCloud, running
from tests.workflows.test_recovery_table import _expect_cancelled, _wait_state
from tsky.contract.ids import CONTROL_QUEUE
from tsky.contract.job import JobPolicy, JobRequest, JobResult, JobState
from tsky.spec.lifecycle import Lifecycle
from tsky.spec.loader import load_pipeline
from tsky.spec.status import ManagedJobStatus as S
from tsky.workflows.managed_job import ManagedJobWorkflow

pytestmark = pytest.mark.asyncio

SPOT = "name: train\nresources:\n  use_spot: true\nrun: python train.py\n"
# $1 per node-second in region a, $2 in region b: costs are easy to read.
PRICED = [REGION_A.model_copy(update={"price_per_node_hour": 3600.0}),
          REGION_B.model_copy(update={"price_per_node_hour": 7200.0})]  # fmt: skip


def request(yaml_text: str, lifecycle: Lifecycle | None = None) -> JobRequest:
    pipeline = load_pipeline(yaml_text)
    return JobRequest(
        job_id=1,
        name=pipeline.name,
        pipeline=pipeline,
        user="tester",
        user_hash="abcd1234",
        submitted_at=datetime.now(UTC),
        lifecycle=lifecycle or Lifecycle(),
        # A watcher that heartbeats in real time must not time out while hours of workflow time are skipped.
        policy=JobPolicy(launch_backoff_initial_seconds=60, watch_heartbeat_timeout_seconds=86400 * 30),
    )


async def run_to_end(cloud: FakeCloud, req: JobRequest, run_for: float = 0) -> tuple[JobResult, JobState]:
    """Run the job to its end; with `run_for`, skip that much time once a run that never ends has started
    (the server skips time by itself only while no activity is running)."""
    async with running(cloud) as env:
        handle = await env.client.start_workflow(ManagedJobWorkflow.run, req, id="tsky-job-1", task_queue=CONTROL_QUEUE)
        ended = asyncio.ensure_future(handle.result())
        if run_for:
            await asyncio.wait_for(cloud.run_started.wait(), 60)
            await env.sleep(run_for)
        result = await asyncio.wait_for(ended, 60)
        return result, await handle.query(ManagedJobWorkflow.state)


async def test_max_duration_counts_from_first_running_across_a_recovery_and_its_backoff() -> None:
    # Preempted, then no capacity for one round (a backoff), then a run that would never end.
    cloud = FakeCloud(run_script=[LOST], run_blocks=True, full=[set(), {"a", "b"}])
    req = request(SPOT.replace("run:", "max_duration: 1h\nrun:"))
    req.policy.launch_backoff_initial_seconds = 300  # the backoff round lasts 180-420 s
    result, state = await run_to_end(cloud, req, run_for=3500)
    task = state.tasks[0]
    assert result.status is S.FAILED
    assert task.failure_reason == "exceeded max_duration 1h"
    assert task.recovery_count == 1
    assert [a.cause for a in task.attempts] == ["preempted", "exceeded max_duration 1h"]
    assert task.start_at is not None and task.end_at is not None
    # The hour runs from the first RUNNING, the preemption and the backoff round included: 3500 s after the
    # second attempt started (a backoff of at least 180 s after the first) the job has ended.
    assert len(cloud.launches) == 3
    assert (task.end_at - task.start_at).total_seconds() >= 3600
    assert cloud.stopped  # the run was stopped, then its cluster torn down
    assert cloud.live_clusters() == set()
    assert any("exceeded max_duration 1h: stopping it" in line for line in cloud.log)


async def test_a_pipeline_stopped_by_max_duration_cancels_its_later_tasks() -> None:
    yaml_text = "name: p\n---\nname: a\nmax_duration: 10m\nrun: x\n---\nname: b\nrun: y\n"
    cloud = FakeCloud(run_blocks=True)
    result, _ = await run_to_end(cloud, request(yaml_text), run_for=700)
    assert [t.status for t in result.tasks] == [S.FAILED, S.CANCELLED]
    assert result.failure_reason == "exceeded max_duration 10m"
    assert cloud.live_clusters() == set()


async def _held(handle: WorkflowHandle[Any, Any]) -> JobState:
    return await _wait_state(handle, lambda s: s.tasks[0].held_until is not None)


async def test_keep_on_failure_holds_the_cluster_then_tears_it_down_at_expiry() -> None:
    cloud = FakeCloud(candidates=PRICED, run_script=[[3]])
    req = request("name: t\nrun: exit 3\n", Lifecycle(keep_on_failure_seconds=1800))
    async with running(cloud) as env:
        handle = await env.client.start_workflow(ManagedJobWorkflow.run, req, id="tsky-job-1", task_queue=CONTROL_QUEUE)
        with env.auto_time_skipping_disabled():
            state = await _held(handle)
            held = state.tasks[0]
            assert held.status is S.FAILED  # its own outcome, shown while the cluster is kept
            assert (held.details or "").startswith("kept for debugging until ")
            assert cloud.live_clusters() == {"t-1"}
        result = await handle.result()
    assert result.status is S.FAILED
    assert "exit code 3" in (result.failure_reason or "")
    assert cloud.live_clusters() == set()
    assert any("kept for debugging until" in line and "cd n0" in line for line in cloud.log)
    assert any("Debug hold of t-1 over." in line for line in cloud.log)
    # The held half hour is paid for ($1/s), and wasted: the attempt had failed.
    assert result.wasted_cost_usd >= 1800


async def test_cancel_during_the_hold_ends_it_and_tears_down() -> None:
    cloud = FakeCloud(run_script=[[3]])
    req = request("name: t\nrun: exit 3\n", Lifecycle(keep_on_failure_seconds=3600))
    async with running(cloud) as env:
        handle = await env.client.start_workflow(ManagedJobWorkflow.run, req, id="tsky-job-1", task_queue=CONTROL_QUEUE)
        with env.auto_time_skipping_disabled():
            await _held(handle)
            await handle.cancel()
            result = await asyncio.wait_for(handle.result(), 60)  # no hour skipped: the cancel ended it
    assert result.status is S.FAILED  # the task's outcome; the cancel only ended the hold
    assert cloud.torn_down == ["t-1"]
    assert any("Debug hold of t-1 ended by a cancel." in line for line in cloud.log)


async def test_a_preemption_never_holds_even_without_recovery() -> None:
    yaml_text = "name: t\nresources:\n  use_spot: true\n  job_recovery: none\nrun: x\n"
    cloud = FakeCloud(run_script=[LOST])
    result, _ = await run_to_end(cloud, request(yaml_text, Lifecycle(keep_on_failure_seconds=3600)))
    assert result.status is S.FAILED
    assert not any("kept for debugging" in line for line in cloud.log)
    assert cloud.live_clusters() == set()


async def test_spot_falls_back_to_on_demand_after_n_preemptions() -> None:
    yaml_text = SPOT.replace("use_spot: true", "use_spot: true\n  job_recovery:\n    spot_fallback_after: 2")
    cloud = FakeCloud(run_script=[LOST, LOST, [0]])
    result, state = await run_to_end(cloud, request(yaml_text))
    task = state.tasks[0]
    assert result.status is S.SUCCEEDED
    assert task.recovery_count == 2
    assert [a.candidate.use_spot for a in task.attempts if a.candidate] == [True, True, False]
    assert task.on_demand_since_attempt == 2
    assert [p.task.resources.use_spot for p in cloud.plans] == [True, False]
    assert any("launching it on on-demand instances from now on" in line for line in cloud.log)


async def test_spot_only_never_falls_back_even_when_the_setting_says_so() -> None:
    yaml_text = SPOT.replace("use_spot: true", "use_spot: true\n  job_recovery:\n    spot_only: true")
    cloud = FakeCloud(run_script=[LOST, LOST, [0]])
    result, state = await run_to_end(cloud, request(yaml_text, Lifecycle(spot_fallback_after=1)))
    assert result.status is S.SUCCEEDED
    assert [a.candidate.use_spot for a in state.tasks[0].attempts if a.candidate] == [True, True, True]
    assert len(cloud.plans) == 1


async def test_cost_per_attempt_and_per_job_across_three_attempts_one_preempted() -> None:
    yaml_text = SPOT.replace("use_spot: true", "use_spot: true\n  job_recovery:\n    max_restarts_on_errors: 1")
    # Preempted in a, fails in b (the lost region is tried last), succeeds on the restart.
    cloud = FakeCloud(candidates=PRICED, run_script=[LOST, [1], [0]], run_seconds=0.3)
    result, state = await run_to_end(cloud, request(yaml_text))
    attempts = state.tasks[0].attempts
    assert result.status is S.SUCCEEDED
    assert [a.cause for a in attempts] == ["preempted", "run exit code 1", "succeeded"]
    for attempt in attempts:
        assert attempt.candidate is not None and attempt.started_at and attempt.ended_at
        seconds = (attempt.ended_at - attempt.started_at).total_seconds()
        assert seconds > 0
        assert attempt.cost_usd == pytest.approx(attempt.candidate.hourly_cost * seconds / 3600)
    costs = [a.cost_usd or 0.0 for a in attempts]
    assert result.cost_usd == pytest.approx(sum(costs))
    assert result.wasted_cost_usd == pytest.approx(costs[0] + costs[1])  # the preempted and the failed one
    assert [a.candidate.region for a in attempts if a.candidate] == ["a", "b", "a"]
    assert sum("attempt" in line and " cost $" in line for line in cloud.log) == 3
    assert any(line.endswith("(estimated from catalog prices, which are approximate).") for line in cloud.log)


async def test_budget_stops_the_job_when_the_running_cost_reaches_max_cost() -> None:
    cloud = FakeCloud(candidates=PRICED, run_blocks=True)  # region a: $1 per second
    result, state = await run_to_end(cloud, request(SPOT, Lifecycle(max_cost=500)), run_for=600)
    task = state.tasks[0]
    assert result.status is S.FAILED
    assert (task.failure_reason or "").startswith("exceeded max_cost $500.00 (spent $500.")
    assert result.cost_usd == pytest.approx(500, abs=1)
    assert cloud.stopped
    assert cloud.live_clusters() == set()


async def test_budget_counts_what_earlier_attempts_spent() -> None:
    # The preempted attempt ran 0.3 s at $1/s; the budget timer of the next one starts from what is left.
    cloud = FakeCloud(candidates=PRICED, run_script=[LOST], run_blocks=True, run_seconds=0.3)
    result, state = await run_to_end(cloud, request(SPOT, Lifecycle(max_cost=100)), run_for=200)
    attempts = state.tasks[0].attempts
    assert result.status is S.FAILED
    assert result.cost_usd == pytest.approx(100, abs=0.5)
    assert attempts[0].cost_usd and attempts[0].cost_usd > 0
    assert (attempts[1].cost_usd or 0) == pytest.approx(100 - attempts[0].cost_usd, abs=0.5)


async def test_a_user_cancel_of_a_job_with_limits_still_cancels_and_tears_down() -> None:
    cloud = FakeCloud(run_blocks=True)
    req = request(SPOT.replace("run:", "max_duration: 10h\nrun:"), Lifecycle(max_cost=100))
    async with running(cloud) as env:
        handle = await env.client.start_workflow(ManagedJobWorkflow.run, req, id="tsky-job-1", task_queue=CONTROL_QUEUE)
        with env.auto_time_skipping_disabled():
            await asyncio.wait_for(cloud.run_started.wait(), 30)
            await handle.cancel()
        state = await _expect_cancelled(handle)
    assert state.tasks[0].status is S.CANCELLED
    assert [a.cause for a in state.tasks[0].attempts] == ["cancelled"]
    assert cloud.torn_down == ["train-1"]
