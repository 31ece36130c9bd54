"""The managed job's request, state and result: what the ManagedJob workflow takes, keeps and returns.

These models travel through Temporal (pydantic data converter), so they hold no secrets in clear:
task secrets are redacted on serialisation and their sealed (encrypted) values ride in `sealed_secrets`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from tsky.contract.orchestration import Orchestration
from tsky.spec.requests import Candidate
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus
from tsky.spec.storage import UploadLocation
from tsky.spec.task import Pipeline


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class JobPolicy(_Model):
    """The settings that steer a job's decisions, fixed at submission so replays agree."""

    status_check_min_elapsed_seconds: float = 60
    status_check_min_retries: int = 5
    launch_backoff_initial_seconds: float = 60
    launch_backoff_multiplier: float = 1.6
    launch_backoff_max_seconds: float = 300
    launch_backoff_jitter: float = 0.4
    watch_poll_seconds: float = 2
    watch_heartbeat_timeout_seconds: float = 30
    max_running_jobs: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> JobPolicy:
        jobs = settings.jobs
        return cls(
            status_check_min_elapsed_seconds=jobs.status_check.min_elapsed_seconds,
            status_check_min_retries=jobs.status_check.min_retries,
            launch_backoff_initial_seconds=jobs.launch_backoff.initial_seconds,
            launch_backoff_multiplier=jobs.launch_backoff.multiplier,
            launch_backoff_max_seconds=jobs.launch_backoff.max_seconds,
            launch_backoff_jitter=jobs.launch_backoff.jitter,
            watch_poll_seconds=jobs.watch.poll_seconds,
            watch_heartbeat_timeout_seconds=jobs.watch.heartbeat_timeout_seconds,
            max_running_jobs=jobs.controller.max_running_jobs,
        )


# CLI -> job, sent just before the cancel request (which carries no parameters): stop the running phase
# gracefully, SIGTERM then SIGKILL only after `grace_seconds` (`tsky jobs cancel --graceful`).
DEFAULT_GRACEFUL_TIMEOUT_SECONDS = 30  # `--graceful` without `--graceful-timeout`


class GracefulCancel(_Model):
    grace_seconds: float


class JobRequest(_Model):
    job_id: int
    name: str
    pipeline: Pipeline
    user: str
    user_hash: str
    submitted_at: datetime
    # Per task: secret name -> sealed value (see tsky.spec.secrets). Never clear text.
    sealed_secrets: list[dict[str, str]] = []
    rank: int = 0
    num_jobs: int = 1
    pool: str | None = None
    priority: int = 0
    policy: JobPolicy = JobPolicy()
    # Where the CLI uploaded the job's local workdir and file mounts (the tasks refer to these
    # locations, never to the submitting machine's paths); removed when the job ends.
    uploads: list[UploadLocation] = []
    # Schedules, dependencies, relaunch and notifications (tsky.contract.orchestration).
    orchestration: Orchestration = Orchestration()


class Attempt(_Model):
    """One try of one task: a cluster (or pool worker) that ran (or tried to run) it."""

    index: int
    launch: int  # which cluster generation ran it; FAILOVER restarts reuse the cluster
    cluster_name: str | None = None
    candidate: Candidate | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    # How the attempt ended: succeeded, exit code N, setup exit code N, preempted, unreachable,
    # no capacity, cancelled ...; None while it runs.
    cause: str | None = None
    exit_codes: list[int] = []


class TaskState(_Model):
    index: int
    name: str
    task_id: str  # SKYPILOT_TASK_ID
    status: ManagedJobStatus = ManagedJobStatus.PENDING
    resources: str = "-"  # SkyPilot's REQUESTED column
    submitted_at: datetime | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    last_recovered_at: datetime | None = None
    job_duration_s: float = 0.0  # time spent RUNNING, summed over finished stretches
    running_since: datetime | None = None  # start of the current RUNNING stretch
    recovery_count: int = 0
    restarts_on_errors: int = 0
    failure_reason: str | None = None
    details: str | None = None  # current one-line detail: backoff, recovering reason ...
    infra: str | None = None
    attempts: list[Attempt] = []
    # len(attempts), kept in the memo (which leaves the attempts out to stay small) for the queue and logs
    attempt_count: int = 0

    def current_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def job_duration(self, now: datetime) -> float:
        """SkyPilot's JOB DURATION: time spent RUNNING, including the stretch still going on."""
        ongoing = (now - self.running_since).total_seconds() if self.running_since else 0.0
        return self.job_duration_s + max(ongoing, 0.0)


class JobState(_Model):
    job_id: int
    name: str
    user: str
    pool: str | None = None
    submitted_at: datetime
    tasks: list[TaskState]

    @property
    def status(self) -> ManagedJobStatus:
        """The job's status: the first non-terminal task's while it runs; once every task has ended,
        the first task's that did not succeed (a pipeline ends with its failed task's status, the
        tasks after it being CANCELLED), else SUCCEEDED."""
        for task in self.tasks:
            if not task.status.is_terminal():
                return task.status
        for task in self.tasks:
            if task.status is not ManagedJobStatus.SUCCEEDED:
                return task.status
        return ManagedJobStatus.SUCCEEDED

    def current_task(self) -> TaskState:
        for task in self.tasks:
            if not task.status.is_terminal():
                return task
        return self.tasks[-1]

    def failure_reason(self) -> str | None:
        return next((t.failure_reason for t in self.tasks if t.failure_reason), None)


class TaskResult(_Model):
    name: str
    status: ManagedJobStatus
    recovery_count: int
    attempts: list[Attempt]
    failure_reason: str | None = None


class JobResult(_Model):
    """What a ManagedJob workflow returns (also to a parent workflow using the child API)."""

    job_id: int
    name: str
    status: ManagedJobStatus
    failure_reason: str | None = None
    tasks: list[TaskResult]


def job_result(state: JobState) -> JobResult:
    """A job's result from its state (what a parent reads when its child job was cancelled)."""
    return JobResult(
        job_id=state.job_id,
        name=state.name,
        status=state.status,
        failure_reason=state.failure_reason(),
        tasks=[
            TaskResult(
                name=t.name,
                status=t.status,
                recovery_count=t.recovery_count,
                attempts=t.attempts,
                failure_reason=t.failure_reason,
            )
            for t in state.tasks
        ],
    )
