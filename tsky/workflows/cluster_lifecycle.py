"""The life of a cluster, shared by ManagedJob (a job's cluster) and PoolWorker (a pool worker's cluster).

plan → launch rounds (failover across candidates, backoff while nothing has room) → sync files → phases
(setup, run) → teardown. Each step is one activity called by name with the timeouts and retries defined
here, once. What a workflow does around a step (its status, its log, its reports) stays in that workflow:
the steps take callbacks for it.

A new step of a cluster's life (e.g. stopping/starting a cluster) goes here; a step only jobs take goes in
the ManagedJob modules (`job_*.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from tsky.contract.activity_io import (
        ANY_ENABLED_BACKEND,
        STOP_GRACE_SECONDS,
        ActivityName,
        ClusterInfo,
        ErrorType,
        JobMeta,
        LaunchInput,
        LaunchResult,
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
    from tsky.contract.ids import LAUNCH_QUEUE, WATCH_QUEUE
    from tsky.contract.job import JobPolicy
    from tsky.spec.requests import Candidate
    from tsky.spec.task import Task
    from tsky.workflows.calls import call_activity, start_activity
    from tsky.workflows.recovery import launch_backoff, launch_order

T = TypeVar("T")

PLAN_TIMEOUT = timedelta(minutes=5)
LAUNCH_TIMEOUT = timedelta(hours=2)
SYNC_TIMEOUT = timedelta(hours=2)
SETUP_TIMEOUT = timedelta(days=7)
RUN_TIMEOUT = timedelta(days=365)
TEARDOWN_TIMEOUT = timedelta(minutes=20)
TEARDOWN_GIVE_UP = timedelta(hours=1)  # then the owner reports the leak; the sweeper keeps trying
STOP_PHASE_TIMEOUT = timedelta(minutes=2)  # plus the grace between SIGTERM and SIGKILL

PLAN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=5)
STOP_PHASE_RETRY = PLAN_RETRY
LAUNCH_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=3)
TEARDOWN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=1))
# Watching (a phase, an idle cluster) is retried without end (a dead worker must never kill a job); only
# the policy's own error types stop it.
WATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[ErrorType.CLUSTER_LOST, ErrorType.UNREACHABLE],
)


class Infeasible(Exception):
    """The cluster can never be made: the plan found nothing, or every candidate failed its prechecks."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Calls:
    """How one workflow calls activities: `owner` names it in each activity's summary (Web UI), and
    `heartbeat` is how soon an activity whose worker died is retried elsewhere (every activity of a job
    heartbeats, so a crash costs this long, whatever the activity was doing)."""

    owner: str  # "job 7", "pool p, worker 2"
    heartbeat: timedelta

    async def __call__(self, name: str, arg: Any, result_type: type[T], task_queue: str, **options: Any) -> T:
        return await call_activity(name, arg, result_type, task_queue, summary=self.summary(name), **options)

    def summary(self, name: str) -> str:
        return f"{name} ({self.owner})"


@dataclass
class ClusterHold:
    """What its owner must tear down if it ends now: the live cluster, or what a launch in flight may
    have made (the cluster's name on each backend the launch round tries)."""

    cluster: ClusterInfo | None = None
    launching: str | None = None
    backends: list[str] = field(default_factory=list)

    def teardown_targets(self) -> list[TeardownInput]:
        if self.cluster is not None:
            return [TeardownInput(cluster_name=self.cluster.name, backend=self.cluster.backend, cluster=self.cluster)]
        if self.launching is not None:
            return [TeardownInput(cluster_name=self.launching, backend=b) for b in self.backends]
        return []

    def release(self) -> None:
        self.cluster, self.launching, self.backends = None, None, []


async def plan(calls: Calls, meta: JobMeta, task: Task) -> list[Candidate]:
    """The candidates, best first; `Infeasible` when nothing can satisfy the task."""
    result = await calls(
        ActivityName.PLAN,
        PlanInput(meta=meta, task=task),
        PlanResult,
        LAUNCH_QUEUE,
        timeout=PLAN_TIMEOUT,
        heartbeat=calls.heartbeat,
        retry=PLAN_RETRY,
    )
    if result.infeasible_reason or not result.candidates:
        raise Infeasible(result.infeasible_reason or "No resources satisfy the request.")
    return result.candidates


@dataclass
class Launch:
    """One cluster to launch and how its rounds go. `strategy` and `lost_region` order the candidates of
    a recovery's first round (recovery.launch_order); `fail_on_prechecks`: when every candidate fails its
    prechecks, the launch is `Infeasible` (otherwise that counts as no capacity: a recovery waits)."""

    meta: JobMeta
    name: str
    launch: int
    num_nodes: int
    candidates: list[Candidate]
    policy: JobPolicy
    strategy: str = ""
    lost_region: str | None = None
    fail_on_prechecks: bool = True
    # With no candidates yet: the first round plans this task in the launch activity itself (one engine
    # round-trip instead of two) and fills `candidates` in for the rounds after it.
    plan: Task | None = None


async def launch(
    calls: Calls,
    hold: ClusterHold,
    spec: Launch,
    *,
    log: Callable[[str], None],
    on_backoff: Callable[[float], Awaitable[None]],
    after_backoff: Callable[[], Awaitable[None]] | None = None,
) -> tuple[ClusterInfo, Candidate]:
    """Launch rounds until one candidate has room. A round that finds no capacity anywhere calls
    `on_backoff(seconds)`, sleeps that long (recovery.launch_backoff), calls `after_backoff()` and tries
    again, without end. `hold` names what a teardown must remove meanwhile, and the cluster once up."""
    round_index = 0
    while True:
        planning = spec.plan is not None and not spec.candidates
        order = launch_order(spec.candidates, spec.strategy, spec.lost_region, first_round=round_index == 0)
        if planning:  # the plan's candidates may be on any enabled infra
            hold.launching, hold.backends = spec.name, [ANY_ENABLED_BACKEND]
            log(f"Launching {spec.name}: planning, then trying the best candidates.")
        else:
            hold.launching, hold.backends = spec.name, sorted({c.cloud for c in order})
            log(f"Launching {spec.name}: trying {', '.join(c.infra + ' ' + c.instance_type for c in order[:5])}.")
        try:
            result = await calls(
                ActivityName.LAUNCH,
                LaunchInput(
                    meta=spec.meta,
                    cluster_name=spec.name,
                    launch=spec.launch,
                    candidates=order,
                    num_nodes=spec.num_nodes,
                    plan=spec.plan if planning else None,
                ),
                LaunchResult,
                LAUNCH_QUEUE,
                timeout=LAUNCH_TIMEOUT,
                heartbeat=calls.heartbeat,
                retry=LAUNCH_RETRY,
            )
        except ActivityError as err:
            if is_cancelled_exception(err) or planning:
                raise  # with no plan there is nothing to retry with: the owner fails, as a failed plan does
            result = LaunchResult()
            log(f"Launch of {spec.name} failed unexpectedly: {err.cause or err}")
        hold.launching, hold.backends = None, []
        if result.plan is not None:
            if result.plan.infeasible_reason or not result.plan.candidates:
                raise Infeasible(result.plan.infeasible_reason or "No resources satisfy the request.")
            spec.candidates = result.plan.candidates
        if result.cluster is not None and result.chosen is not None:
            hold.cluster = result.cluster
            log(f"✓ Cluster launched: {spec.name}. Resources: {result.chosen.resources_label()}.")
            return result.cluster, result.chosen
        for failure in result.failures:
            log(f"  {failure.candidate.infra} {failure.candidate.instance_type}: {failure.message}")
        prechecks = [f.message for f in result.failures if f.kind == "precheck"]
        if spec.fail_on_prechecks and result.failures and len(prechecks) == len(result.failures):
            raise Infeasible("; ".join(dict.fromkeys(prechecks)))
        delay = launch_backoff(spec.policy, round_index, workflow.random())
        await on_backoff(delay)
        await workflow.sleep(timedelta(seconds=delay), summary="launch backoff")
        if after_backoff is not None:
            await after_backoff()
        round_index += 1


async def sync_files(calls: Calls, meta: JobMeta, cluster: ClusterInfo, task: Task, direction: str) -> SyncResult:
    """Put the task's workdir and file mounts on the cluster ("down"), or save them back ("up")."""
    return await calls(
        ActivityName.SYNC_FILES,
        SyncInput(meta=meta, cluster=cluster, task=task, direction=direction),
        SyncResult,
        LAUNCH_QUEUE,
        timeout=SYNC_TIMEOUT,
        heartbeat=calls.heartbeat,
        retry=LAUNCH_RETRY,
    )


def phase_input(
    meta: JobMeta,
    cluster: ClusterInfo,
    phase: str,
    attempt: int,
    task: Task,
    policy: JobPolicy,
    *,
    sealed_secrets: dict[str, str],
    gpus_per_node: float,
    node_key: str | None = None,
    log_path: str | None = None,
) -> PhaseInput:
    """What `setup` or `run` needs on the nodes, with the watch settings of the owner's policy."""
    return PhaseInput(
        meta=meta,
        cluster=cluster,
        phase=phase,
        attempt=attempt,
        task=task,
        sealed_secrets=sealed_secrets,
        gpus_per_node=gpus_per_node,
        poll_seconds=policy.watch_poll_seconds,
        status_check_min_elapsed_seconds=policy.status_check_min_elapsed_seconds,
        status_check_min_retries=policy.status_check_min_retries,
        node_key=node_key,
        log_path=log_path,
    )


def start_phase(calls: Calls, inp: PhaseInput) -> workflow.ActivityHandle[PhaseResult]:
    """Start (or re-attach to) a phase on every node and watch it to its end: the exit codes, or
    CLUSTER_LOST / UNREACHABLE (`lost_cluster`). A cancel waits for the watcher to finish."""
    setup = inp.phase == "setup"
    name = ActivityName.SETUP if setup else ActivityName.RUN
    return start_activity(
        name,
        inp,
        PhaseResult,
        LAUNCH_QUEUE if setup else WATCH_QUEUE,
        timeout=SETUP_TIMEOUT if setup else RUN_TIMEOUT,
        heartbeat=calls.heartbeat,
        retry=WATCH_RETRY,
        cancellation=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        summary=calls.summary(name),
    )


async def stop_phase(calls: Calls, cluster: ClusterInfo, key: str, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """Stop a phase's processes on every node (`key`: PhaseInput.key): SIGTERM, then SIGKILL after the
    grace. Its watcher sees them end at its next poll."""
    await calls(
        ActivityName.STOP_PHASE,
        StopPhaseInput(cluster=cluster, phase=key, grace_seconds=grace_seconds),
        type(None),
        WATCH_QUEUE,
        timeout=STOP_PHASE_TIMEOUT + timedelta(seconds=grace_seconds),
        retry=STOP_PHASE_RETRY,
    )


async def stop_and_teardown(calls: Calls, hold: ClusterHold, key: str, grace_seconds: float) -> None:
    """A cancel's end of a phase in one activity: stop its processes on every node (as `stop_phase`),
    wait for its watcher to store their last lines and return, then tear the held cluster down (retried
    as `teardown`). The hold is released once the cluster is gone; on a failure it still names the
    cluster, for the owner's ordinary teardown."""
    cluster = hold.cluster
    assert cluster is not None
    grace = timedelta(seconds=grace_seconds)
    await calls(
        ActivityName.STOP_AND_TEARDOWN,
        StopAndTeardownInput(
            stop=StopPhaseInput(cluster=cluster, phase=key, grace_seconds=grace_seconds),
            teardown=hold.teardown_targets()[0],
        ),
        type(None),
        WATCH_QUEUE,
        timeout=TEARDOWN_TIMEOUT + grace,
        heartbeat=calls.heartbeat,
        retry=TEARDOWN_RETRY,
        schedule_to_close=TEARDOWN_GIVE_UP + grace,
    )
    hold.release()


def lost_cluster(err: ActivityError) -> ApplicationError | None:
    """The watcher's evidence that the cluster is gone (CLUSTER_LOST) or cannot be reached past the
    window (UNREACHABLE); None for any other failure."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type in (ErrorType.CLUSTER_LOST, ErrorType.UNREACHABLE):
        return cause
    return None


async def teardown(calls: Calls, hold: ClusterHold, on_down: Callable[[str], None]) -> list[tuple[str, ActivityError]]:
    """Tear down what `hold` names, each target retried until the backend confirms it is gone or the
    give-up time passes; returns the targets that could not be removed, with why. Not shielded: the
    caller shields it from a cancel. A cancel of the teardown itself is raised."""
    failed: list[tuple[str, ActivityError]] = []
    try:
        for target in hold.teardown_targets():
            try:
                await calls(
                    ActivityName.TEARDOWN,
                    target,
                    type(None),
                    LAUNCH_QUEUE,
                    timeout=TEARDOWN_TIMEOUT,
                    heartbeat=calls.heartbeat,
                    retry=TEARDOWN_RETRY,
                    schedule_to_close=TEARDOWN_GIVE_UP,
                )
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                failed.append((target.cluster_name, err))
                continue
            on_down(target.cluster_name)
    finally:
        hold.release()
    return failed
