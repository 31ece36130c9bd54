"""Activities of issue 18: POSTing a job's transitions to webhooks, and waiting for the jobs a job
depends on (`--after`).

A webhook URL arrives sealed and is opened only here; it never appears in an error (errors go to the
job's history) or a log line. A delivery is retried by Temporal with backoff within a bounded total time
set by the workflow; the workflow logs a delivery that finally fails in the controller log.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from tsky.activities.heartbeat import heartbeating
from tsky.contract import search_attributes as sa
from tsky.contract.activity_io import ActivityName
from tsky.contract.ids import job_workflow_id
from tsky.contract.orchestration import (
    JobEvent,
    JobsEnded,
    NotifyInput,
    RunUploads,
    WaitForJobsInput,
    is_slack_webhook,
)
from tsky.ops.uploads import Uploader
from tsky.spec.secrets import SecretKeyError, load_key, unseal
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus

_POST_TIMEOUT_SECONDS = 10
NOT_FOUND = "NOT_FOUND"


def webhook_body(url: str, event: JobEvent) -> bytes:
    """Slack's incoming webhooks want `{"text": ...}`; any other receiver gets the whole event, plus the
    same one-line `text` (which Mattermost, Discord-compatible and most chat bridges also show)."""
    if is_slack_webhook(url):
        link = event.links.get("web_ui")
        text = event.text() + (f" (<{link}|Web UI>)" if link else "")
        return json.dumps({"text": text}).encode()
    return json.dumps({**event.model_dump(mode="json"), "text": event.text()}).encode()


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "tsky"}
    )
    try:
        with urllib.request.urlopen(request, timeout=_POST_TIMEOUT_SECONDS) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


class OrchestrationActivities:
    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings

    @activity.defn(name=ActivityName.NOTIFY)
    async def notify_webhook(self, inp: NotifyInput) -> None:
        try:
            url = unseal({"url": inp.sealed_url}, load_key(self.settings.home, create=False))["url"]
        except SecretKeyError as err:
            raise ApplicationError(str(err), non_retryable=True) from None
        body = webhook_body(url, inp.event)
        try:
            status = await asyncio.to_thread(_post, url, body)
        except (OSError, ValueError) as err:
            # Never the URL in the message: it would land in the job's history.
            raise ApplicationError(f"webhook not reached: {type(err).__name__}") from None
        if not 200 <= status < 300:
            raise ApplicationError(f"webhook answered HTTP {status}")

    @activity.defn(name=ActivityName.COPY_RUN_UPLOADS)
    async def copy_run_uploads(self, inp: RunUploads) -> RunUploads:
        """One scheduled run's copy of its schedule's uploads (hard links in the file store, server-side
        copies in a bucket), so the run's job can remove its own when it ends. Idempotent: a retry makes
        the same copy again."""
        uploader = Uploader(self.settings, inp.pipeline, user=inp.user, user_hash=inp.user_hash)
        async with heartbeating("copying uploads", inp.run_id):
            pipeline, uploads = await asyncio.to_thread(uploader.copy_for, inp.pipeline, inp.uploads, inp.run_id)
        return RunUploads(pipeline=pipeline, uploads=uploads)

    @activity.defn(name=ActivityName.WAIT_FOR_JOBS)
    async def wait_for_jobs(self, inp: WaitForJobsInput) -> JobsEnded:
        """Wait until every job in `job_ids` has ended; how each ended. Each try asks the server afresh, so
        a job that ended while no worker ran is seen as soon as one does."""
        ended: dict[int, str] = {}
        async with heartbeating("waiting for jobs", inp.job_ids):
            while True:
                for job_id in inp.job_ids:
                    if job_id not in ended and (status := await self._ended_status(job_id)) is not None:
                        ended[job_id] = status
                if len(ended) == len(inp.job_ids):
                    return JobsEnded(statuses=ended)
                await asyncio.sleep(inp.poll_seconds)

    async def _ended_status(self, job_id: int) -> str | None:
        """The job's final status, NOT_FOUND, or None while it runs."""
        try:
            description = await self.client.get_workflow_handle(job_workflow_id(job_id)).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return NOT_FOUND
            raise
        status = ManagedJobStatus(description.typed_search_attributes.get(sa.STATUS) or "PENDING")
        if status.is_terminal():
            return status.value
        if description.status != WorkflowExecutionStatus.RUNNING:
            return ManagedJobStatus.FAILED_CONTROLLER.value  # ended from outside tsky (terminated)
        return None
