"""The ManagedJob workflow's side of issue 18, kept out of its main loop: waiting for the jobs it depends
on (`--after`), the tasks a relaunch skips, and reporting transitions to webhooks.

Each new command sequence is behind `workflow.patched`, asked only by jobs that use the option: histories
of jobs without it never meet the marker and replay as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from tsky.contract.activity_io import ActivityName
    from tsky.contract.ids import CONTROL_QUEUE, WATCH_QUEUE
    from tsky.contract.job import JobRequest, JobState
    from tsky.contract.orchestration import JobEvent, JobsEnded, NotifyInput, WaitForJobsInput
    from tsky.spec.status import ManagedJobStatus

if TYPE_CHECKING:
    from tsky.workflows.job_state import JobRun

PATCH_AFTER = "orchestration-wait-for-dependencies"
PATCH_RELAUNCH = "orchestration-relaunch-skips-done-tasks"
PATCH_NOTIFY = "orchestration-webhook-notifications"

# A webhook delivery is retried with backoff for at most this long, then logged and dropped.
NOTIFY_TOTAL = timedelta(minutes=10)
_NOTIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
_NOTIFY_ATTEMPT = timedelta(seconds=30)
# The dependency wait is one long heartbeating activity, retried without end (a dead worker must not end it).
_WAIT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
_WAIT_TIMEOUT = timedelta(days=365)


def waiting_details(job_ids: list[int]) -> str:
    return f"Waiting for job {', '.join(map(str, job_ids))}"


async def wait_for_dependencies(req: JobRequest, heartbeat: timedelta) -> str | None:
    """Wait until the jobs of `--after` have ended. None to go on; else why the job must not run (one of
    them did not succeed, and `--after-any` was not given)."""
    after = req.orchestration.after
    ended = await workflow.execute_activity(
        ActivityName.WAIT_FOR_JOBS,
        WaitForJobsInput(job_ids=after, poll_seconds=req.policy.watch_poll_seconds),
        result_type=JobsEnded,
        task_queue=WATCH_QUEUE,
        start_to_close_timeout=_WAIT_TIMEOUT,
        heartbeat_timeout=heartbeat,
        retry_policy=_WAIT_RETRY,
        summary=waiting_details(after),
    )
    if req.orchestration.after_any:
        return None
    for job_id in after:
        status = ended.statuses.get(job_id, "NOT_FOUND")
        if status != ManagedJobStatus.SUCCEEDED.value:
            return f"Job {job_id} (--after) ended {status}, not SUCCEEDED; use --after-any to run anyway."
    return None


async def dependencies_succeeded(run: JobRun) -> bool:
    """`--after`: wait PENDING until the jobs it names have ended. False (every task CANCELLED, with the
    reason) when one of them did not succeed and `--after-any` was not given."""
    orchestration = run.req.orchestration
    if not orchestration.after or not workflow.patched(PATCH_AFTER):
        return True
    first = run.job.tasks[0]
    run.set(first, ManagedJobStatus.PENDING, waiting_details(orchestration.after))
    run.log(f"{waiting_details(orchestration.after)} to end (--after{'-any' if orchestration.after_any else ''}).")
    await run.publish()
    reason = await wait_for_dependencies(run.req, run.calls.heartbeat)
    first.details = None
    if reason is None:
        run.log("Dependencies ended: starting.")
        return True
    for task in run.job.tasks:
        run.finish(task, ManagedJobStatus.CANCELLED, None)
        task.failure_reason = reason  # shown although CANCELLED: why the job never ran
    run.log(f"Job CANCELLED: {reason}")
    return False


def skip_done_task(run: JobRun, index: int) -> None:
    """A relaunch does not run again a task that SUCCEEDED in the job it resumes."""
    relaunch = run.req.orchestration.relaunch
    assert relaunch is not None
    ts = run.job.tasks[index]
    run.finish(ts, ManagedJobStatus.SUCCEEDED, None)
    ts.details = f"Done in job {relaunch.of_job}"
    run.log(f"Task {index} ({ts.name}) SUCCEEDED in job {relaunch.of_job}: not run again.")


def skipped_tasks(req: JobRequest) -> set[int]:
    """The tasks a relaunch does not run again (they SUCCEEDED in the job it resumes)."""
    relaunch = req.orchestration.relaunch
    if relaunch is None or not relaunch.skip_tasks or not workflow.patched(PATCH_RELAUNCH):
        return set()
    return set(relaunch.skip_tasks)


class Notifier:
    """Reports the job's status transitions to its webhooks, one delivery at a time and in order, beside
    the job (never blocking it). A delivery that fails past its retries is logged, not raised."""

    def __init__(self, req: JobRequest, log: Callable[[str], None]):
        self.req = req
        self._log = log
        self._last = ManagedJobStatus.PENDING  # how every job starts: the first event is PENDING → ...
        self._pending: list[JobEvent] = []
        self._busy = False
        self._sender: asyncio.Task[None] | None = None
        self._enabled: bool | None = None  # decided by the patch marker on the first transition

    def observe(self, job: JobState) -> None:
        """Called on every publish: queue an event when the job's status changed to a wanted one."""
        notify = self.req.orchestration.notify
        status = job.status
        if not notify.sealed_urls or status is self._last:
            return
        previous, self._last = self._last, status
        if not notify.wants(status):
            return
        if self._enabled is None:
            self._enabled = workflow.patched(PATCH_NOTIFY)
        if not self._enabled:
            return
        relaunch = self.req.orchestration.relaunch
        reason = job.failure_reason() if status.is_terminal() else job.current_task().details
        links = {}
        if notify.web_ui:
            info = workflow.info()
            links["web_ui"] = f"{notify.web_ui}/namespaces/{info.namespace}/workflows/{info.workflow_id}"
        self._pending.append(
            JobEvent(
                job_id=job.job_id,
                name=job.name,
                status=status,
                previous_status=previous,
                reason=reason,
                at=workflow.now().isoformat(),
                schedule=self.req.orchestration.schedule,
                relaunch_of=relaunch.of_job if relaunch else None,
                links=links,
            )
        )
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self._pending))
            self._busy = True
            event = self._pending.pop(0)
            for index, sealed_url in enumerate(self.req.orchestration.notify.sealed_urls):
                try:
                    await workflow.execute_activity(
                        ActivityName.NOTIFY,
                        NotifyInput(sealed_url=sealed_url, event=event),
                        task_queue=CONTROL_QUEUE,
                        start_to_close_timeout=_NOTIFY_ATTEMPT,
                        schedule_to_close_timeout=NOTIFY_TOTAL,
                        retry_policy=_NOTIFY_RETRY,
                        summary=f"notify webhook {index}: {event.status.value}",
                    )
                except ActivityError as err:
                    cause = err.cause.message if err.cause is not None and hasattr(err.cause, "message") else err
                    self._log(f"Webhook {index} not notified of {event.status.value} (gave up): {cause}")
            self._busy = False

    async def flush(self) -> None:
        """Wait until every queued event was delivered or given up (at most NOTIFY_TOTAL each)."""
        await workflow.wait_condition(lambda: not self._pending and not self._busy)
