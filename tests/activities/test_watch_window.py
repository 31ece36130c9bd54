"""The watcher's reachability window: a cluster that cannot be asked for a while and then answers is not
recovered; one that stays silent past both budgets (time and tries) is declared unreachable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from tsky.activities import watch
from tsky.contract.activity_io import ClusterInfo, ErrorType, JobMeta, NodeInfo, PhaseInput
from tsky.ops.clouds.base import PhaseStatus
from tsky.spec.settings import Settings
from tsky.spec.status import NodeState
from tsky.spec.task import Task


class SilentNode:
    """A node whose status cannot be read until `silent_until` (monotonic time), then reports the phase
    done with exit code 0."""

    def __init__(self, silent_until: float) -> None:
        self.silent_until = silent_until
        self.asked = 0

    async def start_phase(self, phase: str, script: str, env: dict[str, str]) -> int:
        return 4242

    async def phase_status(self, phase: str) -> PhaseStatus:
        self.asked += 1
        if time.monotonic() < self.silent_until:
            raise ConnectionError("no route to host")
        return PhaseStatus(started=True, pid=4242, alive=False, exit_code=0, log_size=0)

    async def read_log(self, phase: str, offset: int, limit: int) -> bytes:
        return b""

    async def stop_phase(self, phase: str) -> None:
        return None


class FakeBackend:
    state_check_seconds = 0.0

    def __init__(self, node: SilentNode) -> None:
        self.agent = node

    def node(self, cluster: ClusterInfo, rank: int) -> SilentNode:
        return self.agent

    async def node_states(self, cluster: ClusterInfo, fresh: bool = False) -> list[NodeState]:
        if time.monotonic() < self.agent.silent_until:
            raise ConnectionError("cloud API unreachable")
        return [NodeState.UP]


def phase_input(min_elapsed: float, min_retries: int) -> PhaseInput:
    return PhaseInput(
        meta=JobMeta(job_id=1, job_name="j", task_index=0, task_name="j", task_id="t", task_ids=["t"], user="u"),
        cluster=ClusterInfo(
            name="c-1", backend="fake", region="r", instance_type="i", nodes=[NodeInfo(rank=0, ip="10", host_id="h")]
        ),
        phase="run",
        attempt=0,
        task=Task(name="j", run="python train.py"),
        poll_seconds=0.1,
        status_check_min_elapsed_seconds=min_elapsed,
        status_check_min_retries=min_retries,
    )


async def run_watcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, node: SilentNode, inp: PhaseInput) -> object:
    monkeypatch.setattr(watch, "get_backend", lambda name, settings: FakeBackend(node))
    activities = watch.PhaseActivities(Settings(home=tmp_path))
    return await ActivityEnvironment().run(activities.run_and_watch, inp)


@pytest.mark.asyncio
async def test_silent_for_a_while_then_healthy_is_not_recovered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    node = SilentNode(silent_until=time.monotonic() + 2.0)
    result = await run_watcher(monkeypatch, tmp_path, node, phase_input(min_elapsed=5, min_retries=2))
    assert result == watch.PhaseResult(exit_codes=[0])
    assert node.asked >= 3  # more failed tries than min_retries, but not for min_elapsed: it kept asking


@pytest.mark.asyncio
async def test_silent_past_both_budgets_is_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    node = SilentNode(silent_until=time.monotonic() + 3600)
    started = time.monotonic()
    with pytest.raises(ApplicationError) as info:
        await run_watcher(monkeypatch, tmp_path, node, phase_input(min_elapsed=1, min_retries=3))
    assert info.value.type == ErrorType.UNREACHABLE
    assert node.asked > 3  # more than min_retries tries ...
    assert time.monotonic() - started >= 1  # ... and at least min_elapsed seconds of them


def test_the_window_needs_both_time_and_tries() -> None:
    window = watch.ReachabilityWindow(min_elapsed=0, min_retries=3)
    assert [window.failed() for _ in range(4)] == [False, False, False, True]
    window.ok()
    assert not window.failed()  # a success resets the count
    slow = watch.ReachabilityWindow(min_elapsed=3600, min_retries=0)
    assert not any(slow.failed() for _ in range(50))  # many tries, not enough time
