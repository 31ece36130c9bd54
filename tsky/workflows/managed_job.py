"""The ManagedJob workflow: one durable workflow per managed job (one task or a pipeline of tasks).

Per task, in order: plan → launch (with failover and backoff; a job's first launch plans in that activity)
→ sync files → setup → run_and_watch → decide (tsky.workflows.recovery) → recover or finish → teardown.
The cluster is torn down on every ending — success, failure, cancel — from a `finally`, shielded from a
cancel that arrives mid-teardown.

This module is the loop; each concern lives beside it (a new job feature goes where its concern is):
- job_state: the job's state in one object (`JobRun`) and a task's status moves;
- cluster_lifecycle: plan, launch rounds, sync, phases, teardown (shared with PoolWorker);
- job_phases: one attempt on the cluster (files, setup, run, a cancel meanwhile);
- job_teardown: the cluster after each task, the job's uploads and buckets at the end;
- running_slot / pool_lease: the running-jobs limit; a pool job's worker;
- visibility: search attributes, memo, Web UI details, the controller log.

State lives in this workflow (its history), so a crash of any tsky process loses nothing: a new worker
replays it and carries on, re-attaching to the processes already running on the cluster.

Durability rules honoured here: no I/O, no wall clock (workflow.now), no global randomness
(workflow.random); activities are called by name, never imported; any change to the sequence of
commands needs `workflow.patched` (the replay tests catch it).
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import FailureError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import tsky.workflows.cluster_lifecycle as lifecycle
    import tsky.workflows.orchestration as orch
    import tsky.workflows.pool_lease as pool_lease
    import tsky.workflows.running_slot as running_slot
    from tsky.contract.ids import cluster_name
    from tsky.contract.job import (
        Attempt,
        GracefulCancel,
        JobRequest,
        JobResult,
        JobState,
        TaskState,
        job_result,
    )
    from tsky.contract.names import Query, Signal, WorkflowType
    from tsky.contract.pool_state import PoolGrant
    from tsky.spec.requests import Candidate
    from tsky.spec.status import ManagedJobStatus
    from tsky.spec.storage import writes_back
    from tsky.spec.task import Storage, Task
    from tsky.workflows.job_phases import run_phases
    from tsky.workflows.job_state import JobRun, TaskEnded, is_own_bug
    from tsky.workflows.job_teardown import cleanup_job, release_cluster
    from tsky.workflows.recovery import Action, OutcomeKind, decide

Status = ManagedJobStatus

# A cancelled activity now records the attempt as cancelled and shows CANCELLING before cleanup.
_PATCH_CANCEL_IN_ACTIVITY = "cancel-in-activity-shows-cancelling"
# Buckets are mounted live (rclone) and flushed by the phases themselves: no upload after the phases.
_PATCH_LIVE_MOUNTS = "live-bucket-mounts-flush-on-node"
# A job's first launch plans its task in the launch activity: one engine round-trip fewer per job.
_PATCH_PLAN_IN_LAUNCH = "first-launch-plans-in-the-launch-activity"


@workflow.defn(name=WorkflowType.MANAGED_JOB)
class ManagedJobWorkflow:
    @workflow.init
    def __init__(self, req: JobRequest) -> None:
        self.run_state = JobRun.start(req)

    @workflow.query(name=Query.JOB_STATE, description="The job's full state: tasks, statuses, attempts.")
    def state(self) -> JobState:
        return self.run_state.job

    @workflow.signal(name=Signal.SLOT_GRANTED, description="The scheduler gives the job a running slot.")
    def slot_granted(self) -> None:
        running_slot.slot_granted(self.run_state)

    @workflow.signal(name=Signal.POOL_GRANT, description="The job's pool gives it a worker (or says there is none).")
    def pool_grant(self, grant: PoolGrant) -> None:
        pool_lease.granted(self.run_state, grant)

    @workflow.signal(name=Signal.GRACEFUL_CANCEL, description="The coming cancel is graceful: SIGTERM, wait, SIGKILL.")
    def graceful_cancel(self, request: GracefulCancel) -> None:
        self.run_state.stop_grace = request.grace_seconds

    # -- the job ---------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, req: JobRequest) -> JobResult:
        run = self.run_state
        tasks = run.req.pipeline.tasks
        run.log(f"Job {req.job_id} '{req.name}' submitted by {req.user}: {len(tasks)} task(s).")
        bug = False
        try:
            if await orch.dependencies_succeeded(run):
                await running_slot.take_slot(run)
                skipped = orch.skipped_tasks(run.req)
                for index in range(len(tasks)):
                    if index in skipped:
                        orch.skip_done_task(run, index)
                        continue
                    await self._run_task(index)
                    if run.job.tasks[index].status is not Status.SUCCEEDED:
                        break
        except BaseException as err:
            bug = is_own_bug(err)
            if not is_cancelled_exception(err):
                raise
            for task in run.job.tasks:
                if not task.status.is_terminal():
                    run.finish(task, Status.CANCELLED, None)
            run.log("Job cancelled.")
            await run.publish()
            raise
        finally:
            if not bug:
                await running_slot.give_slot(run)
                # Pipeline semantics: tasks after a failed one never run and end CANCELLED.
                for task in run.job.tasks:
                    if not task.status.is_terminal():
                        run.finish(task, Status.CANCELLED, None)
                # On every ending, once the clusters are gone: the job's uploads and ephemeral buckets.
                await cleanup_job(run)
                await run.notifier.flush()  # a cancelled job's last transitions, too
        run.log(f"Job finished: {run.job.status.value}.")
        await run.publish()
        await run.notifier.flush()  # the last transition reaches the webhooks before the workflow ends
        return job_result(run.job)

    # -- one task --------------------------------------------------------------------------------------

    async def _run_task(self, index: int) -> None:
        run = self.run_state
        task = run.req.pipeline.tasks[index]
        ts = run.job.tasks[index]
        ts.submitted_at = workflow.now()
        if not task.run:
            # SkyPilot's empty-run shortcut: nothing to run, nothing to provision.
            run.enter_running(ts, recovering=False)
            run.leave_running(ts)
            run.finish(ts, Status.SUCCEEDED, None)
            run.log(f"Task {index} ({ts.name}) has no run command: done.")
            await run.publish()
            return
        bug = False
        try:
            await self._run_attempts(task, ts)
        except TaskEnded as ended:
            run.finish(ts, ended.status, ended.reason)
            run.log(f"Task {index} ({ts.name}) {ended.status.value}: {ended.reason}")
        except BaseException as err:
            bug = is_own_bug(err)
            if is_cancelled_exception(err):
                if isinstance(err, FailureError) and not workflow.patched(_PATCH_CANCEL_IN_ACTIVITY):
                    raise  # histories from before the fix went straight to cleanup from a cancelled activity
                run.record_cancel(ts)
                await run.publish()
                raise
            if not isinstance(err, FailureError):
                raise
            # An activity failed past its retries (e.g. the plan could not be computed): SkyPilot's
            # FAILED_CONTROLLER, with the cause.
            reason = f"Unexpected error: {err.cause or err}"
            run.finish(ts, Status.FAILED_CONTROLLER, reason)
            run.log(f"Task {index} ({ts.name}) FAILED_CONTROLLER: {reason}")
        finally:
            if not bug:
                await release_cluster(run, ts)
        await run.publish()

    async def _run_attempts(self, task: Task, ts: TaskState) -> None:
        """Attempts until the recovery policy says the task is done: each takes a cluster (a new one,
        the live one for a restart in place, or a pool worker), runs the phases and lets `decide` judge."""
        run = self.run_state
        recovery = task.job_recovery()
        storages = [s for s in task.file_mounts.values() if isinstance(s, Storage)]
        candidates: list[Candidate] = []
        launch = 0
        restarts = 0
        lost_region: str | None = None
        recovering = False
        while True:
            attempt = Attempt(index=len(ts.attempts), launch=launch)
            if run.hold.cluster is None:
                if run.req.pool is not None:
                    # A pool job takes a whole READY worker of its pool instead of a cluster of its own.
                    run.hold.cluster, chosen = await pool_lease.acquire_worker(run, ts, attempt.index, recovering)
                else:
                    plan_in_launch = not candidates and workflow.patched(_PATCH_PLAN_IN_LAUNCH)
                    if plan_in_launch:
                        run.set(ts, Status.STARTING, "Launching")
                        await run.publish()
                    else:
                        candidates = candidates or await self._plan(task, ts)
                    chosen, candidates = await self._launch(
                        task, ts, candidates, launch, recovery.strategy or "", lost_region, recovering, plan_in_launch
                    )
                ts.infra = chosen.display_infra()
                attempt.candidate = chosen
            else:
                attempt.candidate = ts.attempts[-1].candidate
            cluster = run.hold.cluster
            assert cluster is not None
            attempt.cluster_name = cluster.name
            attempt.started_at = workflow.now()
            ts.attempts.append(attempt)
            ts.attempt_count = len(ts.attempts)
            run.enter_running(ts, recovering)
            run.log(f"Task {ts.index} ({ts.name}) attempt {attempt.index} running on {cluster.name}.")
            run.log(f"Job status: JobStatus.{'SETTING_UP' if task.setup else 'RUNNING'}")
            await run.publish()

            outcome = await run_phases(run, task, ts, attempt, cluster)
            if (
                outcome.kind is OutcomeKind.EXITED
                and any(writes_back(s, cluster.backend) for s in storages)
                and not workflow.patched(_PATCH_LIVE_MOUNTS)
            ):
                # Before live mounts, MOUNT of an object-store bucket was a cached copy on the nodes, saved here.
                await lifecycle.sync_files(run.calls, run.meta(ts.index), cluster, task, "up")
            run.leave_running(ts)
            decision = decide(outcome, recovery, restarts)
            attempt.ended_at = workflow.now()
            attempt.cause = decision.cause
            attempt.exit_codes = list(outcome.exit_codes)
            lost = outcome.kind is not OutcomeKind.EXITED
            if decision.action is Action.FINISH:
                assert decision.status is not None
                if run.req.pool is not None:
                    # Ended before its worker is free: a pool never shows more jobs RUNNING than workers.
                    run.finish(ts, decision.status, decision.reason or None)
                    await run.publish()
                await release_cluster(run, ts, lost=lost)
                run.finish(ts, decision.status, decision.reason or None)
                run.show.log_cluster_job_status(outcome)
                run.log(f"Task {ts.index} ({ts.name}) {decision.status.value}. {decision.reason}".rstrip())
                return
            restarts += decision.counts_restart
            recovering = True
            run.set(ts, Status.RECOVERING, decision.reason)
            run.show.log_cluster_job_status(outcome)
            run.log(f"Task {ts.index} ({ts.name}) recovering: {decision.reason}")
            await run.publish()
            if decision.action is Action.RELAUNCH:
                lost_region = cluster.region
                await release_cluster(run, ts, lost=lost)
                launch += 1

    async def _plan(self, task: Task, ts: TaskState) -> list[Candidate]:
        run = self.run_state
        run.set(ts, Status.STARTING, "Planning")
        await run.publish()
        try:
            return await lifecycle.plan(run.calls, run.meta(ts.index), task)
        except lifecycle.Infeasible as err:
            raise TaskEnded(Status.FAILED_PRECHECKS, err.reason) from None

    async def _launch(
        self,
        task: Task,
        ts: TaskState,
        candidates: list[Candidate],
        launch: int,
        strategy: str,
        lost_region: str | None,
        recovering: bool,
        plan: bool,
    ) -> tuple[Candidate, list[Candidate]]:
        """Launch rounds until one candidate has room, showing PENDING while in backoff. When every
        candidate fails its prechecks on the first launch, the task fails; a recovery waits instead.
        With `plan`, the first round plans the task too. Returns the chosen candidate and all of them."""
        run = self.run_state

        async def in_backoff(delay: float) -> None:
            run.set(ts, Status.PENDING, f"In backoff, waiting for resources (next try in {delay:.0f}s)")
            run.log(f"No capacity for task {ts.index} ({ts.name}); retrying in {delay:.0f}s.")
            await run.publish()

        async def retrying() -> None:
            run.set(ts, Status.RECOVERING if recovering else Status.STARTING, "Retrying launch")
            await run.publish()

        spec = lifecycle.Launch(
            meta=run.meta(ts.index),
            name=cluster_name(ts.name, run.req.job_id, ts.index, launch),
            launch=launch,
            num_nodes=task.num_nodes,
            candidates=candidates,
            policy=run.req.policy,
            strategy=strategy,
            lost_region=lost_region,
            fail_on_prechecks=not recovering,
            plan=task if plan else None,
        )
        try:
            _, chosen = await lifecycle.launch(
                run.calls, run.hold, spec, log=run.log, on_backoff=in_backoff, after_backoff=retrying
            )
        except lifecycle.Infeasible as err:
            raise TaskEnded(Status.FAILED_PRECHECKS, err.reason) from None
        return chosen, spec.candidates
