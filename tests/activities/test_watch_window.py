"""The watcher's reachability window: a cluster that cannot be asked for a while and then answers is not
recovered; one that stays silent past both budgets (time and tries) is declared unreachable."""

from __future__ import annotations

import os
import subprocess
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


async def watch_claimed_phase(tmp_path: Path, preempted: bool) -> ApplicationError:
    """A run phase on a real local cluster that a worker claimed (`run-a0.started/`) and was killed before
    it recorded the pid: what a `kill -9` of the worker between the two leaves on the node."""
    from tsky.ops.clouds.local import LocalBackend, preempt_cluster
    from tsky.spec.requests import Candidate

    settings = Settings(home=tmp_path)
    backend = LocalBackend(settings)
    local = Candidate(cloud="local", region="local", instance_type="local", vcpus=1, memory_gb=1)
    inp = phase_input(min_elapsed=1, min_retries=1)  # each failed start waits 10 s for a pid
    cluster = await backend.provision("claimed-1", local, 1, inp.meta)
    try:
        agent = backend.node(cluster, 0)
        agent.dir.mkdir(parents=True, exist_ok=True)
        (agent.dir / f"{inp.key}.started").mkdir()
        if preempted:
            preempt_cluster(backend, cluster)
        with pytest.raises(ApplicationError) as info:
            await ActivityEnvironment().run(
                watch.PhaseActivities(settings).run_and_watch, inp.model_copy(update={"cluster": cluster})
            )
        return info.value
    finally:
        await backend.teardown("claimed-1", cluster)


@pytest.mark.asyncio
async def test_a_phase_claimed_by_a_dead_worker_never_wedges_the_job(tmp_path: Path) -> None:
    """Seen in the chaos run: the retried watcher failed "claimed but never started" forever, and the job
    stayed RUNNING although its node had been preempted. Now a start that fails is judged like a status
    check that fails: a lost node is recovered at once, any other node after the reachability window."""
    assert (await watch_claimed_phase(tmp_path / "a", preempted=True)).type == ErrorType.CLUSTER_LOST
    assert (await watch_claimed_phase(tmp_path / "b", preempted=False)).type == ErrorType.UNREACHABLE


@pytest.mark.asyncio
async def test_a_phase_whose_starter_died_before_recording_its_pid_is_attached_to(tmp_path: Path) -> None:
    """A worker killed after starting a phase but before recording its pid: the phase's wrapper recorded
    it, so the next watcher attaches to the running phase; the job neither runs twice nor waits to be
    declared unreachable."""
    from tsky.ops.clouds.local import LocalBackend
    from tsky.ops.clouds.phases import PROCESS_TAG_VAR, WRAPPER
    from tsky.spec.requests import Candidate

    settings = Settings(home=tmp_path)
    backend = LocalBackend(settings)
    local = Candidate(cloud="local", region="local", instance_type="local", vcpus=1, memory_gb=1)
    inp = phase_input(min_elapsed=60, min_retries=5)
    cluster = await backend.provision("lost-pid-1", local, 1, inp.meta)
    try:
        agent = backend.node(cluster, 0)
        runs = tmp_path / "runs"
        # What `start_phase` does up to the moment its worker is killed (the layout of phases.py).
        agent.dir.mkdir(parents=True, exist_ok=True)
        (agent.dir / f"{inp.key}.started").mkdir()
        (agent.dir / f"{inp.key}.sh").write_text(f"echo started >> {runs}; sleep 1; echo done")
        (agent.dir / "wrapper.sh").write_text(WRAPPER)
        env = {"PATH": os.environ["PATH"], PROCESS_TAG_VAR: f"{agent.tag}:{inp.key}"}
        wrapper = [str(agent.dir / "wrapper.sh"), str(agent.dir), inp.key, str(agent.workdir)]
        proc = subprocess.Popen(["bash", *wrapper], env=env, start_new_session=True)
        started = time.monotonic()
        result = await ActivityEnvironment().run(
            watch.PhaseActivities(settings).run_and_watch, inp.model_copy(update={"cluster": cluster})
        )
        assert result == watch.PhaseResult(exit_codes=[0])
        assert time.monotonic() - started < 60  # attached, not declared unreachable after the window
        assert runs.read_text() == "started\n"
        assert (agent.dir / f"{inp.key}.pid").read_text().split()[0] == str(proc.pid)
        proc.wait()
    finally:
        await backend.teardown("lost-pid-1", cluster)
