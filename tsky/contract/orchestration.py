"""What a managed job knows of other jobs and of the outside world (issue 18): the schedule that started
it, the jobs it waits for (`--after`), the failed job it resumes (`relaunch`) and where it reports its
transitions (`--notify`). One sub-model of the job request, so these options stay together.

Webhook URLs are secrets (a Slack webhook URL is its own credential): they travel sealed with the
same key as task secrets (tsky.spec.secrets) and only the delivery activity opens them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from tsky.spec.status import ManagedJobStatus
from tsky.spec.storage import UploadLocation
from tsky.spec.task import Pipeline


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Notify(_Model):
    """Where and when a job POSTs its status transitions."""

    sealed_urls: list[str] = []
    # The statuses whose arrival is reported; empty: every transition.
    statuses: list[ManagedJobStatus] = []
    web_ui: str | None = None  # the Temporal Web UI's base URL when known: the events link to the job

    def wants(self, status: ManagedJobStatus) -> bool:
        return bool(self.sealed_urls) and (not self.statuses or status in self.statuses)


class Relaunch(_Model):
    """A job that resumes a failed one: the tasks that already succeeded are not run again."""

    of_job: int
    skip_tasks: list[int] = []
    # The old job's SKYPILOT_TASK_IDs, kept so a resumed pipeline writes to the same places.
    task_ids: list[str] = []


class Orchestration(_Model):
    schedule: str | None = None  # the schedule that started this job (`tsky jobs schedule`)
    after: list[int] = []  # start only once these jobs ended (SUCCEEDED, unless after_any)
    after_any: bool = False
    relaunch: Relaunch | None = None
    notify: Notify = Notify()


def is_slack_webhook(url: str) -> bool:
    """Slack's incoming webhooks take `{"text": ...}`; any other receiver gets the full event."""
    return urlsplit(url).hostname == "hooks.slack.com"


class JobEvent(_Model):
    """One status transition, as POSTed to a webhook (see docs/orchestration.md for the schema)."""

    job_id: int
    name: str
    status: ManagedJobStatus
    previous_status: ManagedJobStatus | None = None
    reason: str | None = None
    # Dollars spent so far; None until the job's running cost is computed (issue 17).
    cost_so_far: float | None = None
    at: str  # ISO 8601, the workflow's time of the transition
    schedule: str | None = None
    relaunch_of: int | None = None
    links: dict[str, str] = {}  # web_ui: the job's page in the Temporal Web UI

    def text(self) -> str:
        """One line for chat: `tsky job 12 'train' RUNNING → FAILED: exit code 1`."""
        before = f"{self.previous_status.value} → " if self.previous_status else ""
        reason = f": {self.reason}" if self.reason else ""
        return f"tsky job {self.job_id} '{self.name}' {before}{self.status.value}{reason}"


# -- what crosses the activity boundary ---------------------------------------------------------------


class NotifyInput(_Model):
    sealed_url: str
    event: JobEvent


class WaitForJobsInput(_Model):
    job_ids: list[int]
    poll_seconds: float


class JobsEnded(_Model):
    """How each awaited job ended: its status, or NOT_FOUND."""

    statuses: dict[int, str]


class ScheduledRun(_Model):
    """A schedule's action input (`TskyScheduledJob`): the job each run starts, its secrets and webhook
    URLs sealed. Local files are refused at creation: a schedule runs later, on the workers."""

    schedule: str
    pipeline: Pipeline
    name: str
    user: str
    priority: int = 0
    pool: str | None = None  # run on this pool's workers
    sealed_secrets: list[dict[str, str]] = []  # per task, see tsky.spec.secrets
    orchestration: Orchestration = Orchestration()  # the runs' webhooks (the schedule's name is added per run)
    # The schedule's own copy of the local workdir and file mounts (removed by `schedule delete`); each
    # run's job gets a copy of it, removed when that job ends.
    uploads: list[UploadLocation] = []


class RunUploads(_Model):
    """A pipeline and the uploads its tasks refer to: the schedule's (input), or one run's copy (output)."""

    pipeline: Pipeline
    uploads: list[UploadLocation]
    run_id: str = ""  # names the copy (input only)
    user: str = ""
    user_hash: str = ""


class ScheduledRunResult(_Model):
    job_id: int
    status: ManagedJobStatus
