"""A ManagedJob attempt on its cluster: sync the files, then `setup` and `run`, each watched to its end by
one long activity; the result is an `Outcome` for tsky.workflows.recovery to decide on.

A cancel during a phase is handled here: show CANCELLING, stop the phase's processes, let the watcher
copy their last lines (and, for a job's own cluster, tear it down in the same activity). A new
per-attempt step on the cluster (before, between or after the phases) goes here; the shared activity
calls are in cluster_lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import tsky.workflows.cluster_lifecycle as lifecycle
    from tsky.contract.activity_io import ClusterInfo, ErrorType, JobMeta, PhaseInput, PhaseResult, SyncResult
    from tsky.contract.job import Attempt, TaskState
    from tsky.spec.status import ManagedJobStatus
    from tsky.spec.task import Task
    from tsky.workflows.job_state import JobRun, TaskEnded
    from tsky.workflows.pool_lease import node_key
    from tsky.workflows.recovery import Outcome, OutcomeKind, launch_backoff
    from tsky.workflows.shield import shielded

# A recovery whose files cannot be synced (a bucket that cannot be mounted) retries instead of failing.
_PATCH_SYNC_RETRY_ON_RECOVERY = "sync-precheck-retried-on-recovery"
# A cancel during setup/run is handled by the workflow (stop the phase, then tear down) instead of being
# passed to the watcher.
_PATCH_STOP_PHASE_ON_CANCEL = "cancel-stops-phase-from-workflow"
# ... and the stop, the watcher's last lines and the teardown are one activity (one round-trip, not three).
_PATCH_STOP_AND_TEARDOWN_ON_CANCEL = "cancel-stops-and-tears-down-in-one-activity"


async def run_phases(run: JobRun, task: Task, ts: TaskState, attempt: Attempt, cluster: ClusterInfo) -> Outcome:
    index = ts.index
    meta = run.meta(index)
    sealed = run.req.sealed_secrets[index] if index < len(run.req.sealed_secrets) else {}
    gpus = attempt.candidate.accelerator_count if attempt.candidate else 0
    phase = "setup"
    try:
        if task.workdir or task.file_mounts:
            synced = await _sync_down(run, ts, attempt, meta, cluster, task)
            for note in synced.notes:
                run.log(f"Task {index} ({ts.name}): {note}")
        for phase in ("setup", "run"):
            if phase == "setup" and not task.setup:
                continue
            ts.details = "Setting up" if phase == "setup" else "Running"
            phase_input = lifecycle.phase_input(
                meta,
                cluster,
                phase,
                attempt.index,
                task,
                run.req.policy,
                sealed_secrets=sealed,
                gpus_per_node=gpus,
                node_key=node_key(run, index, attempt.index, phase) if run.req.pool else None,
            )
            watcher = lifecycle.start_phase(run.calls, phase_input)
            try:
                # Shielded: the cancel comes to this code, never to the watcher (see _stop_on_cancel).
                result = await asyncio.shield(watcher)
            except asyncio.CancelledError:
                if workflow.patched(_PATCH_STOP_PHASE_ON_CANCEL):
                    await _stop_on_cancel(run, ts, phase_input, watcher)
                    raise
                # Histories from before: the cancel went to the watcher, which learnt of it only with its
                # next heartbeat, and a phase that ended first swallowed the cancel (issue 20).
                watcher.cancel()
                result = await watcher
            if phase == "setup" and any(result.exit_codes):
                return Outcome(OutcomeKind.EXITED, "setup", tuple(result.exit_codes))
        return Outcome(OutcomeKind.EXITED, "run", tuple(result.exit_codes))
    except ActivityError as err:
        lost = lifecycle.lost_cluster(err)
        if lost is not None:
            kind = OutcomeKind.LOST if lost.type == ErrorType.CLUSTER_LOST else OutcomeKind.UNREACHABLE
            return Outcome(kind, phase, reason=lost.message)
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == ErrorType.PRECHECK:
            raise TaskEnded(ManagedJobStatus.FAILED_PRECHECKS, cause.message) from None  # the files can never sync
        raise


async def _sync_down(
    run: JobRun, ts: TaskState, attempt: Attempt, meta: JobMeta, cluster: ClusterInfo, task: Task
) -> SyncResult:
    """Put the task's files on the cluster. A precheck failure (a bucket that cannot be mounted) fails
    the task on its first attempt; on a recovery it is retried with the launch backoff: the job ran
    with these files before, so the cause is likely passing (an outage, expired credentials)."""
    tries = 0
    while True:
        try:
            return await lifecycle.sync_files(run.calls, meta, cluster, task, "down")
        except ActivityError as err:
            cause = err.cause
            if not (
                isinstance(cause, ApplicationError)
                and cause.type == ErrorType.PRECHECK
                and attempt.index > 0
                and workflow.patched(_PATCH_SYNC_RETRY_ON_RECOVERY)
            ):
                raise
            delay = launch_backoff(run.req.policy, tries, workflow.random())
            run.log(f"Task {ts.index} ({ts.name}): {cause.message}; retrying in {delay:.0f}s.")
            await run.publish()
            await workflow.sleep(timedelta(seconds=delay), summary="sync retry")
            tries += 1


async def _stop_on_cancel(
    run: JobRun, ts: TaskState, phase: PhaseInput, watcher: workflow.ActivityHandle[PhaseResult]
) -> None:
    """A cancel while setup or run goes on: show CANCELLING at once, stop the phase's processes with
    a short activity (SIGTERM, SIGKILL after the grace `--graceful` set, else a few seconds), then let
    the watcher see them end and copy their last lines. The watcher itself is never cancelled: it
    would learn of it only with its next heartbeat (throttled to most of the heartbeat timeout, so
    that thousands of watchers stay cheap), and a phase that ended before that would swallow the
    cancel."""
    run.record_cancel(ts)
    await run.publish()
    if run.req.pool is None and workflow.patched(_PATCH_STOP_AND_TEARDOWN_ON_CANCEL):
        await shielded(lambda: _stop_and_teardown(run, ts, phase))
        return

    async def stop() -> None:
        try:
            await lifecycle.stop_phase(run.calls, phase.cluster, phase.key, run.stop_grace)
        except ActivityError as err:  # e.g. the cluster cannot be reached: teardown kills what is left
            run.log(f"Could not stop the {phase.phase} of task {ts.index} ({ts.name}): {err.cause or err}")
            return
        # The watcher returns at its next poll now that the processes are gone.
        with contextlib.suppress(ActivityError):
            await watcher

    await shielded(stop)


async def _stop_and_teardown(run: JobRun, ts: TaskState, phase: PhaseInput) -> None:
    """The cluster is gone when this returns, unless the activity failed past its retries: then the
    task's ordinary teardown (job_teardown) tries again and reports a leak."""
    name = phase.cluster.name
    try:
        await lifecycle.stop_and_teardown(run.calls, run.hold, phase.key, run.stop_grace)
    except ActivityError as err:
        run.log(f"Could not stop the {phase.phase} of task {ts.index} ({ts.name}) and tear {name} down: {err.cause}")
        return
    run.log(f"Cluster {name} torn down.")
