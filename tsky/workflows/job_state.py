"""ManagedJob's state, in one object (`JobRun`), and the moves of a task between statuses.

Everything the ManagedJob workflow remembers between commands lives here: the request, the job's state
(what `tsky jobs queue` shows), the cluster it holds, its running slot and pool lease, the grace a cancel
gives. The other job modules (job_phases, job_teardown, pool_lease, running_slot) take a `JobRun`. A new
piece of job state goes here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from temporalio import workflow
from temporalio.exceptions import FailureError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from tsky.contract.activity_io import STOP_GRACE_SECONDS, JobMeta
    from tsky.contract.job import JobRequest, JobState, TaskState
    from tsky.contract.pool_state import PoolGrant, as_pool_job
    from tsky.spec.requests import requested_label
    from tsky.spec.status import ManagedJobStatus
    from tsky.workflows.cluster_lifecycle import Calls, ClusterHold
    from tsky.workflows.orchestration import Notifier
    from tsky.workflows.visibility import Visibility

Status = ManagedJobStatus


class TaskEnded(Exception):
    """Ends the current task with a status (e.g. FAILED_PRECHECKS) from deep inside its loop."""

    def __init__(self, status: ManagedJobStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_own_bug(err: BaseException) -> bool:
    """An error of this workflow's own code: neither a Temporal failure (an activity's, a child's) nor a
    cancellation. It must fail the workflow task at once, with no clean-up commands after it, so the job
    waits, intact, for a fixed worker, whose replay then matches the history and carries on. (A teardown
    scheduled on the way out would also be missing from the fixed code's replay: stuck for good.)"""
    return not isinstance(err, (FailureError, TaskEnded)) and not is_cancelled_exception(err)


def task_ids(req: JobRequest, start: datetime) -> list[str]:
    """SkyPilot's SKYPILOT_TASK_ID: `sky-managed-<run timestamp>_<name>_<job id>-<task index>`,
    stable across recoveries (the timestamp is the workflow's start)."""
    stamp = start.strftime("%Y-%m-%d-%H-%M-%S-%f")
    tasks = req.pipeline.tasks
    names = [f"{req.name}_{t.name}" if len(tasks) > 1 else req.name for t in tasks]
    return [f"sky-managed-{stamp}_{name}_{req.job_id}-{i}" for i, name in enumerate(names)]


class SlotState(StrEnum):
    """The running-jobs limit, for a job that has one (tsky.workflows.running_slot)."""

    WAITING = "waiting"
    HELD = "held"


@dataclass
class PoolLease:
    """A pool job's current acquisition (its key) and the pool's answer (tsky.workflows.pool_lease)."""

    key: str | None = None
    grant: PoolGrant | None = None


@dataclass
class JobRun:
    req: JobRequest  # a pool job's pipeline already made a pool job (as_pool_job)
    job: JobState
    calls: Calls
    show: Visibility
    notifier: Notifier  # the job's webhooks (`--notify`), told of every status change on publish
    hold: ClusterHold = field(default_factory=ClusterHold)  # what must be torn down if the job ends now
    slot: SlotState | None = None  # None: no limit, or the slot is given back
    lease: PoolLease = field(default_factory=PoolLease)
    # How long a cancel gives the running phase between SIGTERM and SIGKILL (`cancel --graceful`).
    stop_grace: float = STOP_GRACE_SECONDS

    @classmethod
    def start(cls, req: JobRequest) -> JobRun:
        if req.pool is not None:
            req = req.model_copy(update={"pipeline": as_pool_job(req.pipeline)})
        relaunch = req.orchestration.relaunch
        # A relaunch keeps the resumed job's SKYPILOT_TASK_IDs, so its tasks write where the old ones did.
        ids = relaunch.task_ids if relaunch and relaunch.task_ids else task_ids(req, workflow.info().start_time)
        job = JobState(
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
        heartbeat = timedelta(seconds=req.policy.watch_heartbeat_timeout_seconds)
        show = Visibility(job)
        return cls(
            req=req, job=job, calls=Calls(f"job {req.job_id}", heartbeat), show=show, notifier=Notifier(req, show.log)
        )

    def meta(self, index: int) -> JobMeta:
        """Who is asking, for every activity of task `index`."""
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

    def log(self, message: str) -> None:
        self.show.log(message)

    async def publish(self) -> None:
        self.notifier.observe(self.job)
        await self.show.publish()

    # -- a task's status -------------------------------------------------------------------------------

    def set(self, ts: TaskState, status: ManagedJobStatus, details: str | None) -> None:
        ts.status = status
        ts.details = details

    def enter_running(self, ts: TaskState, recovering: bool) -> None:
        now = workflow.now()
        if recovering:
            ts.recovery_count += 1
            ts.last_recovered_at = now
        ts.start_at = ts.start_at or now
        ts.running_since = now
        self.set(ts, Status.RUNNING, "Running")

    def leave_running(self, ts: TaskState) -> None:
        if ts.running_since is not None:
            ts.job_duration_s += (workflow.now() - ts.running_since).total_seconds()
            ts.running_since = None

    def record_cancel(self, ts: TaskState) -> None:
        if ts.status is Status.CANCELLING:
            return  # already recorded where the cancel arrived
        attempt = ts.current_attempt()
        if attempt is not None and attempt.ended_at is None:
            attempt.ended_at = workflow.now()
            attempt.cause = "cancelled"
        self.leave_running(ts)
        self.set(ts, Status.CANCELLING, "Cancellation requested; cleaning up.")
        self.log(f"Cancellation requested for task {ts.index} ({ts.name}); cleaning up.")

    def finish(self, ts: TaskState, status: ManagedJobStatus, reason: str | None) -> None:
        if ts.status.is_terminal() and status is not Status.FAILED_CONTROLLER:
            return  # a terminal status is never overwritten, except by a controller failure
        self.leave_running(ts)
        ts.status = status
        ts.details = None
        ts.end_at = workflow.now()
        if reason and status.is_failed():
            ts.failure_reason = reason
