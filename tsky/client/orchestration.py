"""Client calls for issue 18: schedules of managed jobs (Temporal Schedules) and relaunching a job.

A tsky schedule is a Temporal Schedule whose action starts `TskyScheduledJob` (tsky.workflows.scheduled_job)
with the job's spec, so each run is an ordinary managed job with its own id, tagged with the schedule's
name. The schedule's id is `tsky-schedule-<name>`; the Temporal Web UI lists it on its Schedules page.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.service import RPCError, RPCStatusCode

from tsky.client import jobs as api
from tsky.contract.ids import CONTROL_QUEUE, job_workflow_id
from tsky.contract.job import JobPolicy, JobRequest
from tsky.contract.names import WorkflowType
from tsky.contract.orchestration import Orchestration, Relaunch, ScheduledRun
from tsky.ops.uploads import Uploader, remove_uploads
from tsky.ops.uploads import UploadError as UploadError
from tsky.spec.secrets import SecretKeyError, load_key, seal, unseal
from tsky.spec.settings import Settings
from tsky.spec.status import ManagedJobStatus

SCHEDULE_PREFIX = "tsky-schedule-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

OVERLAP = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer-one": ScheduleOverlapPolicy.BUFFER_ONE,
    "allow-all": ScheduleOverlapPolicy.ALLOW_ALL,
}


class ScheduleInputError(Exception):
    """A bad schedule name, timing or option; the message names the flag and the fix."""


class ScheduleNotFound(Exception):
    pass


def schedule_id(name: str) -> str:
    return SCHEDULE_PREFIX + name


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ScheduleInputError(
            f"Schedule name {name!r}: use letters, digits, '.', '_' and '-' (at most 63, starting with a letter "
            "or digit), e.g. nightly-train."
        )


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(flag: str, text: str) -> timedelta:
    """`30s`, `5m`, `6h`, `1d`, `2w` (or a number of seconds)."""
    value = text.strip().lower()
    number, unit = (value[:-1], value[-1]) if value[-1:] in _UNITS else (value, "s")
    if not number.isdigit() or int(number) == 0:
        raise ScheduleInputError(f"{flag} {text!r} is not a duration; use e.g. 30s, 5m, 6h, 1d or 2w.")
    return timedelta(seconds=int(number) * _UNITS[unit])


@dataclass
class Timing:
    cron: str | None = None
    every: str | None = None
    timezone: str | None = None
    overlap: str = "skip"
    catchup_window: str = "1h"

    def spec(self) -> ScheduleSpec:
        if (self.cron is None) == (self.every is None):
            raise ScheduleInputError('Give exactly one of --cron "0 3 * * *" or --every 6h.')
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ScheduleInputError(
                f'--cron {self.cron!r}: give the five cron fields (minute hour day month weekday), e.g. "0 3 * * *".'
            )
        if self.timezone is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ScheduleInputError(
                    f"--timezone {self.timezone!r} is not an IANA time zone; use e.g. UTC, Europe/Paris."
                ) from None
        if self.every is not None:
            return ScheduleSpec(
                intervals=[ScheduleIntervalSpec(every=parse_duration("--every", self.every))],
                time_zone_name=self.timezone,
            )
        assert self.cron is not None
        return ScheduleSpec(cron_expressions=[self.cron], time_zone_name=self.timezone)

    def policy(self) -> SchedulePolicy:
        if self.overlap not in OVERLAP:
            raise ScheduleInputError(f"--overlap {self.overlap!r}: use one of {', '.join(OVERLAP)}.")
        return SchedulePolicy(
            overlap=OVERLAP[self.overlap], catchup_window=parse_duration("--catchup-window", self.catchup_window)
        )

    def describe(self) -> str:
        when = f"every {self.every}" if self.every else f"cron {self.cron!r}"
        return when + (f" ({self.timezone})" if self.timezone else "")


async def create_schedule(
    client: Client, settings: Settings, run: ScheduledRun, timing: Timing, *, user_hash: str, paused: bool = False
) -> None:
    """Create the schedule. Local workdir and file mounts are uploaded first, as `tsky jobs launch` does, into
    the schedule's own copy (each run copies it for its job; `delete_schedule` removes it). Raises
    ScheduleInputError, or UploadError for files that cannot be uploaded."""
    name = run.schedule
    check_name(name)
    spec, policy = timing.spec(), timing.policy()
    uploader = Uploader(settings, run.pipeline, user=run.user, user_hash=user_hash)
    if uploader.needed:
        pipeline, uploads = await asyncio.to_thread(uploader.upload, f"schedule-{name}-{uuid.uuid4().hex[:8]}")
        run = run.model_copy(update={"pipeline": pipeline, "uploads": uploads})
    try:
        await _create(client, run, spec, policy, timing.describe(), paused)
    except BaseException:
        await asyncio.to_thread(remove_uploads, settings, run.uploads)
        raise


async def _create(
    client: Client, run: ScheduledRun, spec: ScheduleSpec, policy: SchedulePolicy, timing: str, paused: bool
) -> None:
    name = run.schedule
    action = ScheduleActionStartWorkflow(
        WorkflowType.SCHEDULED_JOB,
        run,
        id=schedule_id(name),  # each run's id: this plus the scheduled time
        task_queue=CONTROL_QUEUE,
        static_summary=f"tsky schedule {name}: a run of job {run.name!r}",
    )
    schedule = Schedule(action=action, spec=spec, policy=policy, state=ScheduleState(paused=paused))
    memo = {"job_name": run.name, "user": run.user, "timing": timing}
    try:
        await client.create_schedule(schedule_id(name), schedule, memo=memo)
    except ScheduleAlreadyRunningError:
        raise ScheduleInputError(
            f"A schedule named {name!r} exists already: `tsky jobs schedule delete {name}` first, or pick another name."
        ) from None
    except RPCError as err:
        if err.status == RPCStatusCode.INVALID_ARGUMENT:
            raise ScheduleInputError(f"Temporal refused the schedule: {err.message}") from None
        raise


@dataclass
class ScheduleRow:
    name: str
    job_name: str
    user: str
    timing: str
    paused: bool
    next_run: datetime | None
    last_run: datetime | None


async def list_schedules(client: Client) -> list[ScheduleRow]:
    rows: list[ScheduleRow] = []
    async for entry in await client.list_schedules():
        if not entry.id.startswith(SCHEDULE_PREFIX):
            continue
        memo = await entry.memo()
        info, state = entry.info, entry.schedule.state if entry.schedule else None
        rows.append(
            ScheduleRow(
                name=entry.id.removeprefix(SCHEDULE_PREFIX),
                job_name=str(memo.get("job_name", "")),
                user=str(memo.get("user", "")),
                timing=str(memo.get("timing", "")),
                paused=bool(state and state.paused),
                next_run=info.next_action_times[0] if info and info.next_action_times else None,
                last_run=info.recent_actions[-1].started_at if info and info.recent_actions else None,
            )
        )
    return sorted(rows, key=lambda r: r.name)


def handle(client: Client, name: str) -> ScheduleHandle:
    return client.get_schedule_handle(schedule_id(name))


async def describe_schedule(client: Client, name: str) -> tuple[ScheduleDescription, dict[str, Any]]:
    try:
        description = await handle(client, name).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleNotFound(f"No schedule named {name!r}: `tsky jobs schedule list` shows them.") from None
        raise
    return description, dict(await description.memo())


async def schedule_call(client: Client, name: str, what: str) -> None:
    """pause | unpause | trigger, with a clear error for an unknown schedule."""
    await describe_schedule(client, name)  # NotFound first, with its message
    h = handle(client, name)
    if what == "pause":
        await h.pause(note="paused with tsky jobs schedule pause")
    elif what == "unpause":
        await h.unpause(note="unpaused with tsky jobs schedule unpause")
    elif what == "trigger":
        await h.trigger()
    else:
        raise ValueError(what)


async def delete_schedule(client: Client, settings: Settings, name: str) -> None:
    """Delete the schedule, then its copy of the uploaded files (its runs' jobs have their own copies)."""
    description, _ = await describe_schedule(client, name)
    action = description.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    [run] = await client.data_converter.decode(action.args, [ScheduledRun])
    await handle(client, name).delete()
    if run.uploads:
        await asyncio.to_thread(remove_uploads, settings, run.uploads)


# -- relaunch ---------------------------------------------------------------------------------------


class RelaunchError(Exception):
    """The job cannot be relaunched as asked; the message says why and what to do instead."""


async def job_request(client: Client, job_id: int) -> JobRequest:
    """The request a job was started with, from the first event of its history (decoded like any payload,
    so an encrypting codec applies)."""
    history = await client.get_workflow_handle(job_workflow_id(job_id)).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [req] = await client.data_converter.decode(started.input.payloads, [JobRequest])
    assert isinstance(req, JobRequest)
    return req


def tasks_to_skip(row: api.JobRow, from_task: int | None) -> list[int]:
    """The tasks the relaunch does not run again: those before `from_task`, or every task that SUCCEEDED."""
    statuses = [t.status for t in row.tasks]
    if from_task is None:
        if all(s is ManagedJobStatus.SUCCEEDED for s in statuses):
            raise RelaunchError(
                f"Job {row.job_id} SUCCEEDED: nothing to resume. To run it again from task K: "
                f"tsky jobs relaunch {row.job_id} --from-task K."
            )
        return [i for i, s in enumerate(statuses) if s is ManagedJobStatus.SUCCEEDED]
    if not 0 <= from_task < len(statuses):
        raise RelaunchError(f"--from-task {from_task}: job {row.job_id} has tasks 0..{len(statuses) - 1}.")
    for i in range(from_task):
        if statuses[i] is not ManagedJobStatus.SUCCEEDED:
            raise RelaunchError(
                f"--from-task {from_task}: task {i} of job {row.job_id} ended {statuses[i].value}, so it cannot "
                f"be skipped; use --from-task {i} or less."
            )
    return list(range(from_task))


async def relaunch(
    client: Client,
    settings: Settings,
    row: api.JobRow,
    *,
    from_task: int | None,
    secrets: dict[str, str],
    user: str,
    user_hash: str,
) -> int:
    """Start a new job with `row`'s spec that skips the tasks already done; returns its id."""
    if not (row.closed or row.status.is_terminal()):
        raise RelaunchError(
            f"Job {row.job_id} is still {row.status.value}: relaunch resumes an ended job. "
            f"Wait for it, or `tsky jobs cancel {row.job_id}` first."
        )
    skip = tasks_to_skip(row, from_task)
    old = await job_request(client, row.job_id)
    if old.uploads:
        raise RelaunchError(
            f"Job {row.job_id} ran local files uploaded for it (workdir or file_mounts), removed when it ended: "
            "launch the YAML again with `tsky jobs launch` instead."
        )
    sealed = [_resealed(row.job_id, task_sealed, secrets, settings) for task_sealed in old.sealed_secrets]
    first = await api.allocate_job_ids(client, 1)
    req = JobRequest(
        job_id=first,
        name=old.name,
        pipeline=old.pipeline,
        user=user,
        user_hash=user_hash,
        submitted_at=datetime.now(UTC),
        sealed_secrets=sealed,
        pool=old.pool,
        priority=old.priority,
        policy=JobPolicy.from_settings(settings),
        orchestration=Orchestration(
            relaunch=Relaunch(of_job=row.job_id, skip_tasks=skip, task_ids=[t.task_id for t in row.tasks]),
            notify=old.orchestration.notify,
        ),
    )
    await api.start_job(client, req)
    return first


def _resealed(job_id: int, sealed: dict[str, str], given: dict[str, str], settings: Settings) -> dict[str, str]:
    """One task's sealed secrets for the new job: values given again win; the others are reused while the
    current key still opens them."""
    key = load_key(settings.home, create=True)
    kept = {name: token for name, token in sealed.items() if name not in given}
    try:
        unseal(kept, key)
    except SecretKeyError:
        names = ", ".join(f"--secret {name}=..." for name in sorted(kept))
        raise RelaunchError(
            f"Job {job_id}'s secrets were sealed with another key than this machine's: give them again ({names})."
        ) from None
    fresh = seal({name: value for name, value in given.items() if name in sealed}, key)
    return {**kept, **fresh}
