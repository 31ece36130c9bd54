"""`tsky jobs queue`: SkyPilot 0.14.1's table (and `-v`, `--json`, `-r`), built from one visibility query."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from tsky.cli.common import (
    ago,
    client_for,
    console,
    current_user,
    duration,
    fail,
    run,
    settings,
    table,
    with_status_colors,
)
from tsky.contract.job import TaskState
from tsky.spec.errors import FieldError
from tsky.spec.lifecycle import dollars
from tsky.spec.status import ManagedJobStatus

if TYPE_CHECKING:
    from temporalio.client import Client

    from tsky.client import jobs as api
    from tsky.spec.requests import Infra

_DEFAULT_QUEUE_LIMIT = 50
_REFRESH_SECONDS = 5


@dataclass
class _QueueLine:
    """One printed row of `tsky jobs queue`: a job, a pipeline's aggregate, or one of its tasks."""

    ident: str
    task: str
    name: str
    user: str
    requested: str
    submitted: datetime | None
    end: datetime | None
    job_duration: float | None
    recoveries: int
    status: str
    pool: str
    started: datetime | None
    infra: str
    details: str
    sched_state: str = "-"
    worker_id: int | None = None  # the pool worker it runs on: `P (worker=1)` in POOL
    worker_cluster: str = ""
    cost: float | None = None  # estimated dollars so far (docs/lifecycle.md)

    def cells(self, show_user: bool, verbose: bool, now: datetime) -> list[str]:
        total = ((self.end or now) - self.submitted).total_seconds() if self.submitted else None
        row = [self.ident, self.task, self.name] + ([self.user] if show_user else [])
        row += [
            self.requested,
            ago(self.submitted, now),
            duration(total),
            duration(self.job_duration),
            str(self.recoveries),
            self.status,
            "-",  # PROGRESS: SkyPilot's batch-coordinator progress; tsky has no batch jobs
            f"{self.pool} (worker={self.worker_id})" if self.pool and self.worker_id is not None else self.pool or "-",
        ]
        if verbose:
            row += [self.worker_cluster or "-", "-", ago(self.started, now), self.infra or "-", "-"]
            row += [self.sched_state, self.details or "-", "-"]  # WORKER_JOB_ID, RESOURCES, GIT_COMMIT: "-"
            row += [dollars(self.cost) if self.cost is not None else "-"]
        return row


def sched_state(job: api.JobRow) -> str:
    """SkyPilot's SCHED. STATE (the controller's schedule state) from what tsky knows of the job:
    WAITING for a running slot or a pool worker (or not started yet), ALIVE_BACKOFF between launch
    rounds, LAUNCHING while a cluster is planned/provisioned/recovered, ALIVE once it runs (or is being
    cancelled), DONE once the job's workflow has ended."""
    if job.closed or job.status.is_terminal():
        return "DONE"
    current = next((t for t in job.tasks if not t.status.is_terminal()), None)
    details = (current.details if current else None) or ""
    if job.status is ManagedJobStatus.PENDING:
        return "ALIVE_BACKOFF" if details.startswith("In backoff") else "WAITING"
    if job.status in (ManagedJobStatus.STARTING, ManagedJobStatus.RECOVERING):
        return "LAUNCHING"
    return "ALIVE"


def _details(task: TaskState) -> str:
    if task.failure_reason and task.held_until:
        return f"Failure: {task.failure_reason} {task.details or ''}".rstrip()
    return f"Failure: {task.failure_reason}" if task.failure_reason else task.details or ""


def _links(job: api.JobRow) -> str:
    """`queue -v`: where the job comes from, after its details."""
    found = []
    if "relaunch_of" in job.links:
        found.append(f"relaunch of job {job.links['relaunch_of']}")
    if "schedule" in job.links:
        found.append(f"schedule {job.links['schedule']}")
    if "after" in job.links:
        found.append(f"after job {','.join(map(str, job.links['after']))}")
    return f"({'; '.join(found)})" if found else ""


def _with_links(details: str, job: api.JobRow) -> str:
    return " ".join(part for part in (details, _links(job)) if part)


def _queue_lines(job: api.JobRow, now: datetime, workers: dict[int, tuple[int, str]]) -> list[_QueueLine]:
    """SkyPilot's rows: one per single-task job; for a pipeline an aggregate row (the status of the first
    task not SUCCEEDED, with "(task: k)" while in progress) followed by one ` ↳` row per task.
    `workers`: job id -> (worker id, worker cluster) of the pool jobs on a worker now."""
    tasks = job.tasks
    worker_id, worker_cluster = workers.get(job.job_id, (None, ""))
    if len(tasks) <= 1:
        task = tasks[0] if tasks else None
        return [
            _QueueLine(str(job.job_id), "-", job.name, job.user, job.resources, job.submitted_at, job.ended_at,
                       task.job_duration(now) if task else None, job.recoveries, job.status.value, job.pool,
                       job.started_at, job.infra, _with_links(_details(task) if task else "", job), sched_state(job),
                       worker_id, worker_cluster, task.cost(now) if task else None)
        ]  # fmt: skip
    current = next((t for t in tasks if t.status is not ManagedJobStatus.SUCCEEDED), tasks[-1])
    status = current.status.value + ("" if current.status.is_terminal() else f" (task: {current.index})")
    failure = next((_details(t) for t in tasks if t.failure_reason), "")
    lines = [
        _QueueLine(str(job.job_id), "", job.name, job.user, "-", job.submitted_at, job.ended_at,
                   sum(t.job_duration(now) for t in tasks), job.recoveries, status, job.pool, job.started_at,
                   job.infra, _with_links(failure, job), sched_state(job), worker_id, worker_cluster,
                   sum(t.cost(now) for t in tasks))
    ]  # fmt: skip
    for t in tasks:
        lines.append(
            _QueueLine(" ↳", str(t.index), t.name, job.user, t.resources, t.submitted_at,
                       t.end_at if t.status.is_terminal() else None, t.job_duration(now) if t.submitted_at else None,
                       t.recovery_count, t.status.value, job.pool, t.start_at, t.infra or "", _details(t), "-",
                       worker_id if not t.status.is_terminal() else None, "", t.cost(now))
        )  # fmt: skip
    return lines


def _queue_table(
    jobs: list[api.JobRow], show_user: bool, verbose: bool, workers: dict[int, tuple[int, str]] | None = None
) -> str:
    """SkyPilot 0.14.1's columns, in its order, with `-` in empty cells: scripts read them by position
    (`awk '{print $1}'` is the ID, `$(NF-3)` the #RECOVERIES)."""
    headers = ["ID", "TASK", "NAME"] + (["USER"] if show_user else [])
    headers += ["REQUESTED", "SUBMITTED", "TOT. DURATION", "JOB DURATION", "#RECOVERIES", "STATUS", "PROGRESS"]
    headers += ["POOL"]
    if verbose:
        headers += ["WORKER_CLUSTER", "WORKER_JOB_ID", "STARTED", "INFRA", "RESOURCES", "SCHED. STATE", "DETAILS"]
        headers += ["GIT_COMMIT", "COST"]  # COST: estimated from catalog prices (tsky only)
    now = datetime.now(UTC)
    rows: list[list[str]] = []
    for job in jobs:
        lines = _queue_lines(job, now, workers or {})
        if len(lines) > 1 and rows:
            rows.append([""] * len(headers))  # a blank line sets a pipeline apart
        rows += [line.cells(show_user, verbose, now) for line in lines]
        if len(lines) > 1:
            rows.append([""] * len(headers))
    while rows and not any(rows[-1]):
        rows.pop()
    return table(headers, rows)


def queue(
    job_ids: Annotated[list[int] | None, typer.Argument(help="Only these jobs.")] = None,
    all_users: Annotated[bool, typer.Option("--all-users", "-u", help="Show every user's jobs.")] = False,
    skip_finished: Annotated[bool, typer.Option("--skip-finished", help="Only jobs still in progress.")] = False,
    show_all: Annotated[bool, typer.Option("--all", "-a", help="No limit on the number of jobs shown.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-l", help="Show the latest N jobs.")] = _DEFAULT_QUEUE_LIMIT,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More columns.")] = False,
    status: Annotated[list[str] | None, typer.Option("--status", "-s", help="Only these statuses.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records (same as -o json).")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    refresh: Annotated[bool, typer.Option("--refresh", "-r", help="Redraw the table every few seconds.")] = False,
    infra: Annotated[str | None, typer.Option("--infra", help="Only jobs on this infra: aws/us-east-1, k8s...")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Submitted in the last 30m, 48h, 7d, 2w.")] = None,
    after: Annotated[str | None, typer.Option("--after", help="Submitted after this date: YYYY-MM-DD.")] = None,
    before: Annotated[str | None, typer.Option("--before", help="Submitted before this date.")] = None,
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="Only the runs of this schedule (tsky jobs schedule).")
    ] = None,
) -> None:
    """Show managed jobs (yours, newest first) from one visibility query."""
    if output not in ("table", "json"):
        fail(f"--output {output!r} is not a format; use table or json.")
    as_json = as_json or output == "json"
    window = submitted_window(since, after, before)
    where = _parse_infra_filter(infra)
    wanted: set[str] = set()
    for item in status or []:
        for value in item.split(","):
            value = value.strip().upper()
            if value not in ManagedJobStatus.__members__:
                fail(f"--status {value!r} is not a status; use one of {', '.join(ManagedJobStatus.__members__)}.")
            wanted.add(value)
    s = settings()

    async def body() -> None:
        client = await client_for(s)
        while True:
            await show(client)
            if not refresh:
                return
            await asyncio.sleep(_REFRESH_SECONDS)
            console.clear()

    async def show(client: Client) -> None:
        from tsky.client import jobs as api  # the Temporal client: imported only by commands that talk to it

        user = None if all_users else current_user()
        filtered = window is not None or where is not None or schedule is not None
        if show_all or job_ids or skip_finished or filtered:
            rows = await api.list_jobs(client, user=user, skip_finished=skip_finished, schedule=schedule)
            if job_ids:
                rows = [r for r in rows if r.job_id in set(job_ids)]
            if wanted:
                rows = [r for r in rows if r.status.value in wanted]
            if window is not None:
                rows = [r for r in rows if r.submitted_at and window[0] <= r.submitted_at < window[1]]
            if where is not None:
                rows = [r for r in rows if _on_infra(where, r.infra)]
            truncated = not show_all and not job_ids and len(rows) > limit
            shown, in_progress = rows if show_all or job_ids else rows[:limit], rows
        else:  # the latest `limit` jobs: no need to list every job ever run
            page = await api.latest_jobs(client, user=user, limit=limit, statuses=wanted)
            shown, in_progress, truncated = page.rows, page.in_progress, page.more
        if as_json:
            console.out(json.dumps([api.as_dict(r) for r in shown], indent=2))
            return
        console.print("[bold cyan]Managed jobs[/]" + (" (showing in-progress jobs only)" if skip_finished else ""))
        counts = Counter(t.status.value for r in in_progress for t in r.tasks if not t.status.is_terminal())
        if counts:
            console.print("In progress tasks: " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items())))
        else:
            console.print("No in-progress managed jobs.")
        if shown:
            console.print(
                with_status_colors(_queue_table(shown, all_users, verbose, await _pool_workers(client, shown)))
            )
        if truncated:
            console.print(
                f"Only showing the latest {limit} managed jobs "
                "(use --limit to show more managed jobs or --all to show all managed jobs)"
            )

    run(body())


async def _pool_workers(client: Client, rows: list[api.JobRow]) -> dict[int, tuple[int, str]]:
    """Job id -> (worker id, worker cluster) for the shown pool jobs now on a worker (one query per pool)."""
    from tsky.client import pools as pool_api

    workers: dict[int, tuple[int, str]] = {}
    for pool in sorted({r.pool for r in rows if r.pool and not r.closed}):
        snapshot = await pool_api.get_pool(client, pool)
        for worker in snapshot.workers if snapshot else []:
            if worker.job_id is not None and worker.lease is not None:
                workers[worker.job_id] = (worker.worker_id, worker.cluster_name)
    return workers


def _parse_infra_filter(text: str | None) -> Infra | None:
    if text is None:
        return None
    from tsky.spec.resources import parse_infra

    try:
        return parse_infra(text)
    except FieldError as err:
        from rich.markup import escape

        fail(escape(f"--infra: {err.message}"))  # the hint shows `cloud[/region[/zone]]`


def _on_infra(where: Infra, shown: str) -> bool:
    """Whether a job's INFRA cell (`AWS (us-east-1, us-east-1a)`) lies in the --infra filter."""
    from tsky.spec.requests import CLOUD_DISPLAY

    cloud_label, _, rest = shown.partition(" (")
    cloud = next((k for k, v in CLOUD_DISPLAY.items() if v == cloud_label), cloud_label.lower())
    parts = [p.strip() for p in rest.rstrip(")").split(",")] if rest else []
    return where.contains(cloud, parts[0] if parts else None, parts[1] if len(parts) > 1 else None)


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%m-%d-%Y")


def submitted_window(since: str | None, after: str | None, before: str | None) -> tuple[datetime, datetime] | None:
    """SkyPilot's submission-time filter: `--since 30m|48h|7d|2w|<secs>` or `--after DATE`, and `--before
    DATE` (dates in local time). None when no filter is given."""
    if since is not None and after is not None:
        fail("--since and --after cannot be used together: give one start of the window.")
    if since is None and after is None and before is None:
        return None
    now = datetime.now(UTC)
    start = datetime.min.replace(tzinfo=UTC)
    if since is not None:
        text = since.strip().lower()
        number, unit = (text[:-1], text[-1]) if text[-1:] in _SINCE_UNITS else (text, "s")
        if not number.isdigit():
            fail(f"--since {since!r} is not a duration; use e.g. 30m, 48h, 7d, 2w or a number of seconds.")
        start = now - timedelta(seconds=int(number) * _SINCE_UNITS[unit])
    if after is not None:
        start = _local_date("--after", after)
    end = _local_date("--before", before) if before is not None else datetime.max.replace(tzinfo=UTC)
    return start, end


def _local_date(flag: str, text: str) -> datetime:
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).astimezone(UTC)
        except ValueError:
            continue
    fail(f"{flag} {text!r} is not a date; use YYYY-MM-DD, 'YYYY-MM-DD HH:MM[:SS]' or MM-DD-YYYY.")
