"""The ManagedJob workflow: one durable workflow per managed job (one task or a pipeline of tasks).

Per task, in order: plan → launch (with failover and backoff) → sync files → setup → run_and_watch →
decide (tsky.workflows.recovery) → recover or finish → teardown. The cluster is torn down on every
ending — success, failure, cancel — from a `finally`, shielded from a cancel that arrives mid-teardown.

State lives in this workflow (its history), so a crash of any tsky process loses nothing: a new worker
replays it and carries on, re-attaching to the processes already running on the cluster.

Durability rules honoured here: no I/O, no wall clock (workflow.now), no global randomness
(workflow.random); activities are called by name, never imported; any change to the sequence of
commands needs `workflow.patched` (the replay tests catch it).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, FailureError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from tsky.spec import scheduling
    from tsky.spec import search_attributes as sa
    from tsky.spec.activity_io import (
        STOP_GRACE_SECONDS,
        ActivityName,
        CleanupJobInput,
        ClusterInfo,
        ControllerLogInput,
        ErrorType,
        JobMeta,
        LaunchInput,
        LaunchResult,
        PhaseInput,
        PhaseResult,
        PlanInput,
        PlanResult,
        StopPhaseInput,
        SyncInput,
        SyncResult,
        TeardownInput,
    )
    from tsky.spec.ids import LAUNCH_QUEUE, WATCH_QUEUE, cluster_name, pool_workflow_id
    from tsky.spec.job import (
        GRACEFUL_CANCEL_SIGNAL,
        Attempt,
        GracefulCancel,
        JobRequest,
        JobResult,
        JobState,
        TaskState,
        job_result,
    )
    from tsky.spec.lifecycle import dollars, running_cost
    from tsky.spec.pool_state import (
        GRANT_SIGNAL,
        RELEASE_SIGNAL,
        REQUEST_SIGNAL,
        PoolGrant,
        PoolRelease,
        PoolRequest,
        as_pool_job,
        pool_not_found,
    )
    from tsky.spec.requests import Candidate, requested_label
    from tsky.spec.status import ManagedJobStatus
    from tsky.spec.storage import BucketRef, is_url, parse_bucket_url, storage_store, writes_back
    from tsky.spec.task import Storage, Task
    from tsky.workflows import metrics
    from tsky.workflows.calls import call_activity, start_activity
    from tsky.workflows.limits import attempt_cost_line, debug_access, limit_reason, next_limit
    from tsky.workflows.recovery import Action, Outcome, OutcomeKind, decide, launch_backoff, launch_order
    from tsky.workflows.shield import shielded as _shielded

Status = ManagedJobStatus
T = TypeVar("T")

_PLAN_TIMEOUT = timedelta(minutes=5)
_LAUNCH_TIMEOUT = timedelta(hours=2)
_SETUP_TIMEOUT = timedelta(days=7)
_RUN_TIMEOUT = timedelta(days=365)
_TEARDOWN_TIMEOUT = timedelta(minutes=20)
_TEARDOWN_GIVE_UP = timedelta(hours=1)  # then FAILED_CONTROLLER; the sweeper keeps trying
# A job waiting for a pool worker asks again this often (same key: harmless) to notice a vanished pool.
_POOL_RECHECK = timedelta(minutes=5)
# A cancelled activity now records the attempt as cancelled and shows CANCELLING before cleanup.
_PATCH_CANCEL_IN_ACTIVITY = "cancel-in-activity-shows-cancelling"
# Buckets are mounted live (rclone) and flushed by the phases themselves: no upload after the phases.
_PATCH_LIVE_MOUNTS = "live-bucket-mounts-flush-on-node"
# A recovery whose files cannot be synced (a bucket that cannot be mounted) retries instead of failing.
_PATCH_SYNC_RETRY_ON_RECOVERY = "sync-precheck-retried-on-recovery"
# A cancel during setup/run is handled by the workflow (stop the phase, then tear down) instead of being
# passed to the watcher.
_PATCH_STOP_PHASE_ON_CANCEL = "cancel-stops-phase-from-workflow"
# Lifecycle limits (tsky.workflows.limits): a timer for max_duration / max_cost beside the attempts, a debug
# hold before the teardown of a failed task, a re-plan on on-demand instances after N preemptions.
_PATCH_LIFECYCLE_LIMITS = "lifecycle-limit-timers"
_PATCH_KEEP_ON_FAILURE = "lifecycle-keep-on-failure-hold"
_PATCH_SPOT_FALLBACK = "lifecycle-spot-fallback-on-demand"

# Watching a phase is retried without end (a dead worker must never kill a job); only the policy's
# own error types stop it.
_WATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[ErrorType.CLUSTER_LOST, ErrorType.UNREACHABLE],
)
_TEARDOWN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=1))
_LAUNCH_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=3)
_PLAN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=5)


class _TaskEnded(Exception):
    """Ends the current task with a status (e.g. FAILED_PRECHECKS) from deep inside its loop."""

    def __init__(self, status: ManagedJobStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def task_ids(req: JobRequest, start: datetime) -> list[str]:
    """SkyPilot's SKYPILOT_TASK_ID: `sky-managed-<run timestamp>_<name>_<job id>-<task index>`,
    stable across recoveries (the timestamp is the workflow's start)."""
    stamp = start.strftime("%Y-%m-%d-%H-%M-%S-%f")
    tasks = req.pipeline.tasks
    names = [f"{req.name}_{t.name}" if len(tasks) > 1 else req.name for t in tasks]
    return [f"sky-managed-{stamp}_{name}_{req.job_id}-{i}" for i, name in enumerate(names)]


def is_own_bug(err: BaseException) -> bool:
    """An error of this workflow's own code: neither a Temporal failure (an activity's, a child's) nor a
    cancellation. It must fail the workflow task at once, with no clean-up commands after it, so the job
    waits, intact, for a fixed worker, whose replay then matches the history and carries on. (A teardown
    scheduled on the way out would also be missing from the fixed code's replay: stuck for good.)"""
    return not isinstance(err, (FailureError, _TaskEnded)) and not is_cancelled_exception(err)


@workflow.defn(name="ManagedJob")
class ManagedJobWorkflow:
    @workflow.init
    def __init__(self, req: JobRequest) -> None:
        if req.pool is not None:
            req = req.model_copy(update={"pipeline": as_pool_job(req.pipeline)})
        self.req = req
        ids = task_ids(req, workflow.info().start_time)
        self.job = JobState(
            job_id=req.job_id,
            name=req.name,
            user=req.user,
            pool=req.pool,
            submitted_at=req.submitted_at,
            tasks=[
                TaskState(
                    index=i,
                    name=task.name or f"task-{i}",
                    task_id=ids[i],
                    resources=requested_label(task.num_nodes, task.requests().options),
                )
                for i, task in enumerate(req.pipeline.tasks)
            ],
        )
        self._log_lines: list[str] = []
        self._log_seq = 0
        self._published: dict[str, Any] = {}
        # What must be torn down if the job ends now: the live cluster, or a launch in flight.
        self._cluster: ClusterInfo | None = None
        self._launching: tuple[str, list[str]] | None = None
        # The running-jobs limit: None (no limit), "waiting" for a slot, or "held".
        self._slot: str | None = None
        # A pool job's current acquisition (its key) and the pool's answer.
        self._pool_key: str | None = None
        self._grant: PoolGrant | None = None
        # How long a cancel gives the running phase between SIGTERM and SIGKILL (`cancel --graceful`).
        self._stop_grace = STOP_GRACE_SECONDS
        # Bumped whenever a cluster starts or stops billing: the limit timer is then computed again.
        self._billing_epoch = 0
        # Why the attempts were stopped by a lifecycle limit (the task then ends FAILED with it).
        self._limit_hit: str | None = None

    @workflow.query(description="The job's full state: tasks, statuses, attempts.")
    def state(self) -> JobState:
        return self.job

    @workflow.signal(name=scheduling.SLOT_GRANTED_SIGNAL, description="The scheduler gives the job a running slot.")
    def slot_granted(self) -> None:
        if self._slot == "waiting":
            self._slot = "held"

    @workflow.signal(name=GRANT_SIGNAL, description="The job's pool gives it a worker (or says there is none).")
    def pool_grant(self, grant: PoolGrant) -> None:
        if grant.key == self._pool_key:
            self._grant = grant

    @workflow.signal(name=GRACEFUL_CANCEL_SIGNAL, description="The coming cancel is graceful: SIGTERM, wait, SIGKILL.")
    def graceful_cancel(self, request: GracefulCancel) -> None:
        self._stop_grace = request.grace_seconds

    # -- the job ---------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, req: JobRequest) -> JobResult:
        tasks = req.pipeline.tasks
        self._log(f"Job {req.job_id} '{req.name}' submitted by {req.user}: {len(tasks)} task(s).")
        bug = False
        try:
            await self._take_slot()
            for index in range(len(tasks)):
                await self._run_task(index)
                if self.job.tasks[index].status is not Status.SUCCEEDED:
                    break
        except BaseException as err:
            bug = is_own_bug(err)
            if not is_cancelled_exception(err):
                raise
            for task in self.job.tasks:
                if not task.status.is_terminal():
                    self._finish(task, Status.CANCELLED, None)
            self._log("Job cancelled.")
            await self._publish()
            raise
        finally:
            if not bug:
                await self._give_slot()
                # Pipeline semantics: tasks after a failed one never run and end CANCELLED.
                for task in self.job.tasks:
                    if not task.status.is_terminal():
                        self._finish(task, Status.CANCELLED, None)
                # On every ending, once the clusters are gone: the job's uploads and ephemeral buckets.
                await self._cleanup_job()
        self._log(f"Job finished: {self.job.status.value}.")
        if any(t.cost_usd for t in self.job.tasks):
            self._log(
                f"Job cost: {dollars(self.job.cost(workflow.now()))}, wasted {dollars(self.job.wasted_cost())} "
                "(estimated from catalog prices, which are approximate)."
            )
        await self._publish()
        return job_result(self.job)

    # -- the running-jobs limit (tsky.workflows.scheduler) ------------------------------------------------

    async def _take_slot(self) -> None:
        """Wait PENDING for a running slot when the request carries a limit; without one this costs nothing.
        Pool jobs run on the pool's workers and skip the limit, as in SkyPilot."""
        limit = self.req.policy.max_running_jobs
        if limit is None or self.req.pool is not None:
            return
        self._slot = "waiting"
        self._set(self.job.tasks[0], Status.PENDING, scheduling.WAITING_DETAILS)
        self._log(f"Waiting for a running slot (at most {limit} jobs run at once).")
        await self._publish()
        request = scheduling.SlotRequest(job_id=self.req.job_id, limit=limit, priority=self.req.priority)
        await _shielded(
            lambda: workflow.execute_local_activity(
                ActivityName.REQUEST_SLOT, request, start_to_close_timeout=timedelta(seconds=30)
            )
        )
        await workflow.wait_condition(lambda: self._slot == "held")
        self.job.tasks[0].details = None
        self._log("Running slot granted.")

    async def _give_slot(self) -> None:
        """Free the slot, or the place in the wait, on every ending. Shielded like teardown."""
        if self._slot is None:
            return
        self._slot = None

        async def release() -> None:
            try:
                scheduler = workflow.get_external_workflow_handle(scheduling.SCHEDULER_WORKFLOW_ID)
                await scheduler.signal(scheduling.RELEASE_SIGNAL, self.req.job_id)
            except FailureError as err:  # the scheduler reconciles against ended jobs
                self._log(f"Could not give the running slot back ({err}); the scheduler will notice.")

        await _shielded(release)

    # -- one task --------------------------------------------------------------------------------------

    def _heartbeat(self) -> timedelta:
        """How soon an activity whose worker died is retried elsewhere: every activity of a job
        heartbeats, so a crash costs this long, whatever the activity was doing."""
        return timedelta(seconds=self.req.policy.watch_heartbeat_timeout_seconds)

    def _meta(self, index: int) -> JobMeta:
        return JobMeta(
            job_id=self.req.job_id,
            job_name=self.req.name,
            task_index=index,
            task_name=self.job.tasks[index].name,
            task_id=self.job.tasks[index].task_id,
            task_ids=[t.task_id for t in self.job.tasks],
            user=self.req.user,
            rank=self.req.rank,
            num_jobs=self.req.num_jobs,
        )

    async def _run_task(self, index: int) -> None:
        task = self.req.pipeline.tasks[index]
        ts = self.job.tasks[index]
        ts.submitted_at = workflow.now()
        if not task.run:
            # SkyPilot's empty-run shortcut: nothing to run, nothing to provision.
            self._enter_running(ts, recovering=False)
            self._leave_running(ts)
            self._finish(ts, Status.SUCCEEDED, None)
            self._log(f"Task {index} ({ts.name}) has no run command: done.")
            await self._publish()
            return
        bug = False
        try:
            await self._run_attempts_within_limits(index, task, ts)
        except _TaskEnded as ended:
            self._finish(ts, ended.status, ended.reason)
            self._log(f"Task {index} ({ts.name}) {ended.status.value}: {ended.reason}")
        except BaseException as err:
            bug = is_own_bug(err)
            if is_cancelled_exception(err) and self._limit_hit is not None:
                # Stopped by a lifecycle limit, not by the user: the task fails with the limit as reason.
                self._finish(ts, Status.FAILED, self._limit_hit)
                self._log(f"Task {index} ({ts.name}) FAILED: {self._limit_hit}.")
                self._limit_hit = None
            elif is_cancelled_exception(err):
                if isinstance(err, FailureError) and not workflow.patched(_PATCH_CANCEL_IN_ACTIVITY):
                    raise  # histories from before the fix went straight to cleanup from a cancelled activity
                self._record_cancel(index, ts)
                await self._publish()
                raise
            elif not isinstance(err, FailureError):
                raise
            else:
                # An activity failed past its retries (e.g. the plan could not be computed): SkyPilot's
                # FAILED_CONTROLLER, with the cause.
                reason = f"Unexpected error: {err.cause or err}"
                self._finish(ts, Status.FAILED_CONTROLLER, reason)
                self._log(f"Task {index} ({ts.name}) FAILED_CONTROLLER: {reason}")
        finally:
            if not bug:
                await self._release_cluster(ts)
        await self._publish()

    async def _run_attempts_within_limits(self, index: int, task: Task, ts: TaskState) -> None:
        """Run the task's attempts; with a max_duration or max_cost, beside them a durable timer to the
        nearest limit, set again whenever a cluster starts or stops billing (no polling). On expiry the
        attempts are stopped as by a cancel (the phase stopped, the cluster torn down) and the task FAILS."""
        limited = task.max_duration is not None or self.req.lifecycle.max_cost is not None
        if not limited or not workflow.patched(_PATCH_LIFECYCLE_LIMITS):
            await self._run_attempts(index, task, ts)
            return
        attempts = asyncio.create_task(self._run_attempts(index, task, ts))
        try:
            while not attempts.done():
                limit = next_limit(self.job, ts, task, self.req.lifecycle, workflow.now())
                epoch = self._billing_epoch

                def changed(epoch: int = epoch) -> bool:
                    return attempts.done() or self._billing_epoch != epoch

                try:
                    await workflow.wait_condition(
                        changed,
                        timeout=timedelta(seconds=limit.seconds) if limit else None,
                        timeout_summary=f"{limit.kind} limit" if limit else None,
                    )
                except TimeoutError:
                    assert limit is not None
                    self._limit_hit = limit_reason(limit, self.job, task, self.req.lifecycle, workflow.now())
                    self._log(f"Task {index} ({ts.name}) {self._limit_hit}: stopping it.")
                    attempts.cancel()
                    break
        except asyncio.CancelledError:
            if attempts.done():
                raise
            attempts.cancel()  # the user's cancel goes to the attempts, which stop and clean up
        await attempts

    async def _run_attempts(self, index: int, task: Task, ts: TaskState) -> None:
        recovery = task.job_recovery()
        storages = [s for s in task.file_mounts.values() if isinstance(s, Storage)]
        candidates: list[Candidate] = []
        launch = 0
        restarts = 0
        lost_region: str | None = None
        recovering = False
        while True:
            attempt = Attempt(index=len(ts.attempts), launch=launch)
            if self._cluster is None:
                if self.req.pool is not None:
                    # A pool job takes a whole READY worker of its pool instead of a cluster of its own.
                    self._cluster, chosen = await self._acquire_worker(index, ts, attempt.index, recovering)
                else:
                    candidates = candidates or await self._plan(index, task, ts)
                    if self._falls_back_to_on_demand(task, ts, candidates):
                        ts.on_demand_since_attempt = len(ts.attempts)
                        self._log(
                            f"Task {index} ({ts.name}) was preempted {self._preemptions(ts)} time(s): launching it "
                            "on on-demand instances from now on (spot_fallback_after)."
                        )
                        candidates = await self._plan(index, task.on_demand(), ts)
                    self._cluster, chosen = await self._launch(
                        index, task, ts, candidates, launch, recovery.strategy or "", lost_region, recovering
                    )
                ts.infra = chosen.display_infra()
                attempt.candidate = chosen
            else:
                attempt.candidate = ts.attempts[-1].candidate
            attempt.cluster_name = self._cluster.name
            attempt.started_at = workflow.now()
            ts.attempts.append(attempt)
            ts.attempt_count = len(ts.attempts)
            self._start_billing(ts, attempt.candidate.hourly_cost if attempt.candidate else 0.0)
            self._enter_running(ts, recovering)
            self._log(f"Task {index} ({ts.name}) attempt {attempt.index} running on {self._cluster.name}.")
            self._log(f"Job status: JobStatus.{'SETTING_UP' if task.setup else 'RUNNING'}")
            await self._publish()

            cluster = self._cluster
            outcome = await self._run_phases(index, task, ts, attempt, cluster)
            if (
                outcome.kind is OutcomeKind.EXITED
                and any(writes_back(s, cluster.backend) for s in storages)
                and not workflow.patched(_PATCH_LIVE_MOUNTS)
            ):
                # Before live mounts, MOUNT of an object-store bucket was a cached copy on the nodes, saved here.
                await self._sync(self._meta(index), cluster, task, "up")
            self._leave_running(ts)
            decision = decide(outcome, recovery, restarts)
            attempt.ended_at = workflow.now()
            attempt.cause = decision.cause
            attempt.exit_codes = list(outcome.exit_codes)
            self._end_attempt_billing(ts)
            lost = outcome.kind is not OutcomeKind.EXITED
            if decision.action is Action.FINISH:
                assert decision.status is not None
                if self.req.pool is not None:
                    # Ended before its worker is free: a pool never shows more jobs RUNNING than workers.
                    self._finish(ts, decision.status, decision.reason or None)
                    await self._publish()
                if outcome.kind is OutcomeKind.EXITED:  # a user error; a preemption never holds
                    await self._hold_for_debugging(index, ts, decision.status, decision.reason, cluster)
                await self._release_cluster(ts, lost=lost)
                self._finish(ts, decision.status, decision.reason or None)
                self._log_cluster_job_status(outcome)
                self._log(f"Task {index} ({ts.name}) {decision.status.value}. {decision.reason}".rstrip())
                self._log_attempt_cost(index, ts)
                return
            restarts += decision.counts_restart
            recovering = True
            self._set(ts, Status.RECOVERING, decision.reason)
            self._log_cluster_job_status(outcome)
            self._log(f"Task {index} ({ts.name}) recovering: {decision.reason}")
            self._log_attempt_cost(index, ts)
            await self._publish()
            if decision.action is Action.RELAUNCH:
                lost_region = self._cluster.region
                await self._release_cluster(ts, lost=lost)
                launch += 1

    # -- lifecycle: cost, debug hold, spot fallback (tsky.workflows.limits) ------------------------------

    def _start_billing(self, ts: TaskState, hourly: float) -> None:
        ts.hourly_price = hourly
        ts.billing_since = workflow.now()
        self._billing_epoch += 1

    def _stop_billing(self, ts: TaskState, wasted: bool) -> float:
        """Add what the cluster cost since billing started to the task; returns that amount."""
        if ts.billing_since is None:
            return 0.0
        cost = running_cost(ts.hourly_price, (workflow.now() - ts.billing_since).total_seconds())
        ts.cost_usd += cost
        ts.wasted_cost_usd += cost if wasted else 0.0
        ts.billing_since = None
        self._billing_epoch += 1
        return cost

    def _end_attempt_billing(self, ts: TaskState) -> None:
        """The current attempt ended (its cause is set): its cost goes in its history."""
        attempt = ts.current_attempt()
        if attempt is not None and ts.billing_since is not None:
            attempt.cost_usd = self._stop_billing(ts, attempt.wasted)

    def _log_attempt_cost(self, index: int, ts: TaskState) -> None:
        """The ended attempt's cost in the controller log. Always logged next to another line, so it never
        adds a controller-log write (a command) of its own."""
        attempt = ts.current_attempt()
        if attempt is not None and attempt.cost_usd is not None:
            self._log(attempt_cost_line(index, ts, attempt, self.job, workflow.now()))

    async def _hold_for_debugging(
        self, index: int, ts: TaskState, status: ManagedJobStatus, reason: str, cluster: ClusterInfo
    ) -> None:
        """`--keep-on-failure`: after the task's program failed (FAILED, FAILED_SETUP), keep the cluster for
        the hold so the user can get on it. The task is FAILED already; the timer, a cancel or a limit ends
        the hold, and the teardown follows as on every other path."""
        hold = self.req.lifecycle.keep_on_failure_seconds
        user_error = status in (Status.FAILED, Status.FAILED_SETUP)
        if hold is None or not user_error or self.req.pool is not None or not workflow.patched(_PATCH_KEEP_ON_FAILURE):
            return
        until = workflow.now() + timedelta(seconds=hold)
        self._finish(ts, status, reason or None)
        ts.held_until = until
        ts.details = f"kept for debugging until {until:%H:%M} UTC"
        self._start_billing(ts, ts.hourly_price)
        self._log(
            f"Task {index} ({ts.name}) {status.value}; its cluster {cluster.name} is kept for debugging until "
            f"{until:%Y-%m-%d %H:%M:%S} UTC: {debug_access(cluster)}. `tsky jobs cancel {self.req.job_id}` ends "
            "the hold."
        )
        await self._publish()
        try:
            await workflow.sleep(timedelta(seconds=hold), summary="keep on failure")
            self._log(f"Debug hold of {cluster.name} over.")
        except asyncio.CancelledError:
            # The cancel ends the hold; the task stays FAILED (its own outcome) and is torn down next.
            self._log(f"Debug hold of {cluster.name} ended by {'a limit' if self._limit_hit else 'a cancel'}.")
        finally:
            self._stop_billing(ts, wasted=True)
            ts.held_until = None
            ts.details = None

    def _preemptions(self, ts: TaskState) -> int:
        return sum(a.cause == "preempted" for a in ts.attempts)

    def _falls_back_to_on_demand(self, task: Task, ts: TaskState, candidates: list[Candidate]) -> bool:
        """Whether this launch is the one that moves the task to on-demand instances (once per task)."""
        after = task.job_recovery().fallback_after(self.req.lifecycle.spot_fallback_after)
        return (
            after is not None
            and ts.on_demand_since_attempt is None
            and self._preemptions(ts) >= after
            and any(c.use_spot for c in candidates)
            and workflow.patched(_PATCH_SPOT_FALLBACK)
        )

    async def _plan(self, index: int, task: Task, ts: TaskState) -> list[Candidate]:
        self._set(ts, Status.STARTING, "Planning")
        await self._publish()
        plan = await self._activity(
            ActivityName.PLAN,
            PlanInput(meta=self._meta(index), task=task),
            PlanResult,
            LAUNCH_QUEUE,
            timeout=_PLAN_TIMEOUT,
            heartbeat=self._heartbeat(),
            retry=_PLAN_RETRY,
        )
        if plan.infeasible_reason or not plan.candidates:
            raise _TaskEnded(Status.FAILED_PRECHECKS, plan.infeasible_reason or "No resources satisfy the request.")
        return plan.candidates

    async def _acquire_worker(
        self, index: int, ts: TaskState, attempt: int, recovering: bool
    ) -> tuple[ClusterInfo, Candidate]:
        """Wait for the pool to grant a whole READY worker (first come, first served by job id)."""
        pool = self.req.pool
        assert pool is not None
        key = f"{self.req.job_id}-{index}-{attempt}"
        self._pool_key, self._grant = key, None
        request = PoolRequest(key=key, job_id=self.req.job_id, workflow_id=workflow.info().workflow_id)
        handle = workflow.get_external_workflow_handle(pool_workflow_id(pool))
        self._set(ts, Status.RECOVERING if recovering else Status.PENDING, f"Waiting for a worker of pool '{pool}'")
        await self._publish()
        while self._grant is None:
            try:
                await handle.signal(REQUEST_SIGNAL, request)
            except ApplicationError:
                raise _TaskEnded(Status.FAILED_NO_RESOURCE, pool_not_found(pool)) from None
            try:
                await workflow.wait_condition(lambda: self._grant is not None, timeout=_POOL_RECHECK)
            except TimeoutError:
                continue  # ask again: the same key, so at most one worker is ever granted
        grant = self._grant
        if grant.cluster is None or grant.candidate is None:
            raise _TaskEnded(Status.FAILED_NO_RESOURCE, grant.error or pool_not_found(pool))
        self._log(f"Task {index} ({ts.name}) got worker {grant.worker_id} of pool '{pool}'.")
        return grant.cluster, grant.candidate

    async def _launch(
        self,
        index: int,
        task: Task,
        ts: TaskState,
        candidates: list[Candidate],
        launch: int,
        strategy: str,
        lost_region: str | None,
        recovering: bool,
    ) -> tuple[ClusterInfo, Candidate]:
        """Launch rounds until one candidate has room. Capacity failures back off and retry without
        end; when every candidate fails its prechecks on the first launch, the task fails."""
        name = cluster_name(ts.name, self.req.job_id, index, launch)
        round_index = 0
        while True:
            order = launch_order(candidates, strategy, lost_region, first_round=round_index == 0)
            self._launching = (name, sorted({c.cloud for c in order}))
            self._log(f"Launching {name}: trying {', '.join(c.infra + ' ' + c.instance_type for c in order[:5])}.")
            try:
                result = await self._activity(
                    ActivityName.LAUNCH,
                    LaunchInput(
                        meta=self._meta(index),
                        cluster_name=name,
                        launch=launch,
                        candidates=order,
                        num_nodes=task.num_nodes,
                    ),
                    LaunchResult,
                    LAUNCH_QUEUE,
                    timeout=_LAUNCH_TIMEOUT,
                    heartbeat=self._heartbeat(),
                    retry=_LAUNCH_RETRY,
                )
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                result = LaunchResult()
                self._log(f"Launch of {name} failed unexpectedly: {err.cause or err}")
            if result.cluster is not None and result.chosen is not None:
                self._launching = None
                self._log(f"✓ Cluster launched: {name}. Resources: {result.chosen.resources_label()}.")
                return result.cluster, result.chosen
            for failure in result.failures:
                self._log(f"  {failure.candidate.infra} {failure.candidate.instance_type}: {failure.message}")
            self._launching = None
            prechecks = [f.message for f in result.failures if f.kind == "precheck"]
            if not recovering and result.failures and len(prechecks) == len(result.failures):
                raise _TaskEnded(Status.FAILED_PRECHECKS, "; ".join(dict.fromkeys(prechecks)))
            delay = launch_backoff(self.req.policy, round_index, workflow.random())
            back_to = Status.RECOVERING if recovering else Status.STARTING
            self._set(ts, Status.PENDING, f"In backoff, waiting for resources (next try in {delay:.0f}s)")
            self._log(f"No capacity for task {index} ({ts.name}); retrying in {delay:.0f}s.")
            await self._publish()
            await workflow.sleep(timedelta(seconds=delay), summary="launch backoff")
            self._set(ts, back_to, "Retrying launch")
            await self._publish()
            round_index += 1

    async def _run_phases(
        self, index: int, task: Task, ts: TaskState, attempt: Attempt, cluster: ClusterInfo
    ) -> Outcome:
        meta = self._meta(index)
        policy = self.req.policy
        sealed = self.req.sealed_secrets[index] if index < len(self.req.sealed_secrets) else {}
        gpus = attempt.candidate.accelerator_count if attempt.candidate else 0
        phase = "setup"
        try:
            if task.workdir or task.file_mounts:
                synced = await self._sync_down(index, ts, attempt, meta, cluster, task)
                for note in synced.notes:
                    self._log(f"Task {index} ({ts.name}): {note}")
            for phase in ("setup", "run"):
                if phase == "setup" and not task.setup:
                    continue
                ts.details = "Setting up" if phase == "setup" else "Running"
                phase_input = PhaseInput(
                    meta=meta,
                    cluster=cluster,
                    phase=phase,
                    attempt=attempt.index,
                    task=task,
                    sealed_secrets=sealed,
                    gpus_per_node=gpus,
                    poll_seconds=policy.watch_poll_seconds,
                    status_check_min_elapsed_seconds=policy.status_check_min_elapsed_seconds,
                    status_check_min_retries=policy.status_check_min_retries,
                    node_key=self._node_key(index, attempt.index, phase) if self.req.pool else None,
                )
                name = ActivityName.SETUP if phase == "setup" else ActivityName.RUN
                watcher = start_activity(
                    name,
                    phase_input,
                    PhaseResult,
                    LAUNCH_QUEUE if phase == "setup" else WATCH_QUEUE,
                    timeout=_SETUP_TIMEOUT if phase == "setup" else _RUN_TIMEOUT,
                    heartbeat=timedelta(seconds=policy.watch_heartbeat_timeout_seconds),
                    retry=_WATCH_RETRY,
                    cancellation=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    summary=f"{name} (job {self.req.job_id})",
                )
                try:
                    # Shielded: the cancel comes to this code, never to the watcher (see _stop_on_cancel).
                    result = await asyncio.shield(watcher)
                except asyncio.CancelledError:
                    if workflow.patched(_PATCH_STOP_PHASE_ON_CANCEL):
                        await self._stop_on_cancel(index, ts, phase_input, watcher)
                        raise
                    # Histories from before: the cancel went to the watcher, which learnt of it only with its
                    # next heartbeat, and a phase that ended first swallowed the cancel (issue 20).
                    watcher.cancel()
                    result = await watcher
                if phase == "setup" and any(result.exit_codes):
                    return Outcome(OutcomeKind.EXITED, "setup", tuple(result.exit_codes))
            return Outcome(OutcomeKind.EXITED, "run", tuple(result.exit_codes))
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == ErrorType.CLUSTER_LOST:
                return Outcome(OutcomeKind.LOST, phase, reason=cause.message)
            if isinstance(cause, ApplicationError) and cause.type == ErrorType.UNREACHABLE:
                return Outcome(OutcomeKind.UNREACHABLE, phase, reason=cause.message)
            if isinstance(cause, ApplicationError) and cause.type == ErrorType.PRECHECK:
                raise _TaskEnded(Status.FAILED_PRECHECKS, cause.message) from None  # the files can never sync
            raise

    async def _sync_down(
        self, index: int, ts: TaskState, attempt: Attempt, meta: JobMeta, cluster: ClusterInfo, task: Task
    ) -> SyncResult:
        """Put the task's files on the cluster. A precheck failure (a bucket that cannot be mounted) fails
        the task on its first attempt; on a recovery it is retried with the launch backoff: the job ran
        with these files before, so the cause is likely passing (an outage, expired credentials)."""
        tries = 0
        while True:
            try:
                return await self._sync(meta, cluster, task, "down")
            except ActivityError as err:
                cause = err.cause
                if not (
                    isinstance(cause, ApplicationError)
                    and cause.type == ErrorType.PRECHECK
                    and attempt.index > 0
                    and workflow.patched(_PATCH_SYNC_RETRY_ON_RECOVERY)
                ):
                    raise
                delay = launch_backoff(self.req.policy, tries, workflow.random())
                self._log(f"Task {index} ({ts.name}): {cause.message}; retrying in {delay:.0f}s.")
                await self._publish()
                await workflow.sleep(timedelta(seconds=delay), summary="sync retry")
                tries += 1

    async def _stop_on_cancel(
        self, index: int, ts: TaskState, phase: PhaseInput, watcher: workflow.ActivityHandle[PhaseResult]
    ) -> None:
        """A cancel while setup or run goes on: show CANCELLING at once, stop the phase's processes with
        a short activity (SIGTERM, SIGKILL after the grace `--graceful` set, else a few seconds), then let
        the watcher see them end and copy their last lines. The watcher itself is never cancelled: it
        would learn of it only with its next heartbeat (throttled to most of the heartbeat timeout, so
        that thousands of watchers stay cheap), and a phase that ended before that would swallow the
        cancel."""
        self._record_cancel(index, ts)
        await self._publish()

        async def stop() -> None:
            try:
                await self._activity(
                    ActivityName.STOP_PHASE,
                    StopPhaseInput(cluster=phase.cluster, phase=phase.key, grace_seconds=self._stop_grace),
                    type(None),
                    WATCH_QUEUE,
                    timeout=timedelta(minutes=2) + timedelta(seconds=self._stop_grace),
                    retry=_PLAN_RETRY,
                )
            except ActivityError as err:  # e.g. the cluster cannot be reached: teardown kills what is left
                self._log(f"Could not stop the {phase.phase} of task {index} ({ts.name}): {err.cause or err}")
                return
            # The watcher returns at its next poll now that the processes are gone.
            with contextlib.suppress(ActivityError):
                await watcher

        await _shielded(stop)

    async def _sync(self, meta: JobMeta, cluster: ClusterInfo, task: Task, direction: str) -> SyncResult:
        return await self._activity(
            ActivityName.SYNC_FILES,
            SyncInput(meta=meta, cluster=cluster, task=task, direction=direction),
            SyncResult,
            LAUNCH_QUEUE,
            timeout=timedelta(hours=2),
            heartbeat=self._heartbeat(),
            retry=_LAUNCH_RETRY,
        )

    # -- teardown --------------------------------------------------------------------------------------

    async def _release_cluster(self, ts: TaskState, lost: bool = False) -> None:
        """Tear down the task's cluster (or what a launch in flight may have made). Shielded: a cancel
        arriving meanwhile waits for the teardown to finish, then proceeds. A pool worker is given back
        instead (`lost`: it was preempted or unreachable under the job, so the pool replaces it)."""
        if self.req.pool is not None:
            await self._release_worker(ts, lost)
            return
        targets: list[TeardownInput] = []
        if self._cluster is not None:
            targets.append(
                TeardownInput(cluster_name=self._cluster.name, backend=self._cluster.backend, cluster=self._cluster)
            )
        elif self._launching is not None:
            name, backends = self._launching
            targets += [TeardownInput(cluster_name=name, backend=b) for b in backends]
        if not targets:
            return

        async def teardown_all() -> None:
            for target in targets:
                await self._activity(
                    ActivityName.TEARDOWN,
                    target,
                    type(None),
                    LAUNCH_QUEUE,
                    timeout=_TEARDOWN_TIMEOUT,
                    heartbeat=self._heartbeat(),
                    retry=_TEARDOWN_RETRY,
                    schedule_to_close=_TEARDOWN_GIVE_UP,
                )
                self._log(f"Cluster {target.cluster_name} torn down.")

        try:
            await _shielded(teardown_all)
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            names = ", ".join(t.cluster_name for t in targets)
            self._finish(
                ts,
                Status.FAILED_CONTROLLER,
                f"Failed to clean up {names}, resources may have leaked: {err.cause}",
            )
        finally:
            self._cluster = None
            self._launching = None

    def _ephemeral_buckets(self) -> list[BucketRef]:
        """The `persistent: false` buckets tsky made for the job (a bucket named by a source URL is
        someone else's and stays). A store left to the infra is the one of each backend a task ran on."""
        refs: list[BucketRef] = []
        for task, ts in zip(self.req.pipeline.tasks, self.job.tasks, strict=True):
            backends = sorted({a.candidate.cloud for a in ts.attempts if a.candidate is not None})
            for storage in task.file_mounts.values():
                if not isinstance(storage, Storage) or storage.persistent or storage.name is None:
                    continue
                source = storage.source if isinstance(storage.source, str) else None
                if source is not None and is_url(source):
                    try:
                        where = parse_bucket_url(source)
                    except ValueError:
                        continue
                    if where.bucket == storage.name:  # the local source the CLI uploaded into `name`
                        refs.append(BucketRef(store=where.store, name=where.bucket))
                elif storage.store:
                    refs.append(BucketRef(store=storage.store, name=storage.name))
                else:
                    refs += [BucketRef(store=storage_store(storage, b), name=storage.name) for b in backends]
        return list(dict.fromkeys(refs))

    async def _cleanup_job(self) -> None:
        """Remove the job's uploads and ephemeral buckets. Shielded like teardown: a cancel arriving
        meanwhile waits for it. A failure is logged, never changes the job's status."""
        work = CleanupJobInput(job_id=self.req.job_id, uploads=self.req.uploads, buckets=self._ephemeral_buckets())
        if not work.uploads and not work.buckets:
            return

        async def cleanup() -> None:
            await self._activity(
                ActivityName.CLEANUP_JOB,
                work,
                type(None),
                LAUNCH_QUEUE,
                timeout=_TEARDOWN_TIMEOUT,
                heartbeat=self._heartbeat(),
                retry=_TEARDOWN_RETRY,
                schedule_to_close=_TEARDOWN_GIVE_UP,
            )

        try:
            await _shielded(cleanup)
            self._log("Cleaned up the job's uploaded files and ephemeral buckets.")
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            self._log(f"Could not clean up the job's uploads/buckets, they may have leaked: {err.cause or err}")
        await self._publish()  # a cancelled job publishes nothing after this

    def _node_key(self, index: int, attempt: int, phase: str) -> str:
        """A pool job's phase name on its worker: jobs take turns on a worker, so it carries the job."""
        return f"{phase}-j{self.req.job_id}-t{index}-a{attempt}"

    async def _release_worker(self, ts: TaskState, lost: bool) -> None:
        """Stop this job's processes on its worker (the worker stays) and tell the pool; without a worker
        yet, withdraw the request. Shielded like teardown."""
        key, cluster, pool = self._pool_key, self._cluster, self.req.pool
        if key is None or pool is None:
            return
        attempt = ts.attempts[-1].index if ts.attempts else 0

        async def release() -> None:
            if cluster is not None and not lost:
                try:
                    await self._activity(
                        ActivityName.STOP_PHASE,
                        StopPhaseInput(cluster=cluster, phase=self._node_key(ts.index, attempt, "run")),
                        type(None),
                        WATCH_QUEUE,
                        timeout=timedelta(minutes=2),
                        retry=_PLAN_RETRY,
                    )
                except ActivityError as err:
                    if is_cancelled_exception(err):
                        raise
                    self._log(f"Could not stop job {self.req.job_id}'s processes on {cluster.name}: {err.cause}")
            reason = f"Lost while running job {self.req.job_id}." if lost else ""
            with contextlib.suppress(ApplicationError):  # a pool that is gone took its workers with it
                await workflow.get_external_workflow_handle(pool_workflow_id(pool)).signal(
                    RELEASE_SIGNAL, PoolRelease(key=key, lost=lost, reason=reason)
                )
            if cluster is not None:
                self._log(f"Worker {cluster.name} of pool '{pool}' released.")

        try:
            await _shielded(release)
        finally:
            self._cluster, self._pool_key, self._grant = None, None, None

    # -- state and visibility --------------------------------------------------------------------------

    def _set(self, ts: TaskState, status: ManagedJobStatus, details: str | None) -> None:
        ts.status = status
        ts.details = details

    def _enter_running(self, ts: TaskState, recovering: bool) -> None:
        now = workflow.now()
        if recovering:
            ts.recovery_count += 1
            ts.last_recovered_at = now
        ts.start_at = ts.start_at or now
        ts.running_since = now
        self._set(ts, Status.RUNNING, "Running")

    def _record_cancel(self, index: int, ts: TaskState) -> None:
        if ts.status is Status.CANCELLING:
            return  # already recorded where the cancel arrived
        attempt = ts.current_attempt()
        if attempt is not None and attempt.ended_at is None:
            attempt.ended_at = workflow.now()
            attempt.cause = self._limit_hit or "cancelled"
            self._end_attempt_billing(ts)
        self._leave_running(ts)
        if self._limit_hit is not None:
            ts.details = f"Stopping: {self._limit_hit}; cleaning up."
        else:
            self._set(ts, Status.CANCELLING, "Cancellation requested; cleaning up.")
            self._log(f"Cancellation requested for task {index} ({ts.name}); cleaning up.")
        self._log_attempt_cost(index, ts)

    def _leave_running(self, ts: TaskState) -> None:
        if ts.running_since is not None:
            ts.job_duration_s += (workflow.now() - ts.running_since).total_seconds()
            ts.running_since = None

    def _finish(self, ts: TaskState, status: ManagedJobStatus, reason: str | None) -> None:
        if ts.status.is_terminal() and status is not Status.FAILED_CONTROLLER:
            return  # a terminal status is never overwritten, except by a controller failure
        self._leave_running(ts)
        self._stop_billing(ts, wasted=status is not Status.SUCCEEDED)  # an attempt cut short (e.g. a precheck)
        ts.status = status
        ts.details = None
        ts.end_at = workflow.now()
        if reason and status.is_failed():
            ts.failure_reason = reason

    def _log_cluster_job_status(self, outcome: Outcome) -> None:
        """SkyPilot's controller-log line for how the job ended on its cluster (scripts grep it). Always
        logged next to another line, so it never adds a controller-log write of its own."""
        status = outcome.cluster_job_status()
        if status is not None:
            self._log(f"Job status: JobStatus.{status}")

    def _log(self, message: str) -> None:
        stamp = workflow.now().strftime("%Y-%m-%d %H:%M:%S")
        self._log_lines.append(f"{stamp} | {message}")

    async def _publish(self) -> None:
        """Show the state: search attributes (queue, Web UI filters), memo (per-task rows for the queue),
        current details (Web UI), and the controller log. Only what changed is written."""
        job_status = self.job.status
        current = self.job.current_task()
        started = [t.start_at for t in self.job.tasks if t.start_at]
        updates: list[SearchAttributeUpdate] = []
        wanted: dict[str, Any] = {
            sa.STATUS.name: job_status.value,
            sa.RECOVERIES.name: sum(t.recovery_count for t in self.job.tasks),
            sa.INFRA.name: current.infra or "",
            sa.STARTED_AT.name: min(started) if started else None,
            sa.ENDED_AT.name: current.end_at if job_status.is_terminal() else None,
        }
        metrics.on_publish(self._published, wanted)
        keys = {k.name: k for k in (sa.STATUS, sa.RECOVERIES, sa.INFRA, sa.STARTED_AT, sa.ENDED_AT)}
        for name, value in wanted.items():
            if self._published.get(name) != value:
                key = keys[name]
                updates.append(key.value_unset() if value is None else key.value_set(value))
                self._published[name] = value
        if updates:
            workflow.upsert_search_attributes(updates)
        memo = [t.model_dump(mode="json", exclude={"attempts"}) for t in self.job.tasks]
        if self._published.get("memo") != memo:
            workflow.upsert_memo({"tasks": memo})
            self._published["memo"] = memo
        workflow.set_current_details(self._details_markdown())
        if self._log_lines:
            lines, self._log_lines = self._log_lines, []
            first = self._log_seq
            self._log_seq += len(lines)
            await workflow.execute_local_activity(
                ActivityName.CONTROLLER_LOG,
                ControllerLogInput(job_id=self.req.job_id, first_seq=first, lines=lines),
                start_to_close_timeout=timedelta(seconds=30),
            )

    def _details_markdown(self) -> str:
        rows = "\n".join(
            f"| {t.index} | {t.name} | {t.status.value} | {t.recovery_count} | {t.infra or '-'} | "
            f"{(t.details or t.failure_reason or '').replace('|', '/')} |"
            for t in self.job.tasks
        )
        now = workflow.now()
        cost = f"\n\nEstimated cost: {dollars(self.job.cost(now))} (wasted {dollars(self.job.wasted_cost())})"
        return (
            f"**Job {self.req.job_id}** `{self.req.name}` — **{self.job.status.value}**\n\n"
            "| task | name | status | recoveries | infra | details |\n|---|---|---|---|---|---|\n" + rows + cost
        )

    # -- helpers ---------------------------------------------------------------------------------------

    async def _activity(self, name: str, arg: Any, result_type: type[T], task_queue: str, **options: Any) -> T:
        return await call_activity(
            name, arg, result_type, task_queue, summary=f"{name} (job {self.req.job_id})", **options
        )
